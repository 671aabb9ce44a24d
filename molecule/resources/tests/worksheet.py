# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of docs/lesson.md, as the crash scenario runs and checks them on real VMs.

The worksheet's runnable parts sit between `<!-- worksheet: NAME -->` and `<!-- worksheet: end -->`.
Inside a part, each fenced block is one terminal:
  ```console   the student's first terminal (root): lines "# COMMAND", each followed by its output
  ```pycon     the second terminal, a Python shell: lines ">>> STATEMENT", each followed by its output
An output line may hold placeholders such as <n> or <pid>: they match any text (the value differs from
run to run). Blocks outside a part are shown to the student and not run.

  python3 worksheet.py docs/lesson.md PART   prints the part's steps as JSON (side_effect.yml runs them)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_PART_RE = re.compile(r"<!-- worksheet: (\S+) -->")
_FENCE_RE = re.compile(r"^```(\w*)\s*$")
_PLACEHOLDER_RE = re.compile(r"<[a-z][a-z0-9 _-]*>")
TERMINALS = {"console": ("shell", "# "), "pycon": ("python", ">>> ")}


def parse(text: str) -> dict[str, list[dict]]:
    """{part: [{"terminal": "shell"|"python", "input": str, "output": [str]}]}, in worksheet order."""
    parts: dict[str, list[dict]] = {}
    part = None
    terminal = None
    for line in text.splitlines():
        marker = _PART_RE.search(line)
        if marker and terminal is None:
            part = None if marker.group(1) == "end" else marker.group(1)
            if part is not None:
                parts.setdefault(part, [])
            continue
        fence = _FENCE_RE.match(line)
        if fence:
            if terminal is None and part is not None and fence.group(1) in TERMINALS:
                terminal = TERMINALS[fence.group(1)]
            elif terminal is not None and not fence.group(1):
                terminal = None
            continue
        if terminal is None or part is None:
            continue
        kind, prompt = terminal
        if line.startswith(prompt):
            parts[part].append({"terminal": kind, "input": line[len(prompt) :], "output": []})
        elif parts[part]:
            parts[part][-1]["output"].append(line)
    return parts


def line_pattern(expected: str) -> re.Pattern[str]:
    """An expected output line as a regular expression: placeholders match any text."""
    pieces = _PLACEHOLDER_RE.split(expected)
    return re.compile(".+?".join(re.escape(piece) for piece in pieces) + r"\s*")


def mismatches(expected: list[str], got: str) -> list[str]:
    """What differs between a step's expected output lines and what the VM printed; empty when equal."""
    lines = [line for line in got.splitlines() if line.strip()]
    wanted = [line for line in expected if line.strip()]
    if len(lines) != len(wanted):
        return [f"{len(lines)} output lines, the worksheet shows {len(wanted)}: {lines!r}"]
    return [
        f"worksheet {want!r}, got {line!r}"
        for want, line in zip(wanted, lines, strict=True)
        if not line_pattern(want).fullmatch(line)
    ]


def main(argv: list[str]) -> int:
    parts = parse(Path(argv[1]).read_text(encoding="utf-8"))
    if argv[2] not in parts:
        print(f"{argv[1]} has no part {argv[2]!r} (it has {', '.join(parts) or 'none'})", file=sys.stderr)
        return 1
    print(json.dumps(parts[argv[2]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
