# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recognise and judge a chardev crash that anyone made, by hand or by the lab.

The lab's own crash knows its victim from PID files. A student who follows the article has none: a
Python shell holds /dev/chardev open, ``rmmod chardev`` runs in another terminal, then ``f.read()``. This
code finds what happened from the kernel alone:

* the stuck tasks: every user task in D or X in /proc (kernel threads are never a victim);
* the oops: its task (``PID: N Comm: X``) ties it to a stuck task, the victim; a task in D waiting on
  the pipe's mutex (``pipe_read``) beside it is the reader of a splice, and makes the mode "splice";
* the expectation for the kernel and mode (chardev_outcomes.expected_outcome), compared as for the lab's
  own crash; the fault explained against the module's layout recorded while it was loaded;
* and, when there is no crash, what went wrong: the module is still loaded (the safe or classic variant
  refuses the unload while the file is open: the lesson's point, or the crash variant was never
  removed), the module is gone but the open file was never used, nothing held the file open when the
  module went, or the machine restarted since the lab got the crash variant ready (a panic).

Pure functions of what was read, so that the tests can give them any /proc and log; the module
chardev_crash_check reads the live system.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    parse_kernel_log,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_outcomes import (
    compare,
    diagnostics_markers,
    expected_outcome,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    PF_KTHREAD,
    ROLE_READER,
    ROLE_VICTIM,
    parse_cmdline,
    parse_stack,
    parse_wchan,
    proc_path,
    read_optional,
    read_optional_bytes,
    read_task_state,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    TAINT_DIE,
)

#: The verdicts, in the order a student meets them.
VERDICTS = ("crashed", "not_unloaded", "not_read", "nothing_held", "not_loaded", "rebooted")

#: Persistent (survives a reboot): the boot in which the lab last got the crash variant ready. A check
#: in another boot without a crash means the machine restarted in between: a panic, or a reset.


