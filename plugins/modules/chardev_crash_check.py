#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: recognise and judge a chardev crash, whoever made it (a student by hand, or the lab)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_crash_check
short_description: Recognise and judge a chardev crash, whoever made it
description:
  - Finds the crash from the kernel alone, without the lab's PID files, so that it recognises a crash a
    student made by hand as the article does (a Python shell holding C(/dev/chardev) open, C(rmmod
    chardev), then a read). It finds every user task in C(D) or C(X), ties the oops (its C(PID:)) to one
    of them (the victim) and a task in C(D) waiting on a pipe to a splice (the reader), and judges them
    against the expected outcome for the running kernel as the lab's own crash is judged.
  - Explains the fault from the kernel's evidence, against the module's layout recorded while it was
    loaded (C(layout.json), written by the chardev role when it loads the crash variant) and the kernel's
    BTF.
  - Gathers the kernel's own diagnostics of the tasks in C(D) (hung-task reports, SysRq C(w)).
  - Without a crash, says what went wrong (RV(verdict)) and what to do next (RV(hint)).
  - Writes its verdict to C(check.json) in the run directory (the status page reads it) and, for a crash
    that has no complete record of this boot yet, the crash record (so that the lab knows the host
    crashed; it names this boot and counts for it only). A file it cannot write (a full filesystem, a
    path that may not be written) fails the task with a message that names the file, the error and what
    to do, and tells the verdict.
  - Never signals a process.
author:
  - chardev-lab contributors (@chardev-lab)
options:
  run_dir:
    description: The crash role's run directory on the target.
    type: path
    default: /run/chardev-lab
  device:
    description: The device node a holder has open.
    type: path
    default: /dev/chardev
  hung_task_wait:
    description:
      - Seconds to wait for the hung-task detector to report the tasks in C(D) that it has not reported
        yet (0 takes what the log holds now).
    type: float
    default: 30
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: partial
    details:
      - Nothing is written (neither C(check.json) nor a crash record), SysRq C(w) is not asked and no
        hung-task report is waited for, so the verdict is given without the kernel's own diagnostics.
      - It reports C(changed=false) even where a real run would record a crash made by hand.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Run it as root (the kernel log, C(/proc/<pid>/stack), C(/proc/sysrq-trigger)).
"""

EXAMPLES = r"""
- name: Judge what the student did
  chardev_lab.lab.chardev_crash_check:
  register: check

- name: Say it
  ansible.builtin.debug:
    msg: "{{ check.verdict }}: {{ check.summary }}"
"""

RETURN = r"""
verdict:
  description:
    - V(crashed) (an oops; RV(as_expected) says whether as the kernel predicts), V(not_unloaded) (the
      module is still loaded; the safe and classic variants refuse the unload while the file is open),
      V(not_read) (unloaded under an open file that was not used since), V(nothing_held) (unloaded with no
      file open), V(not_loaded), or V(rebooted) (the machine restarted since the lab got the crash variant
      ready, a panic or a reset).
  returned: always
  type: str
  sample: crashed
as_expected:
  description: For V(crashed), whether the crash matches the expected outcome; null otherwise.
  returned: always
  type: bool
  sample: true
summary:
  description: One sentence for the student.
  returned: always
  type: str
  sample: "read mode: the oops happened in pid 1633 (python3, state X); as the kernel predicts"
hint:
  description: What to do next.
  returned: always
  type: str
  sample: "read from the open file (f.read() in the Python shell) and run check.yml again"
