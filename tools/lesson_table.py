#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write docs/lesson.md's table "what it says on each kernel" from real runs of the crash scenario.

The crash scenario's hand phase keeps playbooks/check.yml's verdict on each VM's crash by hand in
.lab/lesson-runs/<kernel>.check.json; this tool turns those into the worksheet's table, so that the
worksheet shows what real kernels printed, never what someone typed. The scenario's test computes the
row of its own kernel with row() and fails when the worksheet's row differs.

  python3 tools/lesson_table.py [--runs .lab/lesson-runs] [--doc docs/lesson.md]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- kernels: begin -->"
END = "<!-- kernels: end -->"
HEADER = [
    "| kernel | your shell | first fault (the read) | then, while the task exits | hung-task report |",
    "| --- | --- | --- | --- | --- |",
]
DEBIAN = {(5, 10): "Debian 11", (6, 1): "Debian 12", (6, 12): "Debian 13"}


def kernel_series(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release or "")
    if not match:
        raise ValueError(f"cannot read a kernel series from {release!r}")
    return int(match.group(1)), int(match.group(2))


def fault_cell(fault: dict[str, Any] | None) -> str:
    """ "`chardev_fops+0x10`, `.read`, in `vfs_read`" from one explained fault."""
    if not fault:
        return "-"
    where = (
        f"`{fault['symbol']}+0x{fault['offset']:x}`" if fault.get("symbol") else f"`{fault.get('address')}`"
    )
    parts = [where]
    if fault.get("member"):
        parts.append(f"`.{fault['member']}`")
    if fault.get("rip_function"):
        parts.append(f"in `{fault['rip_function']}`")
    return ", ".join(parts)


def row(verdict: dict[str, Any]) -> str:
    """The table row of one kernel, from check.yml's verdict on the crash by hand."""
    series = kernel_series(verdict["kernel_release"])
    victim = verdict.get("victim") or {}
    faults = verdict.get("faults") or []
    primary = next((f for f in faults if f.get("role") == "primary"), faults[0] if faults else None)
    later = next((f for f in faults if f is not primary), None)
    hung = verdict.get("hung_task") or {}
    if (hung.get("reported") or {}).get("victim"):
        report = f"yes: blocked for more than {hung.get('timeout_secs')} seconds"
    elif "victim" in (hung.get("not_applicable") or {}):
        report = f"none: the task is in {victim.get('state')}, not D"
    elif hung.get("silenced"):
        report = "none: silenced by the oops (taint D)"
    else:
        report = "none"
    name = f"{series[0]}.{series[1]} ({DEBIAN.get(series, 'Debian')})"
    return (
        f"| {name} | `{victim.get('state', '?')}` | {fault_cell(primary)} | {fault_cell(later)} | {report} |"
    )


def table(verdicts: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(verdicts, key=lambda v: kernel_series(v["kernel_release"]))
    return [*HEADER, *(row(v) for v in ordered)]


def rows_in(doc: str) -> dict[tuple[int, int], str]:
    """The rows of the worksheet's table, by kernel series."""
    start, end = doc.index(BEGIN), doc.index(END)
    found = {}
    for line in doc[start:end].splitlines():
        match = re.match(r"\| (\d+)\.(\d+) ", line)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = line
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default=".lab/lesson-runs", type=Path)
    parser.add_argument("--doc", default="docs/lesson.md", type=Path)
    args = parser.parse_args(argv)
    verdicts = [json.loads(path.read_text()) for path in sorted(args.runs.glob("*.check.json"))]
    if not verdicts:
        print(f"no verdicts in {args.runs}: run the crash scenario first (make molecule SCENARIOS=crash)")
        return 1
    doc = args.doc.read_text(encoding="utf-8")
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    args.doc.write_text(doc[:start] + "\n" + "\n".join(table(verdicts)) + "\n" + doc[end:], encoding="utf-8")
    print(f"{args.doc}: {len(verdicts)} kernel(s) from {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
