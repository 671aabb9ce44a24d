# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The crash state of a host: the one place that knows where the lab's run files live (run_files,
pidfiles_for), what the crash record and the taint baseline hold (parse_record, parse_taint_baseline,
taint_baseline_entry), and what they and the kernel mean together (crash_state).

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    parse_kernel_log,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    MODES,
    ROLE_READER,
    ROLE_VICTIM,
    gather_tasks,
    task_to_dict,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    TAINT_DIE,
    TAINT_LAB,
    parse_oops_count,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import RUN_DIR, TAINT_BASELINE_PATH
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

# The role's files on the target live in one run directory on tmpfs (a reboot clears them):
#   crashed.json     the record: written with state "unloading" BEFORE the rmmod (so an interrupted run
#                    is known), completed with state "crashed" and the evidence after it;
#   victim.pid, reader.pid   "PID STARTTIME" of the victim and (splice mode) its pipe reader;
#   ready, trigger, victim.log, chardev_victim.py   the victim program's files.
# The record is the lab's own word; the kernel's word wins over it: taint flag D, an oops count above
# zero or a recursive fault in the kernel log since boot mean "crashed", whatever the record says, so a
# lost record never leads to a second crash of a damaged kernel.

RECORD_NAME = "crashed.json"
RECORD_UNLOADING = "unloading"
RECORD_CRASHED = "crashed"

#: What a crash run leaves behind, by phase:
#:   fresh     nothing: the host may be crashed;
#:   leftover  a victim of an interrupted run still holds the device, the module still loaded: stop it,
#:             then fresh;
#:   armed     the module was removed under a live victim (a run interrupted between rmmod and trigger):
#:             the kernel is intact, and the next use of the file crashes it; the run goes on from the
#:             trigger instead of building and loading again;
#:   recover   the kernel crashed but the record is not complete (interrupted, failed or lost): gather the
#:             evidence again and complete the record; never crash again;
#:   done      the record is complete: report it.
PHASES = ("fresh", "leftover", "armed", "recover", "done")


def utc_now() -> str:
    """The time now, as the records write it (not datetime.UTC: the target's Python may be 3.9)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def read_json(path: str) -> Any:
    """A JSON file's content, or None when it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write atomically (a crash or an interrupt never leaves half a record)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def run_files(run_dir: str = RUN_DIR) -> dict[str, str]:
    """The crash role's files in its run directory on the target, by name."""
    return {
        "record": os.path.join(run_dir, RECORD_NAME),
        ROLE_VICTIM: os.path.join(run_dir, "victim.pid"),
        ROLE_READER: os.path.join(run_dir, "reader.pid"),
        "ready": os.path.join(run_dir, "ready"),
        "trigger": os.path.join(run_dir, "trigger"),
        "log": os.path.join(run_dir, "victim.log"),
        "program": os.path.join(run_dir, "chardev_victim.py"),
        # Where the crash variant lived (sections, kallsyms), captured before any rmmod: the fault's
        # address is explained against it (chardev_fault.explain).
        "layout": os.path.join(run_dir, "layout.json"),
        # The kernel settings the lesson changed for this boot, with their values before.
        "settings": os.path.join(run_dir, "settings-before.json"),
    }


def pidfiles_for(mode: str, run_dir: str = RUN_DIR) -> dict[str, str]:
    """The pidfile of each watched task: the victim, and in splice mode its pipe reader."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    files = run_files(run_dir)
    roles = (ROLE_VICTIM, ROLE_READER) if mode == "splice" else (ROLE_VICTIM,)
    return {role: files[role] for role in roles}


def parse_record(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The crash record and why it could not be read: (None, None) without one; ({}, why) for a broken one."""
    if text is None:
        return None, None
    try:
        record = json.loads(text)
    except ValueError as exc:
        return {}, f"not JSON ({exc})"
    if not isinstance(record, dict):
        return {}, "not a JSON object"
    return record, None


