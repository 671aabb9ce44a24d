#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measure a classroom on this machine: one student against four, each step of the class timed.

For each class size (default 1 then 4), a roster of that many students is generated (fresh ed25519
keys in a temporary directory; every student on a local VM), and the class is run as `make lab
ROSTER=` and `make reset ROSTER=` run it, through the project's own playbooks and inventory plugin,
step by step so that each step has its own time:

  boot      playbooks/fleet.yml            the image cached (make lab built it), VMs booted to SSH
  lab       playbooks/chardev.yml              headers from the mirror, build, load, node, demo
  access    playbooks/access.yml           accounts, keys, sshd, access.csv and the notes
  status_ready    playbooks/status.yml     status.json, the table and index.html, before the crash
  crash     playbooks/crash.yml            the crash lesson on every VM, with its evidence
  status_crashed  playbooks/status.yml     the state after the crash
  reset     playbooks/reset.yml            a fresh disk for every crashed VM, verified clean
  status_reset    playbooks/status.yml     the state after the reset

Each class runs once (a class of four is 20+ minutes under TCG on 2 cores): the figures are single
runs, and the ratios four/one come from the same invocation. The fleet lives in a temporary state
directory (CHARDEV_LAB_STATE_DIR) with SSH ports from 2281, and is removed at the end, also on failure
or Ctrl-C. Progress goes to stderr; Markdown to --output, the raw numbers as JSON next to it.

Usage (from the repository root, with the virtualenv's bin on PATH):
  tools/bench_fleet.py [--sizes 1 4] [--output docs/benchmarks-fleet.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIRST_PORT = 2281
STEPS = (
    ("boot", "playbooks/fleet.yml"),
    ("lab", "playbooks/chardev.yml"),
    ("access", "playbooks/access.yml"),
    ("status_ready", "playbooks/status.yml"),
    ("crash", "playbooks/crash.yml"),
    ("status_crashed", "playbooks/status.yml"),
    ("reset", "playbooks/reset.yml"),
    ("status_reset", "playbooks/status.yml"),
)
T0 = time.monotonic()


def log(msg: str) -> None:
    elapsed = int(time.monotonic() - T0)
    print(f"[bench-fleet {elapsed // 60:3d}:{elapsed % 60:02d}] {msg}", file=sys.stderr, flush=True)


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def write_roster(workdir: Path, size: int) -> Path:
    """A roster of `size` students, each with a fresh key, all on local VMs."""
    rows = ["student,ssh_public_key"]
    for number in range(1, size + 1):
        student = f"student{number:02d}"
        key = workdir / f"{student}_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", student, "-f", str(key)], check=True
        )
        rows.append(f"{student},{key.with_suffix('.pub').read_text().strip()}")
    roster = workdir / "roster.csv"
    roster.write_text("\n".join(rows) + "\n")
    return roster


class Class:
    def __init__(self, size: int, workdir: Path):
        self.size = size
        self.dir = workdir / f"class-{size}"
        self.dir.mkdir()
        self.env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
            "CHARDEV_LAB_ROSTER": str(write_roster(self.dir, size)),
            "CHARDEV_LAB_STATE_DIR": str(self.dir / "fleet"),
            "CHARDEV_LAB_FIRST_PORT": str(FIRST_PORT),
        }

    def playbook(self, playbook: str, *args: str, log_name: str) -> float:
        command = [tool("ansible-playbook"), "-i", str(REPO / "inventory/roster.yml"), playbook, *args]
        started = time.monotonic()
        with (self.dir / f"{log_name}.log").open("w") as out:
            done = subprocess.run(
                command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        seconds = round(time.monotonic() - started, 1)
        if done.returncode != 0:
            raise RuntimeError(f"{playbook} failed (rc={done.returncode}): see {self.dir / log_name}.log")
        return seconds

    def run(self) -> dict[str, Any]:
        times: dict[str, float] = {}
        states: dict[str, dict[str, str]] = {}
        for step, playbook in STEPS:
            log(f"class of {self.size}: {step} ({playbook})")
            times[step] = self.playbook(playbook, log_name=step)
            log(f"class of {self.size}: {step} took {times[step]} s")
            if playbook == "playbooks/status.yml":
                status = json.loads((self.dir / "fleet/status/status.json").read_text())
                states[step] = {row["host"]: row["state"] for row in status}
        return {"size": self.size, "seconds": times, "total": round(sum(times.values()), 1), "states": states}

    def remove(self) -> None:
        if not (self.dir / "fleet").exists():
            return
        log(f"class of {self.size}: removing its VMs")
        try:
            self.playbook("playbooks/fleet.yml", "-e", "lab_vm_state=absent", log_name="down")
        except RuntimeError as exc:
            log(f"could not remove the VMs cleanly: {exc}")


def machine() -> dict[str, Any]:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }


