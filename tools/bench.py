#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measure what the local fleet costs, through the project's own code.

Every figure comes from ansible-playbook runs of the lab_vm role (the project's ansible.cfg, a
temporary inventory with one VM, the json stdout callback to read the modules' results):

  1. cold image build: the role's image tasks into an empty cache directory (--cold-runs times);
  2. cached image: playbooks/fleet.yml run again with the image cached and the VM up (what the fleet
     step of a second `make lab` costs), and the lab_vm_image module alone on the warm cache (--runs);
  3. boot to SSH: lab_vm_instance's boot_seconds over --runs resets (fresh overlay, fresh boot) under
     TCG, and under KVM when the lab_vm_accel probe says KVM works (otherwise its verdict is recorded);
     after each boot the guest's journal tells when its sshd started listening and how many
     connections it dropped past MaxStartups while the banner was awaited;
  4. memory and disk: QEMU's peak and current RSS (/proc/PID/status) once the VM has booted and idled,
     the image's and an overlay's allocated size on disk.

Writes Markdown to --output and the raw numbers as JSON next to it. Uses one VM at a time, an SSH port
in 2290-2299 and a temporary directory /tmp/chardev-bench-*, all removed at the end, also on failure,
Ctrl-C or SIGTERM. Progress goes to stderr.

Usage (from the repository root, with the virtualenv's bin on PATH): tools/bench.py [--cold-runs N]
[--runs N] [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One way to ask whether a port is free: the lab_vm_instance module's own function (the collection is on
# PYTHONPATH: make bench runs the tools with TOOLS_ENV).
from ansible_collections.chardev_lab.lab.plugins.modules.lab_vm_instance import port_free

REPO = Path(__file__).resolve().parent.parent
FLEET_PLAYBOOK = REPO / "playbooks" / "fleet.yml"
ROLE_DEFAULTS = REPO / "roles" / "lab_vm" / "defaults" / "main.yml"
HOST = "bench-vm"
PORTS = range(2290, 2300)
TMP_PREFIX = "chardev-bench-"
# Guest memory of the VM: the bench keeps the role's default lab_vm_memory.
_MEMORY = re.search(r"^lab_vm_memory:\s*(\d+)", ROLE_DEFAULTS.read_text(encoding="utf-8"), re.MULTILINE)
GUEST_MEMORY_MIB = int(_MEMORY.group(1)) if _MEMORY else 1024
HEARTBEAT_SECONDS = 30

# Nothing this tool writes (report, JSON, progress) names a mirror's host: URLs are cut to their scheme.
URL_HOST = re.compile(r"\b([a-z][a-z0-9+.-]*)://[^\s/'\"]+", re.IGNORECASE)


def scrub(text: str) -> str:
    return URL_HOST.sub(r"\1://<host>", text)


def scrub_obj(obj: Any) -> Any:
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, list):
        return [scrub_obj(x) for x in obj]
    if isinstance(obj, dict):
        return {k: scrub_obj(v) for k, v in obj.items()}
    return obj


T0 = time.monotonic()


def log(msg: str) -> None:
    elapsed = int(time.monotonic() - T0)
    print(f"[bench {elapsed // 60:3d}:{elapsed % 60:02d}] {scrub(msg)}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# Small helpers


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


def stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0, "median": None, "min": None, "max": None, "samples": []}
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "samples": [round(x, 3) for x in samples],
    }


def allocated_bytes(path: str | Path) -> int:
    """Bytes the file really occupies (what du counts), not its apparent size."""
    return os.stat(path).st_blocks * 512


def read_proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def cmdline(pid: int | str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.strip().splitlines() or ["unknown"])[0]


def machine_info() -> dict[str, Any]:
    cpu_model, processors = "unknown", 0
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            if key.strip() == "processor":
                processors += 1
    mem_kib = 0
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu_model": cpu_model,
        "cores": processors or os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "qemu": first_line(["qemu-system-x86_64", "--version"]),
        "ansible": first_line([ansible_tool("ansible"), "--version"]),
        "mmdebstrap": first_line(["mmdebstrap", "--version"]),
        "python": platform.python_version(),
        "dev_kvm": os.path.exists("/dev/kvm"),
    }


MEASURED_PATHS = (
    "roles/lab_vm",
    "plugins/modules/lab_vm_image.py",
    "plugins/modules/lab_vm_instance.py",
    "plugins/modules/lab_vm_accel.py",
    "playbooks/fleet.yml",
    "ansible.cfg",
)


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def code_version() -> dict[str, Any]:
    """The last commit that changed the code the measures run, HEAD, and uncommitted changes to that code."""
    dirty = git("status", "--porcelain", "--", *MEASURED_PATHS).splitlines()
    return {
        "commit": git("log", "-1", "--format=%h", "--", *MEASURED_PATHS) or "unknown",
        "head": git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted": [d[3:] for d in dirty],
    }


def code_label(code: dict[str, Any]) -> str:
    return code["commit"] + (" with uncommitted changes" if code["uncommitted"] else "")


def ansible_tool(name: str) -> str:
    """The virtualenv's tool next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name} not found: run 'make venv' and put .venv/bin on PATH")
    return found


# ---------------------------------------------------------------------------------------------------
# Reading the json callback's output


def tasks_named(doc: dict[str, Any], prefix: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task, host result) of every task whose name (without the role prefix) starts with prefix."""
    found = []
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            name = task["task"]["name"].split(" : ", 1)[-1]
            if name.startswith(prefix):
                found.extend((task["task"], res) for res in task.get("hosts", {}).values())
    return found