def _read_int(root: str, path: str) -> int | None:
    text = System(root=root).read_text(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def parse_taint_baseline(text: str | None) -> dict[str, Any] | None:
    """The recorded taint before the lab: {"boot_id", "tainted", "recorded_at"}; None when absent/broken."""
    record, error = parse_record(text)
    if record is None or error or not isinstance(record.get("tainted"), int):
        return None
    return record


def taint_baseline_entry(tainted: int, boot_id: str | None, module_loaded: bool, now: str) -> dict[str, Any]:
    """What to record as the taint before the lab. chardev's own bits (O, E) are left out when the module
    is already loaded (a student loaded it by hand first): they are the lab's, not the host's."""
    return {
        "boot_id": boot_id,
        "tainted": tainted & ~TAINT_LAB if module_loaded else tainted,
        "recorded_at": now,
    }


def crash_state(
    root: str = "/",
    run_dir: str = RUN_DIR,
    log_lines: Sequence[str] | None = None,
    baseline_path: str = TAINT_BASELINE_PATH,
) -> dict[str, Any]:
    """Everything the lab knows about a host's crash, from the record and from the kernel itself.

    log_lines: the kernel log (None: the recursive-fault line is not looked for). Read-only.
    Returns crashed, reasons, phase (see PHASES), record (+ record_error), the kernel's markers
    (tainted, taint_die, oops_count, recursive_fault, oops), module_loaded, the watched tasks that are
    still there (leftovers, identity-checked), the sysctls that would turn an oops into a panic, lockdown,
    boot_id, and the taint before the lab (taint_baseline, new_taint: the bits set since).
    """
    host = System(root=root)
    files = run_files(run_dir)
    record, record_error = parse_record(host.read_text(files["record"]))
    tainted = _read_int(root, "/proc/sys/kernel/tainted")
    oops_count = parse_oops_count(host.read_text("/sys/kernel/oops_count"))
    log = parse_kernel_log(list(log_lines or []))
    module_loaded = host.isdir("/sys/module/chardev")
    boot_id = (host.read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None
    baseline = parse_taint_baseline(host.read_text(baseline_path))

    reasons = []
    if record is not None:
        state = record.get("state", RECORD_CRASHED) if not record_error else "unreadable"
        reasons.append(f"crash record {files['record']} ({state})")
    if tainted is not None and tainted & TAINT_DIE:
        reasons.append("taint flag D (oops)")
    if oops_count:
        reasons.append(f"oops_count {oops_count}")
    if log.oops:
        reasons.append("oops in the kernel log")
    if log.recursive_fault:
        reasons.append("recursive fault in the kernel log")
    kernel_crashed = bool(
        (tainted is not None and tainted & TAINT_DIE) or oops_count or log.recursive_fault or log.oops
    )
    # A record that says "unloading" on an intact kernel is a run interrupted before the trigger; a
    # broken record counts as a crash (the safe side).
    crashed = kernel_crashed or (
        record is not None and (bool(record_error) or record.get("state", RECORD_CRASHED) != RECORD_UNLOADING)
    )

    leftovers = [
        task_to_dict(task)
        for task in gather_tasks(
            {role: host.path(files[role]) for role in (ROLE_VICTIM, ROLE_READER)},
            root,
            kill_test=False,
        )
        if task.state is not None
    ]
    victim_alive = any(
        task["role"] == ROLE_VICTIM and task["state"] not in ("D", "X", "Z") for task in leftovers
    )
    if crashed:
        complete = bool(record and not record_error and record.get("state", RECORD_CRASHED) == RECORD_CRASHED)
        phase = "done" if complete else "recover"
    elif victim_alive and not module_loaded:
        phase = "armed"
    elif victim_alive:
        phase = "leftover"
    else:
        phase = "fresh"

    new_taint = None
    if tainted is not None:
        new_taint = tainted & ~(baseline["tainted"] if baseline else 0)
    return {
        "crashed": crashed,
        "reasons": reasons,
        "phase": phase,
        "record": record,
        "record_error": record_error,
        "record_path": files["record"],
        "files": files,
        "tainted": tainted,
        "taint_die": bool(tainted is not None and tainted & TAINT_DIE),
        "oops_count": oops_count,
        "oops": log.oops,
        "recursive_fault": log.recursive_fault,
        "module_loaded": module_loaded,
        "leftovers": leftovers,
        "panic_on_oops": _read_int(root, "/proc/sys/kernel/panic_on_oops"),
        "oops_limit": _read_int(root, "/proc/sys/kernel/oops_limit"),
        "lockdown": (host.read_text("/sys/kernel/security/lockdown") or "").strip() or None,
        "boot_id": boot_id,
        "taint_baseline": baseline,
        "new_taint": new_taint,
    }