def render(result: dict[str, Any]) -> str:
    classes = result["classes"]
    sizes = [c["size"] for c in classes]
    lines = [
        "# Benchmarks: a classroom on one machine",
        "",
        "What a class costs on the local fleet, one step at a time, for a class of one and a class of four",
        "(every student on a local QEMU VM under TCG), through the project's own playbooks and the",
        "`chardev_roster` inventory plugin, as `make lab ROSTER=` and `make reset ROSTER=` run them.",
        "`tools/bench_fleet.py` says how each figure is taken.",
        "",
        f"- Date: {result['date']}",
        f"- Command: `{result['command']}` (`make bench-fleet`)",
        f"- Code: commit {result['commit']}",
        f"- Machine: {result['machine']['cores']} cores, {result['machine']['memory_gib']} GiB, kernel "
        f"{result['machine']['kernel']}, load average at start "
        f"{result['machine']['load_average_at_start'][0]:.2f}",
        "",
        "> **One run per class size** on a shared, noisy machine: each figure is a single measurement, the",
        "> ratios compare classes of the same invocation. Headers come from Debian's mirror through each",
        "> VM's relay, so the network's speed is part of the `lab` step.",
        "",
        "| step | what | " + " | ".join(f"{n} VM{'s' if n > 1 else ''}" for n in sizes) + " | ratio |",
        "| --- | --- | " + " | ".join("---:" for _size in sizes) + " | ---: |",
    ]
    for step, playbook in STEPS:
        values = [c["seconds"][step] for c in classes]
        ratio = f"{values[-1] / values[0]:.2f}" if len(values) > 1 and values[0] else "-"
        lines.append(
            f"| {step} | `{playbook}` | " + " | ".join(f"{v:.1f} s" for v in values) + f" | {ratio} |"
        )
    totals = [c["total"] for c in classes]
    ratio = f"{totals[-1] / totals[0]:.2f}" if len(totals) > 1 and totals[0] else "-"
    lines.append("| **total** | | " + " | ".join(f"**{t:.1f} s**" for t in totals) + f" | **{ratio}** |")
    lines += [
        "",
        "Every VM's state in status.json before the crash, after it and after the reset (a reset VM has a",
        "fresh disk: `not-ready` until the lab runs again):",
        "",
    ]
    for c in classes:
        for step, states in c["states"].items():
            shown = ", ".join(f"{host} {state}" for host, state in states.items())
            lines.append(f"- class of {c['size']}, {step}: {shown}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks-fleet.md")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chardev-bench-fleet-"))
    classes: list[Class] = []

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "tools/bench_fleet.py " + " ".join(argv),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "machine": machine(),
        "classes": [],
    }
    try:
        for size in args.sizes:
            klass = Class(size, workdir)
            classes.append(klass)
            try:
                result["classes"].append(klass.run())
            finally:
                klass.remove()
    finally:
        for klass in classes:
            klass.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.write_text(render(result))
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