def one_task(doc: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    found = tasks_named(doc, prefix)
    if not found:
        raise BenchError(f"task '{prefix}...' not found in the playbook's output")
    return found[0]


def task_seconds(task: dict[str, Any]) -> float:
    return parse_time(task["duration"]["end"]) - parse_time(task["duration"]["start"])


def failures(doc: dict[str, Any]) -> list[str]:
    out = []
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                items = [res, *res.get("results", [])] if isinstance(res.get("results"), list) else [res]
                for item in items:
                    if isinstance(item, dict) and (item.get("failed") or item.get("unreachable")):
                        msg = str(item.get("msg", "")).strip()
                        out.append(f"{host}: task '{task['task']['name']}': {msg}")
    return out


@dataclass
class Run:
    label: str
    wall: float
    doc: dict[str, Any]
    changed: int


# ---------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ws: Path | None = None
        self.state_dir: Path | None = None
        self.inventory: Path | None = None
        self.port = 0
        self.child: subprocess.Popen[bytes] | None = None
        self.run_count = 0
        self.async_files: list[str] = []
        self.warm_cache: Path | None = None
        self.vm_started = False
        self.context: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}

    # -- set up -------------------------------------------------------------------------------------

    def setup(self) -> None:
        if not FLEET_PLAYBOOK.exists():
            raise BenchError(f"{FLEET_PLAYBOOK} is missing: run this from a chardev-lab checkout")
        self.ws = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp"))
        self.state_dir = self.ws / "fleet"
        (self.ws / "logs").mkdir()
        ports = [self.args.port] if self.args.port else list(PORTS)
        self.port = next((p for p in ports if port_free(p)), 0)
        if not self.port:
            raise BenchError(f"no free port among {ports[0]}-{ports[-1]} on 127.0.0.1")
        inventory = {
            "lab_vms": {
                "hosts": {HOST: {"ansible_port": self.port}},
                "vars": {"ansible_host": "127.0.0.1", "ansible_user": "root"},
            }
        }
        self.inventory = self.ws / "inventory.yml"
        self.inventory.write_text(json.dumps(inventory, indent=2) + "\n", encoding="utf-8")
        log(f"workspace {self.ws}, VM {HOST} with SSH on 127.0.0.1:{self.port}")

    def sample_context(self, measure: str) -> None:
        others = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            argv = cmdline(pid)
            if (
                argv
                and os.path.basename(argv[0]).startswith("qemu-system")
                and str(self.ws) not in " ".join(argv)
            ):
                others += 1
        load = os.getloadavg()
        self.context.append(
            {
                "measure": measure,
                "time": now_iso(),
                "loadavg_1m": round(load[0], 2),
                "other_qemu": others,
                # The working tree may be shared: the code a measure runs is read from disk at each run.
                "code": code_version(),
            }
        )
        log(f"{measure}: load average {load[0]:.2f}, {others} other QEMU process(es) on the machine")

    def base_vars(self, cache_dir: Path, **extra: Any) -> dict[str, Any]:
        assert self.state_dir is not None
        out: dict[str, Any] = {
            "lab_vm_suite": self.args.suite,
            "lab_vm_cache_dir": str(cache_dir),
            "lab_state_dir": str(self.state_dir),
            # A cap only: a boot that takes longer on a busy machine is measured rather than failed.
            "lab_vm_boot_timeout": self.args.boot_timeout,
        }
        if self.args.mirror:
            out["lab_vm_mirror"] = self.args.mirror
        out.update(extra)
        return out

    # -- running ansible-playbook -------------------------------------------------------------------

    def run_playbook(
        self,
        label: str,
        playbook: Path,
        extra_vars: dict[str, Any],
        *,
        timeout: float,
        watch_glob: str | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> Run:
        assert self.ws is not None and self.inventory is not None
        self.run_count += 1
        stem = self.ws / "logs" / f"{self.run_count:02d}"
        vars_file = Path(f"{stem}-vars.json")
        vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
        cmd = [
            ansible_tool("ansible-playbook"),
            "-i",
            str(self.inventory),
            "-e",
            f"@{vars_file}",
            str(playbook),
        ]
        env = dict(os.environ)
        env.update(
            {
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_NOCOLOR": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        env.update(env_extra or {})
        out_path, err_path = Path(f"{stem}-stdout.json"), Path(f"{stem}-stderr.txt")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.monotonic()
            # A session of its own: a Ctrl-C reaches the bench only, which then stops the run and cleans up.
            self.child = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            next_beat = started + HEARTBEAT_SECONDS
            while True:
                try:
                    rc = self.child.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - started > timeout:
                    self.kill_child()
                    raise BenchError(f"{label}: ansible-playbook still running after {timeout:.0f} s")
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_SECONDS
                    log(f"  ... {label}: {now - started:.0f} s{self.watch_line(watch_glob)}")
            wall = time.monotonic() - started
            self.child = None
        text = out_path.read_text(encoding="utf-8", errors="replace")
        try:
            doc = json.loads(text[text.index("{") :])
        except ValueError as exc:
            tail = "\n".join(err_path.read_text(errors="replace").splitlines()[-15:])
            raise BenchError(f"{label}: no JSON from ansible-playbook (rc={rc}):\n{tail}") from exc
        if rc != 0:
            why = failures(doc) or err_path.read_text(errors="replace").splitlines()[-15:]
            raise BenchError(f"{label}: ansible-playbook failed (rc={rc}):\n" + "\n".join(why))
        changed = sum(h.get("changed", 0) for h in doc.get("stats", {}).values())
        return Run(label, wall, doc, changed)

    def watch_line(self, pattern: str | None) -> str:
        if not pattern:
            return ""
        logs = sorted(glob.glob(pattern), key=os.path.getmtime)
        if not logs:
            return ""
        try:
            with open(logs[-1], "rb") as handle:
                handle.seek(max(0, os.path.getsize(logs[-1]) - 4096))
                lines = [ln for ln in handle.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f" (build log: {lines[-1][:100]})" if lines else ""

    def kill_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        log(f"stopping ansible-playbook (pid {child.pid}) and its workers")
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                return
            try:
                child.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- 1. cold image builds -----------------------------------------------------------------------

    def measure_cold(self) -> None:
        assert self.ws is not None
        self.sample_context("cold image build")
        playbook = self.ws / "image.yml"
        play = {
            "name": "Bench: the image tasks of the lab_vm role",
            "hosts": "lab_vms",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Build or read the image, choose the accelerator",
                    "ansible.builtin.include_role": {"name": "lab_vm", "tasks_from": "image.yml"},
                }
            ],
        }
        playbook.write_text(json.dumps([play], indent=2) + "\n", encoding="utf-8")
        runs = []
        previous: Path | None = None
        for i in range(1, self.args.cold_runs + 1):
            cache = self.ws / f"cache-cold-{i}"
            cache.mkdir()
            log(f"cold image build {i}/{self.args.cold_runs}: {self.args.suite} into empty {cache}")
            run = self.run_playbook(
                f"cold build {i}",
                playbook,
                self.base_vars(cache),
                timeout=3600,
                watch_glob=str(cache / "*.log"),
            )
            lookup_task, lookup = one_task(run.doc, "Look up the images in the cache")
            read_task, read = one_task(run.doc, "Read the images")
            _run, waited = one_task(run.doc, "Wait for the image builds")
            built = [r for r in waited.get("results", []) if r.get("finished")]
            if not built or not lookup["results"][0].get("changed"):
                raise BenchError(f"cold build {i}: the role did not build an image into the empty cache")
            for job in built:
                if job.get("results_file"):
                    self.async_files.append(job["results_file"])
            image = read["results"][0]
            step = parse_time(read_task["duration"]["end"]) - parse_time(lookup_task["duration"]["start"])
            accel_task, accel = one_task(run.doc, "Choose KVM or TCG")
            record = {
                "run": i,
                "build_seconds": float(built[0]["seconds"]),
                "image_step_wall": round(step, 3),
                "playbook_wall": round(run.wall, 3),
                "key": image["key"],
                "kernel_release": image["kernel_release"],
                "probe": {
                    "accel": accel.get("accel"),
                    "reason": accel.get("reason"),
                    "cached": accel.get("cached"),
                    "seconds": round(task_seconds(accel_task), 3),
                },
            }
            runs.append(record)
            log(
                f"cold build {i}: lab_vm_image built in {record['build_seconds']:.1f} s; role image step "
                f"{step:.1f} s; playbook {run.wall:.1f} s; accel {accel.get('accel')} ({accel.get('reason')})"
            )
            # Only the last image is kept: it is the warm cache of the next measures.
            if previous is not None:
                remove_tree(previous)
            previous = cache
        self.warm_cache = previous
        keys = {r["key"] for r in runs}
        if len(keys) != 1:
            self.notes.append(f"the cold builds produced different cache keys: {sorted(keys)}")
        probe = next((r["probe"] for r in runs if not r["probe"]["cached"]), runs[0]["probe"])
        self.results["accel_probe"] = probe
        self.results["cold_image"] = {
            "suite": self.args.suite,
            "runs": runs,
            "build_seconds": stats([r["build_seconds"] for r in runs]),
            "image_step_wall": stats([r["image_step_wall"] for r in runs]),
            "playbook_wall": stats([r["playbook_wall"] for r in runs]),
        }

    # -- 2. cached image ----------------------------------------------------------------------------

    def fleet(self, label: str, timeout: float = 900, **extra: Any) -> tuple[Run, dict[str, Any]]:
        """playbooks/fleet.yml on the bench's VM, with the warm cache (state absent needs no image)."""
        assert self.ws is not None
        cache = self.warm_cache or self.ws / "no-cache"
        run = self.run_playbook(label, FLEET_PLAYBOOK, self.base_vars(cache, **extra), timeout=timeout)
        _run, instance = one_task(run.doc, "Bring the VM to state")
        if instance.get("state") == "running":
            self.vm_started = True
        return run, instance

    def measure_cached(self) -> None:
        assert self.ws is not None and self.warm_cache is not None
        self.sample_context("cached image")
        log("first fleet run on the warm cache (starts the VM)")
        first, instance = self.fleet("first fleet run")
        sshd = self.guest_sshd()
        log(
            f"first fleet run: {first.wall:.1f} s, VM booted in {instance['boot_seconds']:.1f} s; "
            f"{describe_sshd(sshd)}"
        )
        self.results["first_fleet_run"] = {
            "playbook_wall": round(first.wall, 3),
            "boot_seconds": instance["boot_seconds"],
            "sshd": sshd,
            "actions": instance.get("actions", []),
            "accel": one_task(first.doc, "Choose KVM or TCG")[1].get("accel"),
        }
        second_runs = []
        for i in range(1, self.args.runs + 1):
            run, instance = self.fleet(f"second fleet run {i}")
            second_runs.append(
                {
                    "run": i,
                    "playbook_wall": round(run.wall, 3),
                    "changed_tasks": run.changed,
                    "vm_actions": instance.get("actions", []),
                }
            )
            log(f"second fleet run {i}/{self.args.runs}: {run.wall:.1f} s, {run.changed} changed task(s)")
            if instance.get("changed"):
                self.notes.append(f"second fleet run {i} changed the VM: {instance.get('actions')}")
            elif run.changed:
                self.notes.append(
                    f"second fleet run {i} reported {run.changed} changed task(s) (not idempotent)"
                )

        # lab_vm_image alone, with the role's defaults for the inputs of the cache key.
        playbook = self.ws / "image-module.yml"
        play = {
            "name": "Bench: lab_vm_image on a warm cache",
            "hosts": "lab_vms",
            "gather_facts": False,
            "vars_files": [str(ROLE_DEFAULTS)],
            "tasks": [
                {
                    "name": "Read the cached image",
                    "chardev_lab.lab.lab_vm_image": {
                        "suite": "{{ lab_vm_suite }}",
                        "mirror": "{{ lab_vm_mirror }}",
                        "packages": "{{ lab_vm_image_packages }}",
                        "size": "{{ lab_vm_image_size }}",
                        "cache_dir": "{{ lab_vm_cache_dir }}",
                    },
                    "delegate_to": "localhost",
                    "run_once": True,
                }
            ],
        }
        playbook.write_text(json.dumps([play], indent=2) + "\n", encoding="utf-8")
        cold_key = self.results["cold_image"]["runs"][-1]["key"]
        module_runs = []
        for i in range(1, self.args.runs + 1):
            run = self.run_playbook(
                f"lab_vm_image warm {i}",
                playbook,
                self.base_vars(self.warm_cache),
                timeout=600,
            )
            task, res = one_task(run.doc, "Read the cached image")
            if res.get("changed") or res.get("key") != cold_key:
                raise BenchError(f"lab_vm_image on the warm cache did not reuse {cold_key}: {res.get('key')}")
            module_runs.append(
                {"run": i, "task_seconds": round(task_seconds(task), 3), "playbook_wall": round(run.wall, 3)}
            )
            log(
                f"lab_vm_image warm {i}/{self.args.runs}: task {task_seconds(task):.2f} s "
                f"(playbook {run.wall:.1f} s)"
            )
        self.results["cached_image"] = {
            "second_fleet_runs": second_runs,
            "second_fleet_run_wall": stats([r["playbook_wall"] for r in second_runs]),
            "module_runs": module_runs,
            "module_task_seconds": stats([r["task_seconds"] for r in module_runs]),
            "module_playbook_wall": stats([r["playbook_wall"] for r in module_runs]),
        }

    # -- 3 and 4. boots, memory, disk ---------------------------------------------------------------

    def measure_boots(self) -> None:
        probe = self.results["accel_probe"]
        boots: dict[str, Any] = {}
        accels = (["kvm"] if probe["accel"] == "kvm" else []) + ["tcg"]
        memory_runs = []
        for accel in accels:
            self.sample_context(f"boot to SSH ({accel})")
            runs = []
            for i in range(1, self.args.runs + 1):
                run, instance = self.fleet(
                    f"reset {accel} {i}", timeout=1200, lab_vm_state="reset", lab_vm_accel=accel
                )
                boot = float(instance["boot_seconds"])
                record: dict[str, Any] = {"run": i, "boot_seconds": boot, "playbook_wall": round(run.wall, 3)}
                msg = f"reset {accel} {i}/{self.args.runs}: boot to SSH {boot:.1f} s"
                msg += f" (playbook {run.wall:.1f} s)"
                if accel == "tcg":
                    # The VM idles a while after its SSH banner, then QEMU's memory is read.
                    time.sleep(self.args.idle_seconds)
                    pid = int(instance["pid"])
                    if not any(str(self.ws) in a for a in cmdline(pid)):
                        raise BenchError(f"pid {pid} is not this bench's QEMU")
                    mem = read_proc_status(pid)
                    record.update(pid=pid, vmhwm_kib=mem["VmHWM"], vmrss_kib=mem["VmRSS"])
                    memory_runs.append(record)
                    msg += (
                        f"; QEMU after {self.args.idle_seconds} s idle: VmHWM {mem['VmHWM'] / 1024:.0f} MiB"
                    )
                    msg += f", VmRSS {mem['VmRSS'] / 1024:.0f} MiB"
                record["sshd"] = self.guest_sshd()
                msg += f"; {describe_sshd(record['sshd'])}"
                runs.append(record)
                log(msg)
            listening = [r["sshd"]["listening_s"] for r in runs if r["sshd"].get("listening_s") is not None]
            gaps = [
                r["boot_seconds"] - r["sshd"]["listening_s"]
                for r in runs
                if r["sshd"].get("listening_s") is not None
            ]
            drops = [r["sshd"]["maxstartups_drops"] for r in runs if "maxstartups_drops" in r["sshd"]]
            boots[accel] = {
                "runs": runs,
                "boot_seconds": stats([r["boot_seconds"] for r in runs]),
                "playbook_wall": stats([r["playbook_wall"] for r in runs]),
                "sshd_listening_s": stats(listening),
                "banner_after_listening_s": stats(gaps),
                "maxstartups_drops": stats([float(d) for d in drops]),
            }
            dropped = [d for d in drops if d]
            if dropped:
                self.notes.append(
                    f"{accel.upper()}: in {len(dropped)} of {len(runs)} reset boots the guest's sshd dropped "
                    f"connections past MaxStartups (up to {max(dropped)} in one boot) while lab_vm_instance "
                    "was polling for its banner (a connection a second, each read given 3 s); compare the "
                    "time from sshd listening to the banner in section 3"
                )
        if "kvm" not in boots:
            boots["kvm"] = {"measured": False, "verdict": probe}
        self.results["boot"] = boots
        self.results["memory"] = {
            "idle_seconds": self.args.idle_seconds,
            "guest_memory_mib": GUEST_MEMORY_MIB,
            "vmhwm_mib": stats([r["vmhwm_kib"] / 1024 for r in memory_runs]),
            "vmrss_mib": stats([r["vmrss_kib"] / 1024 for r in memory_runs]),
        }

    def guest_sshd(self) -> dict[str, Any]:
        """From the guest's journal, over SSH with the fleet's key and host-key checking: when sshd
        started listening (guest clock, seconds since its kernel started) and how many connections it
        dropped past MaxStartups during the boot (while lab_vm_instance was waiting for its banner)."""
        assert self.state_dir is not None
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
            "journalctl -b --no-pager -o short-monotonic -u ssh.service",
        ]
        error = ""
        for _attempt in range(3):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
            except subprocess.TimeoutExpired:
                error = "ssh timed out"
                continue
            if proc.returncode == 0:
                break
            error = (proc.stderr.strip().splitlines() or [f"ssh exited with {proc.returncode}"])[-1]
            time.sleep(5)
        else:
            return {"error": error}
        listening = None
        drops = 0
        for line in proc.stdout.splitlines():
            stamp = re.match(r"\[\s*(\d+\.\d+)\]", line)
            if stamp and listening is None and "Server listening" in line:
                listening = float(stamp.group(1))
            if "past MaxStartups" in line:
                drops += 1
        return {"listening_s": listening, "maxstartups_drops": drops}

    def measure_disk(self) -> None:
        assert self.ws is not None and self.warm_cache is not None and self.state_dir is not None
        image_dir = self.warm_cache / self.results["cold_image"]["runs"][-1]["key"]
        disk = image_dir / "disk.raw"
        overlay = self.state_dir / "vms" / HOST / "overlay.qcow2"
        # A fresh overlay, made with the very command lab_vm_instance runs before a boot.
        fresh = self.ws / "fresh-overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk), str(fresh)], check=True
        )
        mib = 1024 * 1024
        self.results["disk"] = {
            "image_disk_allocated_mib": round(allocated_bytes(disk) / mib, 1),
            "image_disk_apparent_mib": round(disk.stat().st_size / mib, 1),
            "image_dir_allocated_mib": round(sum(allocated_bytes(p) for p in image_dir.iterdir()) / mib, 1),
            "fresh_overlay_allocated_mib": round(allocated_bytes(fresh) / mib, 2),
            "booted_overlay_allocated_mib": round(allocated_bytes(overlay) / mib, 1),
        }
        d = self.results["disk"]
        log(
            f"disk: image {d['image_disk_allocated_mib']} MiB allocated "
            f"of {d['image_disk_apparent_mib']} MiB; "
            f"fresh overlay {d['fresh_overlay_allocated_mib']} MiB; after a boot "
            f"{d['booted_overlay_allocated_mib']} MiB"
        )

    def run_all(self) -> None:
        self.results["started"] = now_iso()
        self.results["machine"] = machine_info()
        self.results["code"] = code_version()
        a = self.args
        self.results["options"] = {
            "suite": a.suite,
            "cold_runs": a.cold_runs,
            "runs": a.runs,
            "idle_seconds": a.idle_seconds,
            "boot_timeout": a.boot_timeout,
            "mirror": "set" if a.mirror else "the role's default",
            "ssh_port": self.port,
        }
        self.measure_cold()
        self.measure_cached()
        self.measure_boots()
        self.measure_disk()
        self.sample_context("end")
        self.results["finished"] = now_iso()
        codes = [(c["measure"], c["code"]) for c in self.context]
        if len({code_label(code) for _name, code in codes}) > 1:
            first, last = codes[0][1]["commit"], codes[-1][1]["commit"]
            files = git("diff", "--name-only", first, last, "--", *MEASURED_PATHS).split()
            self.notes.append(
                "the measured code changed during the run (the working tree is shared and was committed to "
                "meanwhile): "
                + "; ".join(f"{measure}: {code_label(code)}" for measure, code in codes)
                + (f". Changed between {first} and {last}: {', '.join(files)}" if files else "")
            )
        self.results["ratios"] = ratios(self.results)

    # -- clean-up -----------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.ws is None:
            return
        log("cleaning up (Ctrl-C is ignored until done)")
        self.kill_child()
        if self.vm_started or (self.state_dir is not None and (self.state_dir / "vms").exists()):
            try:
                run, _result = self.fleet("stop the VM", timeout=300, lab_vm_state="absent")
                log(f"VM removed (state absent) in {run.wall:.1f} s")
            except (BenchError, OSError, AssertionError) as exc:
                log(f"could not remove the VM through the role: {exc}")
        self.kill_leftovers()
        for path in self.async_files:
            if path.startswith(os.path.expanduser("~/.ansible_async/")):
                Path(path).unlink(missing_ok=True)
        mounts = unmount_under(self.ws)
        if mounts:
            log(f"NOT removing {self.ws}: still mounted under it: {mounts}")
            return
        remove_tree(self.ws)
        log(f"removed {self.ws}")

    def kill_leftovers(self) -> None:
        """Processes still working in the bench's directory: a QEMU whose VM could not be removed, or an
        image build (mmdebstrap and its apt/dpkg children) that an interrupted run left behind. They
        are found by the bench's unique directory and stopped by PID; mmdebstrap first, so that it can
        unmount what it mounted in its chroot."""
        assert self.ws is not None
        ws = str(self.ws)

        def mine() -> dict[int, list[str]]:
            found = {}
            for entry in filter(str.isdigit, os.listdir("/proc")):
                pid = int(entry)
                if pid == os.getpid():
                    continue
                argv = cmdline(pid)
                paths = []
                for link in ("cwd", "root"):
                    with contextlib.suppress(OSError):
                        paths.append(os.readlink(f"/proc/{pid}/{link}"))
                if any(ws in a for a in argv) or any(p == ws or p.startswith(ws + "/") for p in paths):
                    found[pid] = argv
            return found

        def stop(pids: list[int], grace: float) -> None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
                    time.sleep(0.2)

        left = mine()
        leaders = [
            pid for pid, argv in left.items() if any("mmdebstrap" in os.path.basename(a) for a in argv[:2])
        ]
        if leaders:
            log(f"stopping the image build left running: pid(s) {leaders}")
            stop(leaders, 30)
        left = mine()
        if left:
            log(f"stopping leftover processes: {sorted(left)}")
            stop(sorted(left), 10)