def scan_tasks(
    root: str = "/", device: str = "/dev/chardev"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(stuck, holders): the user tasks in D or X with wchan, stack and command line, and the processes
    that have ``device`` open (from their /proc/<pid>/fd links). Kernel threads (PF_KTHREAD) are left
    out: they are never the victim. (Not by an empty command line: a victim parked in do_exit() has
    released its memory, so its command line reads empty too.)"""
    try:
        names = os.listdir(os.path.join(root, "proc"))
    except OSError:
        return [], []
    stuck: list[dict[str, Any]] = []
    holders: list[dict[str, Any]] = []
    for pid in sorted(int(name) for name in names if name.isdigit()):
        stat = read_task_state(root, pid)
        if stat is None:
            continue
        cmdline = parse_cmdline(read_optional_bytes(proc_path(root, pid, "cmdline")) or b"")
        kernel_thread = stat.flags is not None and bool(stat.flags & PF_KTHREAD)
        if stat.state in ("D", "X") and not kernel_thread:
            stuck.append(
                {
                    "pid": pid,
                    "comm": stat.comm,
                    "state": stat.state,
                    "wchan": parse_wchan(read_optional(proc_path(root, pid, "wchan")) or ""),
                    "stack": parse_stack(read_optional(proc_path(root, pid, "stack")) or ""),
                    "cmdline": cmdline,
                }
            )
        fd_dir = proc_path(root, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target == device:
                holders.append({"pid": pid, "comm": stat.comm, "state": stat.state, "fd": int(fd)})
                break
    return stuck, holders


def _waits_on_pipe(task: Mapping[str, Any]) -> bool:
    """A task blocked in pipe_read (its wchan, or a frame of its kernel stack when wchan reads 0)."""
    places = [task.get("wchan") or "", *(task.get("stack") or [])]
    return any("pipe_read" in place for place in places)


def tie(stuck: Sequence[Mapping[str, Any]], oops_tasks: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """The victim (a stuck task that an oops happened in) and the reader (a D task waiting on a pipe),
    and the mode they make."""
    oops_pids = [pid for pid, _comm in oops_tasks]
    victim = next((task for pid in oops_pids for task in stuck if task["pid"] == pid), None)
    reader = next(
        (
            task
            for task in stuck
            if task["state"] == "D"
            and (victim is None or task["pid"] != victim["pid"])
            and _waits_on_pipe(task)
        ),
        None,
    )
    return {"victim": victim, "reader": reader, "mode": "splice" if reader is not None else "read"}


def judge(
    *,
    kernel_release: str,
    log_lines: Sequence[str],
    tainted: int | None,
    module_loaded: bool,
    variant: str | None,
    stuck: Sequence[Mapping[str, Any]],
    holders: Sequence[Mapping[str, Any]],
    diagnostics: Mapping[str, Any] | None = None,
    boot_id: str | None = None,
    lesson_boot_id: str | None = None,
) -> dict[str, Any]:
    """The verdict on the host: what happened, judged, in the student's words.

    Returns verdict (one of VERDICTS), as_expected (crashed only), mode, victim, reader, expected,
    observed, mismatches, summary (one sentence) and hint (what to do next).
    """
    log = parse_kernel_log(list(log_lines))
    crashed = log.oops or log.recursive_fault or bool(tainted is not None and tainted & TAINT_DIE)
    tied = tie(stuck, log.oops_tasks)
    result: dict[str, Any] = {
        "verdict": None,
        "as_expected": None,
        "mode": None,
        "victim": tied["victim"],
        "reader": tied["reader"],
        "stuck": list(stuck),
        "holders": list(holders),
        "oops_tasks": [{"pid": pid, "comm": comm} for pid, comm in log.oops_tasks],
        "expected": None,
        "observed": None,
        "mismatches": [],
        "summary": "",
        "hint": "",
    }
    if crashed:
        mode = tied["mode"]
        expected = expected_outcome(kernel_release, mode, diagnostics=diagnostics is not None)
        tasks: dict[str, Any] = {}
        for role, task in ((ROLE_VICTIM, tied["victim"]), (ROLE_READER, tied["reader"])):
            if role not in expected["tasks"]:
                continue
            tasks[role] = (
                {"pid": None, "error": "no stuck task that an oops happened in"}
                if task is None
                else {
                    "pid": task["pid"],
                    "state": task["state"],
                    "wchan": task.get("wchan"),
                    "stack": task.get("stack") or [],
                    "killed_but_alive": None,
                }
            )
        victim_pid = tied["victim"]["pid"] if tied["victim"] else None
        observed = {
            "tasks": tasks,
            "oops": log.oops,
            "oops_of_victim": victim_pid is not None and victim_pid in {pid for pid, _comm in log.oops_tasks},
            "recursive_fault": log.recursive_fault,
            "last_unloaded_chardev": log.last_unloaded_chardev,
            "taint_die": bool(tainted is not None and tainted & TAINT_DIE),
        }
        if diagnostics is not None:
            observed.update(diagnostics_markers(diagnostics))
        mismatches = compare(expected, observed)
        who = (
            f"pid {victim_pid} ({tied['victim']['comm']}, state {tied['victim']['state']})"
            if tied["victim"]
            else "a task that is no longer in /proc"
        )
        result.update(
            verdict="crashed",
            as_expected=not mismatches,
            mode=mode,
            expected=expected,
            observed=observed,
            mismatches=mismatches,
            summary=(
                f"{mode} mode: the oops happened in {who}"
                + (f"; the pipe reader pid {tied['reader']['pid']} waits in D" if tied["reader"] else "")
                + (
                    "; as the kernel predicts"
                    if not mismatches
                    else "; NOT as expected: " + "; ".join(mismatches)
                )
            ),
            hint="reset the machine to try again: ansible-playbook playbooks/reset.yml --limit <host>",
        )
        return result

    holder_text = ", ".join(f"pid {h['pid']} ({h['comm']})" for h in holders)
    if lesson_boot_id and boot_id and lesson_boot_id != boot_id and not module_loaded:
        result.update(
            verdict="rebooted",
            summary=(
                "no crash in this boot, and the machine restarted since the lab got the crash variant ready: "
                "a kernel panic (kernel.panic_on_oops=1 turns the oops into one) or a reset; the evidence of "
                "that boot is gone"
            ),
            hint="check sysctl kernel.panic_on_oops (0 for the lesson), then run the lab again",
        )
    elif module_loaded and variant in ("safe", "classic"):
        result.update(
            verdict="not_unloaded",
            summary=(
                f"no crash: chardev is still loaded, the {variant} variant, which pins itself while its file "
                'is open, so rmmod was refused ("Module chardev is in use"): that refusal is what the '
                f"{'.owner field' if variant == 'safe' else 'try_module_get() call'} is for"
            ),
            hint=(
                'load the crash variant to see the crash: make lab ARGS="--skip-tags crash -e '
                'chardev_variant=crash"'
                + (f" (first close the file held by {holder_text})" if holders else "")
            ),
        )
    elif module_loaded:
        result.update(
            verdict="not_unloaded",
            summary=(
                f"no crash yet: the {variant or 'unknown'} variant is still loaded"
                + (
                    f" and {holder_text} holds /dev/chardev open"
                    if holders
                    else " and no process holds /dev/chardev open"
                )
            ),
            hint=(
                "run rmmod chardev in another terminal while your Python shell holds the file open"
                if holders
                else "open the device in a Python shell first (f = open('/dev/chardev')), then rmmod chardev"
            ),
        )
    elif holders:
        result.update(
            verdict="not_read",
            summary=(
                f"no crash yet: chardev was unloaded while {holder_text} holds /dev/chardev open, but "
                "nothing has used the open file since, so the kernel has not touched the freed module yet"
            ),
            hint="read from the open file (f.read() in the Python shell) and run check.yml again",
        )
    elif log.last_unloaded_chardev or (lesson_boot_id is not None and lesson_boot_id == boot_id):
        result.update(
            verdict="nothing_held",
            summary=(
                "no crash: chardev is not loaded and no process holds /dev/chardev open; the file was "
                "closed before the rmmod (or never opened), so there was nothing left to fault on"
            ),
            hint="load the crash variant again, open the device in a Python shell, then rmmod, then read",
        )
    else:
        result.update(
            verdict="not_loaded",
            summary="no crash: chardev is not loaded in this boot and nothing says it was",
            hint='get the crash variant ready: make lab ARGS="--skip-tags crash -e chardev_variant=crash"',
        )
    return result