explanation:
  description:
    - The primary fault explained (see M(chardev_lab.lab.chardev_crash_evidence)'s C(faults)); null
      without a fault.
  returned: always
  type: dict
  sample:
    symbol: chardev_fops
    offset: 16
    member: read
    text: "the kernel read chardev_fops+0x10, the .read pointer of the module's struct file_operations, ..."
faults:
  description: Every oops of the boot, parsed and explained.
  returned: always
  type: list
  elements: dict
  sample: []
"""

import os
import time
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_check import (
    judge,
    scan_tasks,
    tie,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_fault import explain_log
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    kernel_diagnostics,
    parse_kernel_log,
    read_kernel_log_lines,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    read_optional,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_record import (
    RECORD_CRASHED,
    crash_state,
    read_json,
    run_files,
    utc_now,
    write_json,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    decode_taint,
    taint_letters,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import LESSON_MARKER_PATH, RUN_DIR
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import ModuleFailure, System

KMSG_PATH = "/dev/kmsg"
CLOCK: Callable[[], float] = time.monotonic
SLEEP: Callable[[float], None] = time.sleep
CHECK_NAME = "check.json"
#: What a crash record made by the check holds (the lab's own record holds the same and its evidence).
RECORD_KEYS = (
    "mode", "kernel_release", "expected", "observed", "mismatches", "as_expected", "tainted", "taint_flags",
    "oops_count", "oops_tasks", "hung_task", "sysrq_w", "faults", "explanation",
)  # fmt: skip


def kernel_log() -> list[str]:
    return read_kernel_log_lines(KMSG_PATH)[0]


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    files = run_files(params["run_dir"])
    release = (read_optional(system.path("/proc/sys/kernel/osrelease")) or os.uname().release).strip()
    lines = kernel_log()
    state = crash_state(system.root, params["run_dir"], lines)
    stuck, holders = scan_tasks(system.root, params["device"])
    version = read_optional(system.path("/sys/module/chardev/version")) if state["module_loaded"] else None
    variant = version.strip().rpartition("-")[2] if version else None
    # Only the tasks the crash made (the victim, the pipe reader) are the kernel's to report.
    tied = tie(stuck, parse_kernel_log(lines).oops_tasks)
    watched = [(role, tied[role]) for role in ("victim", "reader") if tied[role] is not None]
    diagnostics = None
    if state["crashed"] and not check_mode:
        diagnostics = kernel_diagnostics(
            [{"role": role, "pid": task["pid"], "state": task["state"]} for role, task in watched],
            kernel_log,
            root=system.root,
            wait=float(params["hung_task_wait"]),
            clock=CLOCK,
            sleep=SLEEP,
        )
        lines = kernel_log()
    lesson = read_json(system.path(LESSON_MARKER_PATH)) or {}
    verdict = judge(
        kernel_release=release,
        log_lines=lines,
        tainted=state["tainted"],
        module_loaded=state["module_loaded"],
        variant=variant,
        stuck=stuck,
        holders=holders,
        diagnostics=diagnostics,
        boot_id=state["boot_id"],
        lesson_boot_id=lesson.get("boot_id") if isinstance(lesson, dict) else None,
    )
    explained = explain_log(lines, read_json(system.path(files["layout"])), boot_id=state["boot_id"])
    result = {
        **verdict,
        "kernel_release": release,
        "variant": variant,
        "crash_reasons": state["reasons"],
        "tainted": state["tainted"],
        "taint_flags": taint_letters(state["tainted"]) if state["tainted"] is not None else "",
        "taint_decoded": decode_taint(state["tainted"]) if state["tainted"] is not None else [],
        "oops_count": state["oops_count"],
        "hung_task": (diagnostics or {}).get("hung_task"),
        "sysrq_w": (diagnostics or {}).get("sysrq_w"),
        "faults": explained["faults"],
        "explanation": explained["primary"],
        "checked_at": utc_now(),
    }
    result["msg"] = f"{verdict['verdict']}: {verdict['summary']}"
    result["changed"] = False
    if not check_mode:
        try:
            result["changed"] = write_results(result, verdict, state, params["run_dir"], system)
        except ModuleFailure as exc:
            # The verdict is still told (and kept on the control node by check.yml's failure output).
            raise ModuleFailure(
                f"{exc.msg}. The verdict, not kept on the host: {result['msg']}",
                **{key: result[key] for key in ("verdict", "as_expected", "summary", "hint")},
            ) from exc
    return result


def write_results(
    result: dict[str, Any], verdict: dict[str, Any], state: dict[str, Any], run_dir: str, system: System
) -> bool:
    """check.json, and the crash record when the crash has no complete one: whether a record was written.
    A file that cannot be written (a full /run, a path root may not write) raises ModuleFailure."""
    files = run_files(run_dir)
    record = state["record"] if isinstance(state["record"], dict) else None
    write_json(system.path(os.path.join(run_dir, CHECK_NAME)), {
        key: result[key] for key in ("verdict", "as_expected", "summary", "hint", "checked_at", "mode")
    } | {"explanation": (result["explanation"] or {}).get("text")}, "the check's verdict")  # fmt: skip
    if verdict["verdict"] != "crashed" or (record and record.get("state") == RECORD_CRASHED):
        return False
    # No complete record: a crash made by hand (or a lab run cut short). Record it, so that the lab, the
    # status page and reset.yml know this host crashed and why; it counts for this boot only.
    write_json(system.path(files["record"]), {
        **{key: result[key] for key in RECORD_KEYS},
        "state": RECORD_CRASHED,
        "by": "hand",
        "crashed_at": result["checked_at"],
        "boot_id": state["boot_id"],
        "tasks": [{**verdict[role], "role": role} for role in ("victim", "reader") if verdict[role]],
        "msg": verdict["summary"],
    }, "the crash record")  # fmt: skip
    return True


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "run_dir": {"type": "path", "default": RUN_DIR},
            "device": {"type": "path", "default": "/dev/chardev"},
            "hung_task_wait": {"type": "float", "default": 30},
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
    module.exit_json(**result)


if __name__ == "__main__":
    main()