def describe_sshd(sshd: dict[str, Any]) -> str:
    if "error" in sshd:
        return f"guest journal not read: {sshd['error']}"
    listening = sshd["listening_s"]
    when = "n/a" if listening is None else f"{listening:.1f} s"
    drops = sshd["maxstartups_drops"]
    return f"sshd listening at {when} guest time, {drops} connection(s) dropped past MaxStartups"


def unmount_under(root: Path) -> list[str]:
    """Unmount whatever is mounted below root (an interrupted mmdebstrap's /proc, /sys); return what is
    still mounted there afterwards."""

    def mounted() -> list[str]:
        points = []
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                if point.startswith(f"{root}/"):
                    points.append(point)
        return points

    for point in sorted(mounted(), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", "--recursive", point], check=False, capture_output=True)
    return mounted()


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into another file system (a bind mount left in a chroot)."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


# ---------------------------------------------------------------------------------------------------
# Ratios and the report


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 5) if a is not None and b else None

    cold, cached = r["cold_image"], r["cached_image"]
    tcg = r["boot"]["tcg"]["boot_seconds"]["median"]
    return {
        "second_fleet_run_vs_cold_image_step": ratio(
            cached["second_fleet_run_wall"]["median"], cold["image_step_wall"]["median"]
        ),
        "warm_module_task_vs_cold_build": ratio(
            cached["module_task_seconds"]["median"], cold["build_seconds"]["median"]
        ),
        "tcg_boot_vs_cold_build": ratio(tcg, cold["build_seconds"]["median"]),
        "second_fleet_run_vs_tcg_boot": ratio(cached["second_fleet_run_wall"]["median"], tcg),
        "qemu_peak_rss_vs_guest_memory": ratio(
            r["memory"]["vmhwm_mib"]["median"], r["memory"]["guest_memory_mib"]
        ),
    }


def fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def fmt_mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f} MiB"


def row(label: str, s: dict[str, Any], fmt: Any = fmt_s) -> str:
    return f"| {label} | {fmt(s['median'])} | {fmt(s['min'])} | {fmt(s['max'])} | {s['n']} |"


def fmt_ratio(x: float | None, longer: str = "") -> str:
    """A ratio (two decimals, or two significant digits below 0.1); with `longer`, also how many times
    as long that one takes."""
    if not x:
        return "n/a"
    text = f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"
    return f"{text}: {longer} takes {1 / x:.0f}x as long" if longer and x < 1 else text


def fmt_count(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def para(text: str, prefix: str = "", hang: str | None = None) -> str:
    """A Markdown paragraph wrapped at 104 columns; hang indents its continuation lines (list items)."""
    return textwrap.fill(
        text,
        width=104,
        initial_indent=prefix,
        subsequent_indent=prefix if hang is None else hang,
        break_on_hyphens=False,
        break_long_words=False,
    )


TABLE_HEAD = "| Measure | Median | Min | Max | Runs |\n| --- | ---: | ---: | ---: | ---: |"


def render(r: dict[str, Any], command: str) -> str:
    m, code, probe = r["machine"], r["code"], r["accel_probe"]
    cold, cached, boot, mem, disk = r["cold_image"], r["cached_image"], r["boot"], r["memory"], r["disk"]
    first, rt = r["first_fleet_run"], r["ratios"]
    loads = [c["loadavg_1m"] for c in r["context"]]
    others = [c["other_qemu"] for c in r["context"]]
    tcg = boot["tcg"]
    changes = f", with uncommitted changes to {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
    changes += f" (HEAD {code['head']})" if code.get("head", code["commit"]) != code["commit"] else ""
    if any("code changed" in note for note in r["notes"]):
        changes += " at the start; it changed during the run (see the oddities)"
    out = [
        "# Benchmarks",
        "",
        para(
            "What the local fleet costs on one machine: building the VM image, reusing it, booting a VM to "
            "SSH, and the memory and disk a VM takes. Every figure is measured through the project's own "
            "code: `ansible-playbook` runs of the `lab_vm` role with the project's `ansible.cfg`, and the "
            "modules' own results. `tools/bench.py` says how each one is taken."
        ),
        "",
        f"- Date: {r['started'][:10]}, {r['started'][11:16]} to {r['finished'][11:16]} UTC",
        f"- Command: `{command}`, from the repository root (`make bench` runs it with the default counts)",
        f"- Code: `roles/lab_vm`, `playbooks/fleet.yml`, `ansible.cfg` of commit {code['commit']}{changes}",
        "",
        para(
            "These figures come from **one run on a shared, noisy machine**: "
            + (
                f"other QEMU processes were running at the same time ({min(others)} to {max(others)} "
                "when the measures started"
                if max(others) > 0
                else "no other QEMU process was running when the measures started"
            )
            + f", 1-minute load average {min(loads):.1f} to {max(loads):.1f} on {m['cores']} cores. Read "
            "them as orders of magnitude and as ratios within this run, not as precise timings. The cold "
            "build downloads every package from the Debian mirror, so the network's speed is part of it.",
            "> ",
        ),
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {m['cpu_model']} |",
        f"| Cores | {m['cores']} |",
        f"| Memory | {m['memory_gib']} GiB |",
        f"| Kernel | {m['kernel']} |",
        f"| QEMU | {m['qemu']} |",
        f"| Ansible | {m['ansible']} |",
        f"| mmdebstrap | {m['mmdebstrap']} |",
        f"| Accelerator | {probe['accel'].upper()}, the `lab_vm_accel` probe's verdict "
        f"({probe['seconds']:.0f} s): {probe['reason']} |",
        "",
        f"## 1. Cold image build ({cold['suite']}, empty cache)",
        "",
        TABLE_HEAD,
        row("`lab_vm_image` build (the module's own `seconds`)", cold["build_seconds"]),
        row("The role's image step, wall (look-up, async build, wait, read)", cold["image_step_wall"]),
        row("Whole `ansible-playbook` run of the role's image tasks", cold["playbook_wall"]),
        "",
        para(
            "Each run starts from an empty cache directory. The role's step is the build plus Ansible's "
            "look-up, async start and read tasks; it waits for the build by polling every 15 s, so it can "
            "exceed the build by up to 15 s. The whole run adds the fleet's SSH key and a KVM probe (a fresh "
            "one each time: the probe's cache key includes the kernel's path)."
        ),
        "",
        "## 2. Cached image",
        "",
        TABLE_HEAD,
        row(
            "Second `playbooks/fleet.yml` run (image cached, VM up: the whole run)",
            cached["second_fleet_run_wall"],
        ),
        row("`lab_vm_image` alone on the warm cache (task duration)", cached["module_task_seconds"]),
        row("`lab_vm_image` alone: whole `ansible-playbook` run", cached["module_playbook_wall"]),
        "",
        para(
            "The first `playbooks/fleet.yml` run on the warm cache, which also starts the VM, took "
            f"{fmt_s(first['playbook_wall'])}, of which {fmt_s(first['boot_seconds'])} booting to SSH "
            f"({describe_sshd(first['sshd'])})."
        ),
        "",
        "## 3. Boot to SSH",
        "",
        TABLE_HEAD,
    ]
    if "runs" in boot["kvm"]:
        out.append(row("KVM: `boot_seconds` after a reset", boot["kvm"]["boot_seconds"]))
    out += [
        row("TCG: `boot_seconds` after a reset", tcg["boot_seconds"]),
        row("TCG: the guest's sshd listening (guest clock, from its journal)", tcg["sshd_listening_s"]),
        row(
            "TCG: from sshd listening to the banner seen (`boot_seconds` minus the above)",
            tcg["banner_after_listening_s"],
        ),
        row(
            "TCG: connections the guest's sshd dropped past MaxStartups", tcg["maxstartups_drops"], fmt_count
        ),
        row("TCG: whole reset run of `playbooks/fleet.yml`", tcg["playbook_wall"]),
        "",
        para(
            "`boot_seconds` is `lab_vm_instance`'s own figure, from starting QEMU to the guest's SSH banner; "
            "each reset stops the VM and boots it on a fresh overlay (`lab_vm_state=reset`). The sshd rows "
            "come from the guest's journal, read over SSH after each boot: the guest clock starts with its "
            "kernel, a second or two after QEMU. The bench sets `lab_vm_boot_timeout` to "
            f"{r['options']['boot_timeout']} s, so that a slow boot is measured rather than failed."
        ),
    ]
    if "runs" not in boot["kvm"]:
        out += [
            "",
            para(
                "KVM: not measured. The `lab_vm_accel` probe's verdict on this machine is "
                f"**{probe['accel']}**: {probe['reason']}."
            ),
        ]
    out += [
        "",
        "## 4. Memory and disk",
        "",
        TABLE_HEAD,
        row(f"QEMU peak RSS (VmHWM), booted and idle {mem['idle_seconds']} s", mem["vmhwm_mib"], fmt_mib),
        row("QEMU RSS (VmRSS) at the same moment", mem["vmrss_mib"], fmt_mib),
        "",
        f"The guest has {mem['guest_memory_mib']} MiB (the role's default `lab_vm_memory`), under TCG.",
        "",
        "| On disk | Allocated |",
        "| --- | ---: |",
        f"| Image `disk.raw` (du; apparent size {disk['image_disk_apparent_mib'] / 1024:.1f} GiB) | "
        f"{fmt_mib(disk['image_disk_allocated_mib'])} |",
        f"| Image directory (disk, kernel, initrd, manifest) | {fmt_mib(disk['image_dir_allocated_mib'])} |",
        "| Fresh overlay (`qemu-img create` as `lab_vm_instance` runs it) | "
        f"{disk['fresh_overlay_allocated_mib']:.2f} MiB |",
        "| The VM's overlay after its last boot and idle time | "
        f"{fmt_mib(disk['booted_overlay_allocated_mib'])} |",
        "",
        "## Ratios (medians of this run)",
        "",
        "| Ratio | Value |",
        "| --- | --- |",
        "| Second fleet run / cold image step | "
        f"{fmt_ratio(rt['second_fleet_run_vs_cold_image_step'], 'the cold step')} |",
        "| `lab_vm_image` on a warm cache / cold `lab_vm_image` build | "
        f"{fmt_ratio(rt['warm_module_task_vs_cold_build'], 'the cold build')} |",
        f"| TCG boot to SSH / cold `lab_vm_image` build | {fmt_ratio(rt['tcg_boot_vs_cold_build'])} |",
        f"| Second fleet run / TCG boot to SSH | {fmt_ratio(rt['second_fleet_run_vs_tcg_boot'])} |",
        f"| QEMU peak RSS / guest memory | {fmt_ratio(rt['qemu_peak_rss_vs_guest_memory'])} |",
        "",
    ]
    if r["notes"]:
        out += ["## Oddities seen during the run", ""]
        out += [para(note, "- ", "  ") for note in r["notes"]]
        out.append("")
    out += ["The raw numbers, every sample included, are in `benchmarks.json` next to this file.", ""]
    out += [
        "A classroom (one VM against four, every step of the class timed) is measured by "
        "`tools/bench_fleet.py` (`make bench-fleet`): [benchmarks-fleet.md](benchmarks-fleet.md).",
        "",
        "The lab itself (Ansible against a plain shell script on an identical VM, per phase; a second run "
        "with nothing to do; a crashed VM rewound against a fresh disk plus the lab again) is measured by "
        "`tools/bench_lab.py` (`make bench-lab`, part of `make bench`): "
        "[benchmarks-lab.md](benchmarks-lab.md).",
        "",
    ]
    return scrub("\n".join(out))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--cold-runs", type=int, default=3, help="cold image builds (default 3)")
    parser.add_argument("--runs", type=int, default=5, help="cached runs and boots (default 5)")
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown report"
    )
    parser.add_argument("--suite", default="bookworm", choices=["bullseye", "bookworm", "trixie"])
    parser.add_argument("--mirror", default="", help="lab_vm_mirror for the builds (default: the role's)")
    parser.add_argument(
        "--port", type=int, default=0, help="SSH port (default: the first free one of 2290-2299)"
    )
    parser.add_argument("--idle-seconds", type=int, default=20, help="idle time before reading QEMU's RSS")
    parser.add_argument(
        "--boot-timeout",
        type=int,
        default=900,
        help="lab_vm_boot_timeout for the bench's boots, a cap only (default 900 s)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="measure nothing: write --output again from the raw numbers of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.cold_runs < 1 or args.runs < 1:
        parser.error("--cold-runs and --runs must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
        args.output.write_text(render(results, results["command"]), encoding="utf-8")
        log(f"wrote {args.output} from {args.from_json}")
        return 0
    command = shlex.join([sys.argv[0], *argv])

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    # Under nohup a hang-up is ignored, and must stay so.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, interrupted)
    bench = Bench(args)
    rc = 0
    try:
        bench.setup()
        bench.run_all()
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        log(f"failed: {exc}")
        rc = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        bench.cleanup()
    if rc:
        log("no report written")
        return rc
    results = dict(bench.results, command=command, context=bench.context, notes=bench.notes, schema=1)
    results = scrub_obj(results)
    output = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(results, command), encoding="utf-8")
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {output} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
