#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measure the lab itself on one local VM: the Ansible lab against a plain shell script doing the same work,
a second run with nothing to do, and a crashed VM made ready again (rewind against fresh disk + lab).

Everything runs through the project's own playbooks (its ansible.cfg, the json stdout callback for
per-task durations) on one bookworm VM of the default image (headers not baked in: they come from the
mirror through apt inside the VM). Each run (--runs, default 3) repeats every arm; figures are medians:

  A. shell baseline: a fresh VM (playbooks/fleet.yml; lab_vm_state=reset for later runs), then ONE ssh
     connection (the fleet's key and known_hosts) running a bash script fed on stdin, each phase timed
     in the guest (date +%s.%N): headers (apt-get update; apt-get install linux-headers-$(uname -r) and
     the kernel_headers role's Debian toolchain), build (the sources written, make clean + modules with
     VARIANT=safe as chardev_build runs it, the .ko installed, depmod), load+node (insmod; mknod with
     the major from /proc/devices), reads (cat the device three times);
  B. the Ansible lab on an identical fresh VM: playbooks/chardev.yml alone (the VM already running), its
     wall time and per-phase sums of task durations (kernel_headers -> headers; chardev build ->
     build; chardev load/node -> load+node; chardev_demo -> demo; facts, pre_tasks, guard -> overhead;
     the post_task keeping the rewind point -> rewind point; the rest is ansible-playbook's own time);
  C. playbooks/chardev.yml again with nothing to do: wall time and changed count (0 expected; the changed
     tasks are listed otherwise);
  D. crashed -> ready to crash again: playbooks/crash.yml, then (i) playbooks/reset.yml (rewind to the
     point lab.yml kept: the whole run and lab_vm_rewind's own `seconds`), crash again, then (ii)
     playbooks/reset.yml -e reset_mode=fresh followed by playbooks/chardev.yml (fresh disk + re-provision);
  E. baked image (optional: leave it out of --arms; a failure there is noted, not fatal): a fresh VM of
     the image with lab_vm_image_packages [linux-headers-amd64] (built first if not cached: the build
     then counts in that fresh VM's figure, not in the lab's), then playbooks/chardev.yml with
     kernel_headers_update_cache false.

The VM lives in a temporary directory /tmp/chardev-bench-lab-* (its CHARDEV_LAB_STATE_DIR, with a
one-host inventory in groups lab/lab_vms next to the project's group_vars) with an SSH port in
2280-2289; all of it is removed at the end, also on failure, Ctrl-C or SIGTERM. The load average and
other QEMU processes are recorded before each measure. Progress goes to stderr; Markdown to --output,
the raw numbers as JSON next to it.

Usage (from the repository root, with the virtualenv's bin on PATH):
  tools/bench_lab.py [--runs N] [--arms A B C D E] [--output docs/benchmarks-lab.md]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# tools/bench.py (next to this script, so on sys.path when it runs): the runner (json callback,
# heartbeat, clean-up), its readers, machine info, formats.
import bench
from bench import (
    Bench,
    BenchError,
    Run,
    fmt_s,
    git,
    log,
    machine_info,
    now_iso,
    para,
    parse_time,
    port_free,
    scrub_obj,
    stats,
    tasks_named,
)

REPO = bench.REPO
PLAYBOOKS = REPO / "playbooks"
HOST = "bench-lab"
PORTS = range(2280, 2290)
TMP_PREFIX = "chardev-bench-lab-"
SOURCES = REPO / "files" / "chardev"
# What the kernel_headers role installs on Debian besides linux-headers-<release>: its vars file's
# toolchain, read from the file so that the baseline follows the role.
HEADERS_VARS = REPO / "roles" / "kernel_headers" / "vars" / "Debian.yml"
BAKED_PACKAGES = ["linux-headers-amd64"]
ARMS = ("A", "B", "C", "D", "E")
# The code the figures depend on (recorded at every measure: the working tree may be shared).
MEASURED_PATHS = ("roles", "playbooks", "files/chardev", "inventory/group_vars", "ansible.cfg")
PHASES = ("headers", "build", "cache_build", "load_node", "demo", "overhead", "rewind_point", "ansible_other")
PHASE_LABELS = {
    "headers": "headers",
    "build": "build",
    "cache_build": "crash variant built into the build cache, for the rewind point (the script does not)",
    "load_node": "load+node",
    "demo": "reads / demo",
    "overhead": "overhead (facts, pre_tasks, guard)",
    "rewind_point": "rewind point (post_task)",
    "ansible_other": "ansible-playbook itself (start, includes' gaps, between tasks)",
}
SHELL_PHASES = ("headers", "build", "load_node", "reads")
TARGETS = {
    "rewind_seconds": 15.0,
    "baked_lab_seconds": 60.0,
    "ansible_vs_shell": 1.0,
    "second_vs_first": 0.10,
}


def debian_toolchain() -> list[str]:
    """The packages vars/Debian.yml lists under __kernel_headers_toolchain (a plain YAML list)."""
    packages, inside = [], False
    for line in HEADERS_VARS.read_text(encoding="utf-8").splitlines():
        if line.startswith("__kernel_headers_toolchain:"):
            inside = True
        elif inside and line.lstrip().startswith("- "):
            packages.append(line.split("- ", 1)[1].strip().strip("\"'"))
        elif inside and line.strip():
            break
    if not packages:
        raise BenchError(f"no __kernel_headers_toolchain list in {HEADERS_VARS}")
    return packages


def shell_script() -> str:
    """The lab as a student's shell would do it, each phase stamped with the guest's clock."""
    files = {
        name: base64.b64encode((SOURCES / name).read_bytes()).decode() for name in ("chardev.c", "Makefile")
    }
    toolchain = " ".join(shlex.quote(p) for p in debian_toolchain())
    return f"""\
set -eu -o pipefail
export DEBIAN_FRONTEND=noninteractive
stamp() {{ echo "BENCH-STAMP $1 $(date +%s.%N)"; }}
release=$(uname -r)
src=/usr/local/src/chardev
stamp start
apt-get update -q
apt-get install -y -q "linux-headers-$release" {toolchain}
stamp headers
mkdir -p "$src"
base64 -d > "$src/chardev.c" <<'EOF'
{files["chardev.c"]}
EOF
base64 -d > "$src/Makefile" <<'EOF'
{files["Makefile"]}
EOF
make -C "/lib/modules/$release/build" M="$src" VARIANT=safe clean
make -C "/lib/modules/$release/build" M="$src" VARIANT=safe modules
install -D -m 0644 "$src/chardev.ko" "/lib/modules/$release/extra/chardev.ko"
depmod -a "$release"
stamp build
insmod "/lib/modules/$release/extra/chardev.ko"
major=$(awk '$2 == "chardev" {{ print $1 }}' /proc/devices)
rm -f /dev/chardev
mknod -m 0644 /dev/chardev c "$major" 0
stamp load_node
for _ in 1 2 3; do cat /dev/chardev; done
stamp reads
"""


def lab_code_version() -> dict[str, Any]:
    # Not through git(), which strips the output: porcelain lines start with a status column that may
    # be a space (" M path").
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", *MEASURED_PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return {
        "commit": git("log", "-1", "--format=%h", "--", *MEASURED_PATHS) or "unknown",
        "head": git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted": [d[3:] for d in dirty],
    }


def phase_of(name: str) -> str:
    """The lab phase a lab.yml task belongs to, from its name (roles prefix theirs with 'role : ')."""
    role, _sep, short = name.rpartition(" : ")
    if name.startswith("Keep the lab-ready VM as its rewind point") or role == "lab_vm":
        return "rewind_point"
    if role == "kernel_headers":
        return "headers"
    if role == "chardev_demo":
        return "demo"
    if role == "chardev":
        if short.startswith(("Build and install the module", "Build the module")):
            return "build"
        if short.startswith(
            (
                "Load the module",
                "Unload another build",
                "Create the device node",
                "Export the loaded variant",
            )
        ):
            return "load_node"
    return "overhead"


def task_list(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every task of a run: name, phase, seconds, and whether it changed, was skipped or failed."""
    out = []
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            duration = task["task"].get("duration", {})
            seconds = 0.0
            if duration.get("start") and duration.get("end"):
                seconds = parse_time(duration["end"]) - parse_time(duration["start"])
            results = list(task.get("hosts", {}).values())
            # chardev_build says how long each variant's kbuild took, and which were for the cache only.
            cache_seconds = sum(
                float(r.get("compiled", {}).get(v, 0.0))
                for r in results
                for v in r.get("cached_variants", [])
            )
            out.append(
                {
                    "name": task["task"]["name"],
                    "phase": phase_of(task["task"]["name"]),
                    "seconds": round(seconds, 3),
                    "cache_seconds": round(cache_seconds, 3),
                    "changed": any(r.get("changed") for r in results),
                    "skipped": bool(results) and all(r.get("skipped") for r in results),
                }
            )
    return out


def lab_record(run: Run) -> dict[str, Any]:
    tasks = task_list(run.doc)
    phases = dict.fromkeys(PHASES, 0.0)
    for task in tasks:
        cache = min(task.get("cache_seconds", 0.0), task["seconds"])
        phases[task["phase"]] += task["seconds"] - cache
        phases["cache_build"] += cache
    phases["ansible_other"] = max(0.0, run.wall - sum(t["seconds"] for t in tasks))
    return {
        "wall": round(run.wall, 3),
        "changed": run.changed,
        "changed_tasks": [t["name"] for t in tasks if t["changed"]],
        "phases": {k: round(v, 3) for k, v in phases.items()},
        "tasks": tasks,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


class LabBench(Bench):
    """tools/bench.py's runner (ansible-playbook with the json callback, heartbeat, clean-up) on a VM
    in the groups lab and lab_vms, with the project's group_vars and its own CHARDEV_LAB_STATE_DIR."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.ssh: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        self.ws = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp"))
        self.state_dir = self.ws / "fleet"
        (self.ws / "logs").mkdir()
        ports = [self.args.port] if self.args.port else list(PORTS)
        self.port = next((p for p in ports if port_free(p)), 0)
        if not self.port:
            raise BenchError(f"no free port among {ports[0]}-{ports[-1]} on 127.0.0.1")
        inventory = {"lab": {"children": {"lab_vms": {"hosts": {HOST: {"ansible_port": self.port}}}}}}
        self.inventory = self.ws / "inventory.yml"
        self.inventory.write_text(json.dumps(inventory, indent=2) + "\n", encoding="utf-8")
        # The project's group vars apply as they do to inventory/local.yml: the fleet's directory from
        # CHARDEV_LAB_STATE_DIR, the connection settings, chardev_crash_allowed.
        (self.ws / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
        log(f"workspace {self.ws}, VM {HOST} (groups lab, lab_vms) with SSH on 127.0.0.1:{self.port}")

    def base_vars(self, cache_dir: Path, **extra: Any) -> dict[str, Any]:
        # The role's own image cache (the default image is normally there already); a boot that takes
        # longer on a busy machine is measured rather than failed.
        return {"lab_vm_boot_timeout": self.args.boot_timeout, **extra}

    def run_playbook(self, label: str, playbook: Path, extra_vars: dict[str, Any], **kwargs: Any) -> Run:
        assert self.state_dir is not None
        env = {"CHARDEV_LAB_STATE_DIR": str(self.state_dir), **(kwargs.pop("env_extra", None) or {})}
        return super().run_playbook(label, playbook, extra_vars, env_extra=env, **kwargs)

    def sample_context(self, measure: str) -> None:
        super().sample_context(measure)
        self.context[-1]["code"] = lab_code_version()

    def playbook(self, label: str, name: str, timeout: float = 1800, **extra: Any) -> Run:
        run = self.run_playbook(label, PLAYBOOKS / name, self.base_vars(REPO, **extra), timeout=timeout)
        log(f"{label}: {run.wall:.1f} s, {run.changed} changed task(s)")
        return run

    def boot(self, label: str, **extra: Any) -> float:
        state = "reset" if self.vm_started else "started"
        run, instance = self.fleet(label, timeout=1800, lab_vm_state=state, **extra)
        log(f"{label}: playbooks/fleet.yml ({state}) {run.wall:.1f} s, boot {instance.get('boot_seconds')} s")
        probe = [bench.task_seconds(task) for task, _result in tasks_named(run.doc, "Choose KVM or TCG")]
        if probe and probe[0] > 5:
            self.notes.append(
                f"{label}: the KVM probe ran again ({probe[0]:.0f} s of the {run.wall:.0f} s fleet run): "
                "accel.json in the image cache keeps one key (the kernel's path), so another image's VM "
                "(another fleet or this bench's arm E) makes the next VM probe again"
            )
        return round(run.wall, 3)

    # -- A. the shell baseline ----------------------------------------------------------------------

    def shell_baseline(self, label: str) -> dict[str, Any]:
        assert self.ws is not None and self.state_dir is not None
        cmd = [
            "ssh",
            "-i",
            str(self.state_dir / "id_ed25519"),
            "-o",
            f"UserKnownHostsFile={self.state_dir / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=60",
            "-p",
            str(self.port),
            "root@127.0.0.1",
            "bash -s",
        ]
        script = shell_script()
        self.run_count += 1
        out_path = self.ws / "logs" / f"{self.run_count:02d}-shell.txt"
        with open(out_path, "wb") as out:
            started = time.monotonic()
            self.ssh = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            assert self.ssh.stdin is not None
            self.ssh.stdin.write(script.encode())
            self.ssh.stdin.close()
            next_beat = started + bench.HEARTBEAT_SECONDS
            while True:
                try:
                    rc = self.ssh.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    now = time.monotonic()
                    if now - started > 1800:
                        raise BenchError(f"{label}: the script still runs after 1800 s") from None
                    if now >= next_beat:
                        next_beat = now + bench.HEARTBEAT_SECONDS
                        log(f"  ... {label}: {now - started:.0f} s ({self.last_stamp(out_path)})")
            wall = time.monotonic() - started
            self.ssh = None
        text = out_path.read_text(encoding="utf-8", errors="replace")
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            raise BenchError(f"{label}: the script failed (ssh rc={rc}):\n{tail}")
        stamps = {
            parts[1]: float(parts[2])
            for parts in (line.split() for line in text.splitlines())
            if len(parts) == 3 and parts[0] == "BENCH-STAMP"
        }
        reads = [line for line in text.splitlines() if line.startswith("I already told you")]
        if len(reads) != 3:
            raise BenchError(f"{label}: expected 3 reads of /dev/chardev, got {reads}")
        phases, previous = {}, stamps["start"]
        for phase in SHELL_PHASES:
            phases[phase] = round(stamps[phase] - previous, 3)
            previous = stamps[phase]
        record = {
            "phases": phases,
            "guest_total": round(stamps["reads"] - stamps["start"], 3),
            "ssh_wall": round(wall, 3),
            "reads": reads,
        }
        log(
            f"{label}: ssh {wall:.1f} s; "
            + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
            + f" (guest clock); {reads[-1]}"
        )
        return record

    @staticmethod
    def last_stamp(path: Path) -> str:
        stamps = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("BENCH-STAMP")]
        return f"{stamps[-1].split()[1]} done" if stamps else "starting"

    def kill_child(self) -> None:
        super().kill_child()
        ssh, self.ssh = self.ssh, None
        if ssh is not None and ssh.poll() is None:
            log(f"stopping ssh (pid {ssh.pid})")
            os.killpg(ssh.pid, signal.SIGTERM)
            try:
                ssh.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(ssh.pid, signal.SIGKILL)

    # -- the arms, one run ----------------------------------------------------------------------------

    def lab(self, label: str, **extra: Any) -> dict[str, Any]:
        run = self.playbook(label, "chardev.yml", **extra)
        record = lab_record(run)
        # The rewind point is kept by its own playbook (the only place that takes one), right after.
        point = self.playbook(f"{label}: rewind point", "rewind_point.yml", **extra)
        record["rewind_point"] = self.rewind_task(point.doc, "present")[1]
        shown = ", ".join(f"{k} {v:.1f} s" for k, v in record["phases"].items() if v)
        log(f"{label} phases: {shown}")
        return record

    def one_run(self, i: int, out: dict[str, Any]) -> None:
        """Every arm once, its figures filled into out as they come (a failed run keeps them)."""
        arms = set(self.args.arms)
        tag = f"run {i}"
        if "A" in arms:
            out["boot_a"] = self.boot(f"{tag}: fresh VM for A")
            self.sample_context(f"{tag}: A shell baseline")
            out["shell"] = self.shell_baseline(f"{tag}: A shell baseline")
        if arms & {"B", "C", "D"}:
            out["boot_b"] = self.boot(f"{tag}: fresh VM for B")
            self.sample_context(f"{tag}: B lab.yml")
            out["lab_first"] = self.lab(f"{tag}: B lab.yml")
        if "C" in arms:
            self.sample_context(f"{tag}: C lab.yml again")
            second = self.lab(f"{tag}: C lab.yml again")
            out["lab_second"] = second
            if second["changed"]:
                self.notes.append(
                    f"{tag}: the second lab.yml run changed {second['changed']} task(s): "
                    + "; ".join(second["changed_tasks"])
                )
        if "D" in arms:
            out["crash_1"] = round(self.playbook(f"{tag}: D crash.yml", "crash.yml").wall, 3)
            self.sample_context(f"{tag}: D(i) reset.yml (rewind)")
            reset = self.playbook(f"{tag}: D(i) reset.yml", "reset.yml")
            how = self.reset_how(reset)
            task, res = self.rewind_task(reset.doc, "restored")
            out["rewind"] = {
                "wall": round(reset.wall, 3),
                "how": how,
                "module_seconds": res.get("seconds") if res else None,
                "task_seconds": task,
                "vm_state_size": res.get("vm_state_size") if res else None,
                "tasks": [{k: t[k] for k in ("name", "seconds", "changed")} for t in task_list(reset.doc)],
            }
            log(f"{tag}: D(i) {how}; lab_vm_rewind seconds {out['rewind']['module_seconds']}")
            if how != "rewound":
                self.notes.append(f"{tag}: reset.yml did not rewind the VM ({how}): D(i) is not a rewind")
            out["crash_2"] = round(self.playbook(f"{tag}: D crash.yml again", "crash.yml").wall, 3)
            self.sample_context(f"{tag}: D(ii) reset.yml fresh + lab.yml")
            fresh = self.playbook(f"{tag}: D(ii) reset.yml fresh", "reset.yml", reset_mode="fresh")
            how_fresh = self.reset_how(fresh)
            lab = self.lab(f"{tag}: D(ii) lab.yml after the fresh disk")
            out["fresh"] = {
                "reset_wall": round(fresh.wall, 3),
                "how": how_fresh,
                "lab_wall": lab["wall"],
                "total": round(fresh.wall + lab["wall"], 3),
                "lab": lab,
            }
            if how_fresh != "fresh":
                self.notes.append(f"{tag}: reset.yml -e reset_mode=fresh reported {how_fresh}")
        if "E" in arms:
            # Optional: a failure here is reported, and the other arms' figures are still written.
            try:
                self.baked(tag, out)
            except BenchError as exc:
                log(f"{tag}: E failed: {exc}")
                self.notes.append(f"{tag}: arm E (baked image) failed: {exc}")

    def baked(self, tag: str, out: dict[str, Any]) -> None:
        baked = {"lab_vm_image_packages": BAKED_PACKAGES}
        boot = self.boot(f"{tag}: fresh VM of the baked image for E", **baked)
        self.sample_context(f"{tag}: E lab.yml, baked image")
        lab = self.lab(f"{tag}: E lab.yml, baked image", kernel_headers_update_cache=False, **baked)
        out["baked"] = {"boot_wall": boot, "lab": lab, "total": round(boot + lab["wall"], 3)}

    @staticmethod
    def rewind_task(doc: dict[str, Any], state: str) -> tuple[float | None, dict[str, Any] | None]:
        """The lab_vm_rewind task of a run: its duration and its result (None when it did not run)."""
        for task, res in tasks_named(doc, f"Rewind point of the VM, {state}"):
            if not res.get("skipped"):
                duration = task["duration"]
                seconds = parse_time(duration["end"]) - parse_time(duration["start"])
                kept = {
                    k: res.get(k) for k in ("changed", "seconds", "exists", "vm_state_size", "run_status")
                }
                return round(seconds, 3), kept
        return None, None

    @staticmethod
    def reset_how(run: Run) -> str:
        """rewound, fresh, or left alone, as reset.yml decided (its set_fact tasks)."""
        for prefix, how in (("Note that the VM was rewound", "rewound"), ("Note a fresh disk", "fresh")):
            if any(not res.get("skipped") for _task, res in tasks_named(run.doc, prefix)):
                return how
        return "left alone"

    def run_all(self) -> None:
        self.results["started"] = now_iso()
        self.results["machine"] = machine_info()
        # The Ansible strategy every playbook ran with (make ... MITOGEN=1 sets Mitogen's).
        self.results["strategy"] = os.environ.get("ANSIBLE_STRATEGY") or "linear"
        self.results["code"] = lab_code_version()
        a = self.args
        self.results["options"] = {
            "runs": a.runs,
            "arms": sorted(a.arms),
            "boot_timeout": a.boot_timeout,
            "ssh_port": self.port,
            "baked_packages": BAKED_PACKAGES,
        }
        runs: list[dict[str, Any]] = []
        self.results["runs"] = runs
        for i in range(1, a.runs + 1):
            runs.append({"run": i})
            self.one_run(i, runs[-1])
        self.sample_context("end")
        self.results["finished"] = now_iso()
        self.results["summary"] = summarize(runs)
        codes = {bench.code_label(c["code"]) for c in self.context}
        if len(codes) > 1:
            self.notes.append(
                "the measured code changed during the run (shared working tree): "
                + "; ".join(f"{c['measure']}: {bench.code_label(c['code'])}" for c in self.context)
            )


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(*path: str) -> list[float]:
        values = []
        for r in runs:
            x: Any = r
            for key in path:
                x = x.get(key) if isinstance(x, dict) else None
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                values.append(float(x))
        return values

    s: dict[str, Any] = {
        "shell": {p: stats(col("shell", "phases", p)) for p in SHELL_PHASES},
        "shell_guest_total": stats(col("shell", "guest_total")),
        "shell_ssh_wall": stats(col("shell", "ssh_wall")),
        "boot": stats(col("boot_a") + col("boot_b")),
    }
    for key in ("lab_first", "lab_second"):
        s[key] = {p: stats(col(key, "phases", p)) for p in PHASES}
        s[key]["wall"] = stats(col(key, "wall"))
        s[key]["changed"] = stats(col(key, "changed"))
    s["rewind_point_save"] = stats(col("lab_first", "rewind_point", "seconds"))
    s["crash"] = stats(col("crash_1") + col("crash_2"))
    s["rewind_wall"] = stats(col("rewind", "wall"))
    s["rewind_module"] = stats(col("rewind", "module_seconds"))
    s["fresh_reset_wall"] = stats(col("fresh", "reset_wall"))
    s["fresh_lab_wall"] = stats(col("fresh", "lab_wall"))
    s["fresh_total"] = stats(col("fresh", "total"))
    s["baked_boot"] = stats(col("baked", "boot_wall"))
    s["baked_lab"] = {p: stats(col("baked", "lab", "phases", p)) for p in PHASES}
    s["baked_lab"]["wall"] = stats(col("baked", "lab", "wall"))
    s["baked_total"] = stats(col("baked", "total"))

    def med(st: dict[str, Any]) -> float | None:
        return st["median"]

    lab, sh = s["lab_first"], s["shell"]
    s["ratios"] = {
        "ansible_vs_shell": {
            "headers": ratio(med(lab["headers"]), med(sh["headers"])),
            "build": ratio(med(lab["build"]), med(sh["build"])),
            "load_node": ratio(med(lab["load_node"]), med(sh["load_node"])),
            "demo_vs_reads": ratio(med(lab["demo"]), med(sh["reads"])),
            "total_wall": ratio(med(lab["wall"]), med(s["shell_ssh_wall"])),
            "total_wall_same_work": ratio(
                None if med(lab["wall"]) is None else med(lab["wall"]) - (med(lab["cache_build"]) or 0.0),
                med(s["shell_ssh_wall"]),
            ),
        },
        "second_vs_first": ratio(med(s["lab_second"]["wall"]), med(lab["wall"])),
        "fresh_vs_rewind": ratio(med(s["fresh_total"]), med(s["rewind_wall"])),
    }
    return s


# ---------------------------------------------------------------------------------------------------
# The report

TABLE_HEAD = "| Measure | Median | Min | Max | Runs |\n| --- | ---: | ---: | ---: | ---: |"


def row(label: str, st: dict[str, Any]) -> str:
    if not st["n"]:
        return f"| {label} | not measured | | | 0 |"
    return bench.row(label, st)


def fmt_r(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "within" if value <= limit else "**not within**"


def render(r: dict[str, Any], command: str) -> str:
    m, code, s = r["machine"], r["code"], r["summary"]
    rt = s["ratios"]
    runs = r["options"]["runs"]
    loads = [c["loadavg_1m"] for c in r["context"]]
    others = [c["other_qemu"] for c in r["context"]]
    changes = f", with uncommitted changes to {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
    changes += f" (HEAD {code['head']})" if code["head"] != code["commit"] else ""
    lab, second = s["lab_first"], s["lab_second"]
    out = [
        "# Benchmarks: the lab on one VM, against a shell script, and a crashed VM made ready again",
        "",
        para(
            "What the lab itself costs on one local VM (bookworm, the default image: the kernel headers are "
            "not baked in, apt installs them from the mirror inside the VM), measured through the project's "
            "own playbooks with the project's `ansible.cfg` and per-task durations from the json callback, "
            "against a plain bash script doing the same work over one SSH connection. `tools/bench_lab.py` "
            "says how each figure is taken."
        ),
        "",
        f"- Date: {r['started'][:10]}, {r['started'][11:16]} to {r['finished'][11:16]} UTC",
        f"- Command: `{command}`, from the repository root (`make bench-lab`; `make bench` runs it too)",
        f"- Code: {', '.join(f'`{p}`' for p in MEASURED_PATHS)} of commit {code['commit']}{changes}",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}; "
        f"{m['qemu']}; {m['ansible']}; every VM under TCG",
        f"- Ansible strategy: `{r.get('strategy', 'linear')}`"
        + (" (Mitogen: `make bench-lab MITOGEN=1`)" if r.get("strategy", "").startswith("mitogen") else ""),
        "",
        para(
            f"**{runs} run{'s' if runs > 1 else ''} on a shared, noisy machine**"
            + (" (each figure is a single measurement)" if runs == 1 else " (medians, min and max)")
            + ": "
            + (
                f"other QEMU processes were running ({min(others)} to {max(others)} when measures started)"
                if max(others)
                else "no other QEMU process was running when the measures started"
            )
            + f", 1-minute load average {min(loads):.1f} to {max(loads):.1f} on {m['cores']} cores. The "
            "headers come from Debian's mirror through the VM's relay, so the network's speed is part of "
            "the headers phase of A, B and D(ii).",
            "> ",
        ),
        "",
        "## Targets (stated, not asserted)",
        "",
        "| Target | Measured (median) | |",
        "| --- | ---: | --- |",
    ]
    targets = (
        (
            "Rewind to a verified lab-ready VM <= 15 s (whole `reset.yml` run, D(i))",
            s["rewind_wall"]["median"],
            fmt_s,
            TARGETS["rewind_seconds"],
        ),
        (
            "Ready lab with a baked image <= 60 s (`lab.yml`, arm E)",
            s["baked_lab"]["wall"]["median"],
            fmt_s,
            TARGETS["baked_lab_seconds"],
        ),
        (
            "Ansible <= shell baseline on the same run, the same work (`lab.yml` wall without the crash "
            "variant's cache build / the script's ssh wall)",
            rt["ansible_vs_shell"].get("total_wall_same_work"),
            fmt_r,
            TARGETS["ansible_vs_shell"],
        ),
        (
            "Second run <= 10% of the first (`lab.yml` wall, C / B)",
            rt["second_vs_first"],
            fmt_r,
            TARGETS["second_vs_first"],
        ),
    )
    out += [f"| {what} | {fmt(value)} | {verdict(value, limit)} |" for what, value, fmt, limit in targets]
    out += [
        "",
        "## A. Shell baseline: one SSH connection, a bash script on stdin",
        "",
        TABLE_HEAD,
        row(
            "headers: `apt-get update`, `apt-get install linux-headers-$(uname -r)` + toolchain",
            s["shell"]["headers"],
        ),
        row(
            "build: sources written, `make clean` + `make modules VARIANT=safe`, install, depmod",
            s["shell"]["build"],
        ),
        row("load+node: `insmod`, `mknod` with the major from /proc/devices", s["shell"]["load_node"]),
        row("reads: `cat /dev/chardev` three times", s["shell"]["reads"]),
        row("**total, guest clock**", s["shell_guest_total"]),
        row("**total, ssh wall on the control node** (connection included)", s["shell_ssh_wall"]),
        row("Fresh VM before A or B: `playbooks/fleet.yml` (start or reset, boot to SSH)", s["boot"]),
        "",
        para(
            "Each phase is stamped with the guest's `date +%s.%N`. The toolchain packages are the "
            "`kernel_headers` role's (`vars/Debian.yml`: " + ", ".join(debian_toolchain()) + "); the image "
            "already has them, so apt installs the headers and their dependencies. The build is "
            "`chardev_build`'s: the same make arguments, then the `.ko` copied to `extra/` and `depmod -a`."
        ),
        "",
        "## B. The Ansible lab: `ansible-playbook playbooks/chardev.yml` on an identical fresh VM",
        "",
        TABLE_HEAD,
    ]
    out += [row(PHASE_LABELS[p], lab[p]) for p in PHASES]
    out += [
        row("**whole `lab.yml` run (wall)**", lab["wall"]),
        row("lab_vm_rewind `seconds` of the rewind point (`snapshot-save`)", s["rewind_point_save"]),
        "",
        para(
            "Phases are sums of the json callback's task durations (control node clock): `kernel_headers` "
            "tasks are headers; `chardev`'s build tasks build; its load, node and export tasks load+node; "
            "`chardev_demo` the demo (open and read 3 times, a second open, a write, rmmod refused while "
            "open: more than the shell's three `cat`s); fact gathering, the crash-state pre_task and the "
            "guard overhead; the post_task that keeps the rewind point its own row. The last row before the "
            "wall is what is left of it: ansible-playbook's start-up and the time between tasks."
        ),
        "",
        "| Ansible / shell (medians) | Ratio |",
        "| --- | ---: |",
        f"| headers | {fmt_r(rt['ansible_vs_shell']['headers'])} |",
        f"| build | {fmt_r(rt['ansible_vs_shell']['build'])} |",
        f"| load+node | {fmt_r(rt['ansible_vs_shell']['load_node'])} |",
        f"| demo / reads | {fmt_r(rt['ansible_vs_shell']['demo_vs_reads'])} |",
        "| **total: `lab.yml` wall / script's ssh wall** | "
        f"**{fmt_r(rt['ansible_vs_shell']['total_wall'])}** |",
        "| the same work: `lab.yml` wall without the crash variant's cache build / script's ssh wall | "
        f"{fmt_r(rt['ansible_vs_shell'].get('total_wall_same_work'))} |",
        "",
        "## C. `lab.yml` again, nothing to do",
        "",
        TABLE_HEAD,
        row("whole `lab.yml` run (wall)", second["wall"]),
        bench.row("changed tasks (0 expected)", second["changed"], bench.fmt_count)
        if second["changed"]["n"]
        else row("changed tasks (0 expected)", second["changed"]),
        "",
        f"Second run / first run (wall, medians): **{fmt_r(rt['second_vs_first'])}**.",
    ]
    changed = [(x["run"], x["lab_second"]["changed_tasks"]) for x in r["runs"] if x.get("lab_second")]
    changed = [(i, names) for i, names in changed if names]
    if changed:
        out += ["", "Tasks that changed on the second run:", ""]
        out += [f"- run {i}: " + "; ".join(f"`{n}`" for n in names) for i, names in changed]
    out += [
        "",
        "## D. Crashed -> ready to crash again",
        "",
        TABLE_HEAD,
        row("`playbooks/crash.yml` (each crash)", s["crash"]),
        row("(i) **`playbooks/reset.yml`, rewind** (whole run, verified)", s["rewind_wall"]),
        row("(i) of which `lab_vm_rewind`'s own `seconds` (`snapshot-load`)", s["rewind_module"]),
        row("(ii) `playbooks/reset.yml -e reset_mode=fresh`", s["fresh_reset_wall"]),
        row("(ii) then `playbooks/chardev.yml`", s["fresh_lab_wall"]),
        row("(ii) **fresh disk + re-provision, both together**", s["fresh_total"]),
        "",
        f"(ii) / (i), medians: **{fmt_r(rt['fresh_vs_rewind'])}**. How each reset went (`reset_how`): "
        + (
            "; ".join(
                f"run {x['run']}: (i) {x['rewind']['how']}, "
                f"(ii) {x.get('fresh', {}).get('how', 'not measured')}"
                for x in r["runs"]
                if "rewind" in x
            )
            or "not measured"
        )
        + ".",
    ]
    rewinds = [x for x in r["runs"] if x.get("rewind", {}).get("tasks")]
    if rewinds:
        last = rewinds[-1]
        slow = sorted(last["rewind"]["tasks"], key=lambda t: t["seconds"], reverse=True)[:4]
        size = last["rewind"].get("vm_state_size")
        out += [
            "",
            para(
                f"Where the (i) run's {last['rewind']['wall']:.1f} s went (run {last['run']}, its slowest "
                "tasks): "
                + "; ".join(f"`{t['name']}` {t['seconds']:.1f} s" for t in slow)
                + "."
                + (f" The rewind point holds {size / 2**20:.0f} MiB of VM state." if size else "")
            ),
        ]
    out += [
        "",
        "## E. Baked image (optional arm)",
        "",
    ]
    if s["baked_lab"]["wall"]["n"]:
        baked = s["baked_lab"]
        out += [
            para(
                f"A fresh VM of the image with `lab_vm_image_packages: {BAKED_PACKAGES}`, then `lab.yml` "
                "with `kernel_headers_update_cache: false` (apt finds every package installed: no download)."
            ),
            "",
            TABLE_HEAD,
            row("Fresh VM of the baked image: `playbooks/fleet.yml` (reset, boot)", s["baked_boot"]),
        ]
        out += [row(f"`lab.yml`: {PHASE_LABELS[p]}", baked[p]) for p in PHASES]
        out += [
            row("**whole `lab.yml` run (wall)**", baked["wall"]),
            row("fresh VM + `lab.yml`", s["baked_total"]),
            "",
        ]
    else:
        out += ["Not measured in this run (`--arms` without E).", ""]
    out += [
        "## Load before each measure",
        "",
        "| Measure | Time (UTC) | Load (1 min) | Other QEMU | Code |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    out += [
        f"| {c['measure']} | {c['time'][11:19]} | {c['loadavg_1m']:.2f} | {c['other_qemu']} | "
        f"{bench.code_label(c['code'])} |"
        for c in r["context"]
    ]
    out.append("")
    if r["notes"]:
        out += ["## Oddities seen during the run", ""]
        out += [para(note, "- ", "  ") for note in r["notes"]]
        out.append("")
    out += [
        para(
            "The raw numbers, every sample and every task's duration included, are in `benchmarks-lab.json` "
            "next to this file. The image and the boot are measured by `tools/bench.py` "
            "([benchmarks.md](benchmarks.md)), a classroom by `tools/bench_fleet.py` "
            "([benchmarks-fleet.md](benchmarks-fleet.md))."
        ),
        "",
    ]
    return bench.scrub("\n".join(out))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every arm (default 3)")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        choices=ARMS,
        help="arms to measure (default all; C and D run B first)",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "benchmarks-lab.md", help="Markdown report"
    )
    parser.add_argument("--port", type=int, default=0, help="SSH port (default: the first free of 2280-2289)")
    parser.add_argument(
        "--boot-timeout", type=int, default=900, help="lab_vm_boot_timeout, a cap only (default 900 s)"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="measure nothing: write --output again from the raw numbers of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
        if "summary" not in results:
            # The figures of a run that stopped early (its partial JSON): what was measured, said so.
            results["summary"] = summarize(results["runs"])
            results["finished"] = results["context"][-1]["time"] if results["context"] else results["started"]
            results["notes"].append(
                "the run stopped before its end: the figures marked not measured (and the last arm begun) "
                "are missing"
            )
        args.output.write_text(render(results, results["command"]), encoding="utf-8")
        log(f"wrote {args.output} from {args.from_json}")
        return 0
    command = shlex.join(["tools/bench_lab.py", *argv])

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, interrupted)
    lab = LabBench(args)
    rc = 0
    try:
        lab.setup()
        lab.run_all()
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        log(f"failed: {exc}")
        rc = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        lab.cleanup()
    if rc:
        log("no report written")
        if lab.results.get("runs"):
            # What was measured before the failure, for a look (not a report: some arms are missing).
            partial = Path(tempfile.gettempdir()) / f"bench-lab-partial-{os.getpid()}.json"
            raw = dict(lab.results, command=command, context=lab.context, notes=lab.notes)
            partial.write_text(json.dumps(scrub_obj(raw), indent=2) + "\n", encoding="utf-8")
            log(f"the figures measured so far: {partial}")
        return rc
    results = dict(lab.results, command=command, context=lab.context, notes=lab.notes, schema=1)
    results = scrub_obj(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, command), encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
