#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read and keep the crash state of a lab host (the record, the kernel's own markers)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_crash_state
short_description: Read and keep the crash state of a chardev lab host
description:
  - The one place that reads and writes the crash role's state on a target; the status probe reads it
    through the same module_utils code.
  - O(operation=read) tells whether the host crashed, from the role's record (C(crashed.json) in the run
    directory) and, whatever the record says, from the kernel's own markers (taint flag C(D),
    C(/sys/kernel/oops_count), an oops or C(Fixing recursive fault) in the kernel log since boot), and in
    which phase an earlier run left it (RV(phase)). With O(record_taint_baseline) it also records the
    kernel's taint before the lab, once per boot.
  - A record counts for the boot it names only (its C(boot_id)); one of another boot is ignored
    (RV(stale_record)), and so is one without a boot id in a run directory that is not a tmpfs, so that a
    run directory that survives a reboot never marks the host crashed for ever.
  - O(operation=stop_leftover) stops the victim of an interrupted run that still holds the device open
    while the very load of chardev it opened is still in the kernel (SIGTERM, then SIGKILL); only tasks
    whose pid and start time match their PID file are signalled, never on a kernel that crashed, and
    never an armed victim (its module removed, even if chardev was loaded again since; closing its file
    would run the freed module's code and crash the kernel).
  - O(operation=prepare) gets a loaded crash variant ready for the lesson. It records where the module
    lives (C(/sys/module/chardev/sections) and its C(/proc/kallsyms) lines, in C(layout.json) in the run
    directory; the oops's address is explained against it after the unload), and lowers
    C(kernel.hung_task_timeout_secs) to O(hung_task_timeout) for this boot, keeping the value before in
    C(settings-before.json) (a reset, rewind or reboot, brings the kernel's own value back). It changes
    nothing when both are already so.
  - O(operation=mark) writes the record with state C(unloading) before the module is removed, so that a
    run interrupted anywhere after it is known. It names this boot (C(boot_id)) and the load of chardev
    the victim holds open (C(module), the inode of C(/sys/module/chardev), which each load gets anew, and
    the address of its C(.text) section). O(operation=record) completes it with the evidence.
author:
  - chardev-lab contributors (@chardev-lab)
options:
  operation:
    description: What to do; see the description.
    type: str
    choices: [read, stop_leftover, prepare, mark, record]
    default: read
  run_dir:
    description: The crash role's run directory on the target (tmpfs, cleared by a reboot).
    type: path
    default: /run/chardev-lab
  mode:
    description: The victim mode, for O(operation=mark) and O(operation=record).
    type: str
    choices: [read, splice]
  evidence:
    description: The result of M(chardev_lab.lab.chardev_crash_evidence), for O(operation=record).
    type: dict
  hung_task_timeout:
    description:
      - With O(operation=prepare), the value for C(kernel.hung_task_timeout_secs), so that the kernel
        itself reports the stuck tasks soon (C(blocked for more than N seconds)); 0 leaves it alone.
      - Not lowered when C(kernel.hung_task_panic) is 1 (the report would panic the kernel).
    type: int
    default: 10
  record_taint_baseline:
    description:
      - With O(operation=read), record the kernel's taint before the lab in
        C(/var/lib/chardev-lab/taint-before-lab.json) when it holds none for this boot (the reset of a
        real host compares against it, so that a host tainted before the lab, by a proprietary driver for
        example, is not taken for a crashed one).
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Every operation reports whether it would write a file or signal a task, and does neither.
        RV(stopped) lists the pids O(operation=stop_leftover) would signal; O(operation=mark) and
        O(operation=record) return the record they would write.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Run it as root; reading C(/dev/kmsg) and signalling a leftover victim need it.
"""

EXAMPLES = r"""
- name: Read the crash state
  chardev_lab.lab.chardev_crash_state:
  register: __crash_state

- name: Mark the crash before the rmmod
  chardev_lab.lab.chardev_crash_state:
    operation: mark
    mode: read
"""

RETURN = r"""
crashed:
  description: Whether the host crashed since its last boot, by the record or by the kernel's markers.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: bool
  sample: true
reasons:
  description: The markers that make RV(crashed) true.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: list
  elements: str
  sample: ["crash record /run/chardev-lab/crashed.json (crashed)", "taint flag D (oops)", "oops_count 2"]
phase:
  description:
    - V(fresh) nothing of a crash; V(leftover) a victim of an interrupted run holds the device, and the
      load of chardev it opened is still in the kernel (the one the mark names, or before the mark the one
      whose layout was recorded in this boot); V(armed) a live victim whose load of chardev was removed,
      or is not known to be there (the kernel is intact; the next use of the file, or its close, crashes
      it, so it is never signalled); V(recover) the kernel crashed but the record is not complete; V(done)
      the record is complete.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: str
  sample: done
record:
  description: The crash record (with O(operation=mark) or O(operation=record), the one written);
    null without one.
  returned: always
  type: dict
  sample: {state: crashed, mode: read, marked_at: "2026-11-26T09:12:01+00:00", as_expected: true}
stale_record:
  description:
    - A crash record that is not of this boot (RV(record_stale) says why), ignored; null otherwise.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: dict
  sample: {state: crashed, mode: read, boot_id: 7d0f3a1e-2b4c-4e5d-8f60-718293a4b5c6}
record_stale:
  description: Why RV(stale_record) is not of this boot; null when the record counts.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: str
  sample: "written in another boot (7d0f3a1e-2b4c-4e5d-8f60-718293a4b5c6; this boot is 0b7c6c3e-...)"
run_dir_volatile:
  description: Whether O(run_dir) is on a tmpfs (a reboot clears it), from C(/proc/self/mountinfo); null
    when that cannot be told.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: bool
  sample: true
module_instance:
  description:
    - The load of chardev in the kernel now (C(sysfs_ino) of C(/sys/module/chardev), C(text) the address
      of its C(.text) section), null when it is not loaded.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: dict
  sample: {sysfs_ino: 31337, text: "0xffffffffc0a63000"}
victim_module:
  description:
    - The load of chardev the victim opened, as the mark (or before it the layout) recorded it; null when
      none tells. The victim is signalled only while it equals RV(module_instance).
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: dict
  sample: {sysfs_ino: 31337, text: "0xffffffffc0a63000"}
files:
  description:
    - The role's files in O(run_dir) by name (record, victim, reader, ready, trigger, log, program,
      layout, settings).
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: dict
  sample: {record: /run/chardev-lab/crashed.json, victim: /run/chardev-lab/victim.pid}
leftovers:
  description: The watched tasks (victim, pipe reader) still in C(/proc), identity-checked.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: list
  elements: dict
  sample: [{role: victim, pid: 812, state: S, comm: chardev-victim, identity: starttime}]
tainted:
  description: The value of C(/proc/sys/kernel/tainted).
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: int
  sample: 12416
new_taint:
  description: The taint bits set since the recorded taint before the lab (all of them without a record).
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: int
  sample: 12416
taint_baseline:
  description: The recorded taint before the lab, null without one.
  returned: when O(operation) is V(read) or V(stop_leftover)
  type: dict
  sample: {boot_id: 0b7c6c3e-1f0e-4d43-9a0e-5b2b1c7e8f90, tainted: 0, recorded_at: "2026-11-26T09:10:00Z"}
stopped:
  description: The pids O(operation=stop_leftover) signalled.
  returned: when O(operation=stop_leftover)
  type: list
  elements: int
  sample: [812]
layout:
  description:
    - With O(operation=prepare), where the module lives, as recorded in C(layout.json), with its sections and
      its C(/proc/kallsyms) symbols (addresses as hex text), the boot id and the kernel release.
  returned: when O(operation=prepare)
  type: dict
  sample:
    module: chardev
    boot_id: 0b7c6c3e-1f0e-4d43-9a0e-5b2b1c7e8f90
    kernel: 6.1.0-56-amd64
    sections: {.rodata: "0xffffffffc0a65160", .text: "0xffffffffc0a63000"}
    symbols: [{name: chardev_fops, type: r, address: "0xffffffffc0a651a0"}]
    readable: true
    reason: null
hung_task_timeout:
  description: With O(operation=prepare), the hung-task timeout before and now, and why if not lowered.
  returned: when O(operation=prepare)
  type: dict
  sample: {before: 120, now: 10, lowered: true, why: null}
"""

import contextlib
import json
import os
import signal
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_fault import capture_layout
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    HUNG_TASK_PANIC_FILE,
    HUNG_TASK_TIMEOUT_FILE,
    read_kernel_log_lines,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    ROLE_READER,
    ROLE_VICTIM,
    gather_tasks,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_record import (
    RECORD_CRASHED,
    RECORD_UNLOADING,
    crash_state,
    module_instance,
    pidfiles_for,
    read_boot_id,
    read_json,
    run_files,
    same_instance,
    taint_baseline_entry,
    utc_now,
    write_json,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    LESSON_MARKER_PATH,
    RUN_DIR,
    TAINT_BASELINE_PATH,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import ModuleFailure, System

KMSG_PATH = "/dev/kmsg"
STOP_WAIT = 5.0


def read_state(params: dict[str, Any], system: System) -> dict[str, Any]:
    lines, _source = read_kernel_log_lines(system.path(KMSG_PATH))
    return crash_state(system.root, params["run_dir"], lines, TAINT_BASELINE_PATH)


def record_baseline(state: dict[str, Any], check_mode: bool, system: System) -> bool:
    """Record the taint before the lab for this boot, unless already recorded or the host crashed."""
    baseline = state["taint_baseline"]
    if state["tainted"] is None or state["crashed"]:
        return False
    if baseline is not None and baseline.get("boot_id") == state["boot_id"]:
        return False
    if not check_mode:
        entry = taint_baseline_entry(state["tainted"], state["boot_id"], state["module_loaded"], utc_now())
        write_json(system.path(TAINT_BASELINE_PATH), entry, "the taint before the lab")
        state["taint_baseline"] = entry
        state["new_taint"] = state["tainted"] & ~entry["tainted"]
    return True


def live_leftovers(run_dir: str, system: System) -> list[int]:
    """The pids of the victim and reader that are still alive and still who their PID files say."""
    pidfiles = {role: system.path(run_files(run_dir)[role]) for role in (ROLE_VICTIM, ROLE_READER)}
    return [
        task.pid
        for task in gather_tasks(pidfiles, system.root, kill_test=False)
        if task.pid is not None and task.state is not None and task.state not in ("D", "X", "Z")
    ]


def stop_leftover(state: dict[str, Any], run_dir: str, check_mode: bool, system: System) -> list[int]:
    """SIGTERM, then SIGKILL, to the leftovers of an interrupted run, whose load of chardev is still in
    the kernel (phase leftover; never an armed victim: its file's code is freed, and the close that the
    signal causes would run it). Before each signal the tasks are identified again (pid and start time),
    so a pid reused meanwhile is never signalled, and so is the load of chardev, so a victim whose module
    was removed meanwhile is not either."""
    if state["phase"] != "leftover":
        return []
    stopped = live_leftovers(run_dir, system)
    if check_mode:
        return stopped
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = live_leftovers(run_dir, system)
        if not alive or not same_instance(state["victim_module"], module_instance(system.root)):
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline and live_leftovers(run_dir, system):
            time.sleep(0.1)
    return stopped


def read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def prepare(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """Record the loaded module's layout and lower the hung-task timeout for the lesson (idempotent)."""
    files = run_files(params["run_dir"])
    changed = False
    layout = capture_layout(system.root)
    if not layout["readable"]:
        raise ValueError(
            f"cannot record where chardev lives: {layout['reason']} (run as root, module loaded)"
        )
    if read_json(system.path(files["layout"])) != layout:
        changed = True
        if not check_mode:
            write_json(system.path(files["layout"]), layout, "the module's layout")

    # Persistent, unlike the run directory: a check in a later boot then knows the machine restarted
    # since the crash variant was ready (a panic, or a reset).
    marker = read_json(system.path(LESSON_MARKER_PATH))
    if not (isinstance(marker, dict) and marker.get("boot_id") == layout["boot_id"]):
        changed = True
        if not check_mode:
            write_json(
                system.path(LESSON_MARKER_PATH),
                {"boot_id": layout["boot_id"], "prepared_at": utc_now()},
                "the lesson marker",
            )

    wanted = int(params.get("hung_task_timeout") or 0)
    timeout_path = system.path("/" + HUNG_TASK_TIMEOUT_FILE)
    before = read_int(timeout_path)
    hung = {"before": before, "now": before, "lowered": False, "why": None}
    saved = read_json(system.path(files["settings"]))
    if isinstance(saved, dict) and saved.get("boot_id") == layout["boot_id"]:
        hung["before"] = saved.get("hung_task_timeout_secs")
    if wanted <= 0:
        hung["why"] = "left alone (hung_task_timeout 0)"
    elif before is None:
        hung["why"] = f"{HUNG_TASK_TIMEOUT_FILE} is missing: this kernel has no hung-task detector"
    elif read_int(system.path("/" + HUNG_TASK_PANIC_FILE)) == 1:
        hung["why"] = (
            "kernel.hung_task_panic is 1: a hung-task report would panic the kernel, so it is left alone"
        )
    elif before != wanted:
        changed = True
        hung.update(now=wanted, lowered=True)
        if not check_mode:
            if not (isinstance(saved, dict) and saved.get("boot_id") == layout["boot_id"]):
                write_json(
                    system.path(files["settings"]),
                    {"boot_id": layout["boot_id"], "hung_task_timeout_secs": before, "saved_at": utc_now()},
                    "the kernel settings before the lesson",
                )
            with open(timeout_path, "w", encoding="ascii") as handle:
                handle.write(f"{wanted}\n")
    else:
        hung["lowered"] = hung["before"] != wanted
    return {"changed": changed, "layout": layout, "hung_task_timeout": hung}


def mark(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    pidfiles = {
        role: system.path(path) for role, path in pidfiles_for(params["mode"], params["run_dir"]).items()
    }
    tasks = gather_tasks(pidfiles, system.root, kill_test=False)
    record = {
        "state": RECORD_UNLOADING,
        "mode": params["mode"],
        "marked_at": utc_now(),
        "kernel_release": os.uname().release,
        # The record counts for this boot only, and the load of chardev the victim holds open is the one
        # in the kernel now, before the rmmod: while it is loaded the victim may be stopped, once it is
        # gone (even with chardev loaded again) never.
        "boot_id": read_boot_id(system),
        "module": module_instance(system.root),
        "watched": {
            task.role: {"pid": task.pid, "comm": task.comm, "identity": task.identity} for task in tasks
        },
    }
    if not check_mode:
        write_json(system.path(run_files(params["run_dir"])["record"]), record, "the crash record")
    return record


def record(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    path = system.path(run_files(params["run_dir"])["record"])
    try:
        with open(path, encoding="utf-8") as handle:
            marked = json.load(handle)
    except (OSError, ValueError):
        marked = {}
    evidence = {
        key: value
        for key, value in (params["evidence"] or {}).items()
        if key not in ("changed", "failed", "invocation", "_ansible_no_log")
    }
    full = {
        **evidence,
        "state": RECORD_CRASHED,
        "mode": params["mode"],
        "crashed_at": utc_now(),
        "boot_id": read_boot_id(system),
    }
    if isinstance(marked, dict) and marked.get("marked_at"):
        full["marked_at"] = marked["marked_at"]
    if not check_mode:
        write_json(path, full, "the crash record")
    return full


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    operation = params["operation"]
    if operation in ("mark", "record") and not params.get("mode"):
        raise ValueError(f"operation={operation} needs mode")
    if operation == "record" and not params.get("evidence"):
        raise ValueError("operation=record needs evidence (the result of chardev_crash_evidence)")
    if operation == "prepare":
        return prepare(params, check_mode, system)
    if operation == "mark":
        return {"changed": True, "record": mark(params, check_mode, system)}
    if operation == "record":
        return {"changed": True, "record": record(params, check_mode, system)}
    state = read_state(params, system)
    changed = False
    if operation == "stop_leftover":
        stopped = stop_leftover(state, params["run_dir"], check_mode, system)
        changed = bool(stopped)
        if stopped and not check_mode:
            state = read_state(params, system)
        state["stopped"] = stopped
    elif params["record_taint_baseline"]:
        changed = record_baseline(state, check_mode, system)
    return {"changed": changed, **state}


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "operation": {
                "type": "str",
                "choices": ["read", "stop_leftover", "prepare", "mark", "record"],
                "default": "read",
            },
            "run_dir": {"type": "path", "default": RUN_DIR},
            "mode": {"type": "str", "choices": ["read", "splice"]},
            "evidence": {"type": "dict"},
            "record_taint_baseline": {"type": "bool", "default": False},
            "hung_task_timeout": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )


def main(system: System | None = None) -> None:
    module = make_module()
    try:
        result = run(module.params, module.check_mode, System(module) if system is None else system)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    except ModuleFailure as exc:
        module.fail_json(msg=exc.msg, **exc.fields)
    except OSError as exc:
        module.fail_json(
            msg=f"cannot {module.params['operation']} the crash state: {exc.strerror}: {exc.filename} "
            "(is the play run as root, and is the file system writable?)"
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
