# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the chardev unload-while-open crash should leave, per kernel and mode: the one table of expected
outcomes (expected_outcome), the observation built from the evidence (observed_from, diagnostics_markers)
and their comparison (compare).

Runs on the managed node (Python 3.9 and later): stdlib only, no ``match``, ``X | None`` only inside
annotations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    LAST_UNLOADED_MARKER,
    RECURSIVE_FAULT_MARKER,
    KernelLogEvidence,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    MODES,
    ROLE_READER,
    ROLE_VICTIM,
    TaskEvidence,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    TAINT_DIE,
)

# Source: /work/shared/design/kernel-facts.md, "The crash, measured" (Debian kernels under QEMU):
#
#   kernel   | read(): victim | splice into a pipe: victim / pipe reader
#   5.10     | D              | D / D (wchan 0: the stack shows pipe_read)
#   6.1      | X              | X / D in pipe_read
#   6.12     | X              | X / D in pipe_read
#
# Every cell is measured: the crash scenario (molecule/crash) checks all six on real VMs in CI.
#
# Why the victim ends in D or X. After `rmmod` of the crash variant (no .owner, no try_module_get), the
# open file's f_op still points into the freed module. The victim's next system call on the file reads
# f_op and page-faults: the first oops, and the kernel kills the task. While exiting, exit_files() ->
# filp_close() reads f_op again (->flush) and faults a second time while PF_EXITING is already set: the
# kernel prints "Fixing recursive fault but reboot is needed!" and gives up on the task for good.
#   * Up to 5.16 that code (in do_exit) sets TASK_UNINTERRUPTIBLE and schedules away for ever: state D,
#     the state the 2016 seed article shows.
#   * From 5.17, make_task_dead() handles the recursive fault instead; it marks the task EXIT_DEAD and
#     calls do_task_dead(): state X, still listed in /proc, never reaped by its parent.
#   Either way SIGKILL cannot help: the task never returns to a point where signals are handled.
#
# Why the pipe reader ends in D (splice mode, every version). splice(device -> pipe) takes the pipe's
# mutex before it calls into the device's f_op, faults there and never unlocks: the mutex stays held by a
# task that will never run again. The next task that touches the pipe (pipe_read takes the same mutex,
# even with O_NONBLOCK) sleeps in mutex_lock, an uninterruptible sleep, for ever: a true D process on
# modern kernels too. /proc/<pid>/wchan skips the scheduler and locking functions, so it names pipe_read;
# we also accept a mutex/lock function in case a kernel reports that instead. Before 5.16, x86's
# get_wchan() walks frame pointers, which Debian's ORC-unwinder kernels do not keep: on 5.10 wchan reads
# "0" for every sleeping task (measured: the D reader of the splice crash). The kernel stack in
# /proc/<pid>/stack (root only, unwound with ORC) still shows where the task waits, so the patterns are
# matched against it when wchan is empty.
#
# The kernel log holds, on every version: the oops headline, "Fixing recursive fault but reboot is
# needed!", "[last unloaded: chardev" in the "Modules linked in:" line, and the taint flag D (128).

#: Release from which make_task_dead() marks a recursively faulting task EXIT_DEAD (state X).
EXIT_DEAD_SINCE = (5, 17)

#: wchan of a pipe reader stuck behind the pipe mutex (substring match, lower case).
READER_WCHAN_PATTERNS = ("pipe_read", "mutex", "lock")

_RELEASE_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def parse_kernel_release(release: str) -> tuple[int, int, int]:
    """Return (major, minor, patch) of a release such as "5.10.0-35-amd64" or "6.12.57+deb13-amd64".

    Raises ValueError when the release does not start with "MAJOR.MINOR".
    """
    match = _RELEASE_RE.match(release or "")
    if match is None:
        raise ValueError(f"cannot parse kernel release {release!r}: expected it to start with MAJOR.MINOR")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def expected_outcome(kernel_release: str, mode: str, diagnostics: bool = False) -> dict[str, Any]:
    """The expected result of the crash for this kernel and victim mode, as a JSON-friendly dict.

    With diagnostics, the kernel's own reports of the tasks in D (hung-task detector, SysRq w) are
    expected too (kernel_diagnostics() gathers them).

    Keys: kernel_release, kernel_version [major, minor, patch], mode, tasks (role -> expectation with
    state, wchan_patterns, unkillable, why), markers (kernel-log/taint marker -> True).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    version = parse_kernel_release(kernel_release)
    if version[:2] >= EXIT_DEAD_SINCE:
        victim_state = "X"
        victim_why = (
            "from 5.17 make_task_dead() marks a task that faults again while exiting EXIT_DEAD: "
            "state X, never reaped"
        )
    else:
        victim_state = "D"
        victim_why = (
            "before 5.17 do_exit() parks a task that faults again while exiting in "
            "TASK_UNINTERRUPTIBLE: state D for ever"
        )
    tasks: dict[str, dict[str, Any]] = {
        ROLE_VICTIM: {"state": victim_state, "wchan_patterns": [], "unkillable": True, "why": victim_why},
    }
    if mode == "splice":
        tasks[ROLE_READER] = {
            "state": "D",
            "wchan_patterns": list(READER_WCHAN_PATTERNS),
            "unkillable": True,
            "why": (
                "the victim faulted inside splice() holding the pipe mutex; pipe_read() waits for that "
                "mutex uninterruptibly for ever"
            ),
        }
    return {
        "kernel_release": kernel_release,
        "kernel_version": list(version),
        "mode": mode,
        "tasks": tasks,
        "markers": {
            "oops": True,
            "oops_of_victim": True,
            "recursive_fault": True,
            "last_unloaded_chardev": True,
            "taint_die": True,
            # The kernel's own diagnostics of the tasks in D (victim before 5.17, pipe reader always):
            # kernel_diagnostics() notes the X tasks as not applicable.
            # SysRq w shows them; the hung-task detector does not: an oops silences it for good.
            **({"sysrq_w_blocked": True, "hung_task_silent": True} if diagnostics else {}),
        },
    }


def compare(expected: Mapping[str, Any], observed: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between expected_outcome() and an observation; empty means as expected.

    observed: {"tasks": {role: {"pid", "state", "wchan", "stack"?, "killed_but_alive", "error"?}},
               "oops", "recursive_fault", "last_unloaded_chardev", "taint_die": bools}.
    A killed_but_alive of None means the kill test was not run and is not judged.
    """
    mismatches: list[str] = []
    observed_tasks: Mapping[str, Any] = observed.get("tasks") or {}
    for role, want in expected.get("tasks", {}).items():
        seen = observed_tasks.get(role)
        if seen is None:
            mismatches.append(f"{role}: not observed (no pidfile given for it)")
            continue
        if seen.get("pid") is None:
            mismatches.append(f"{role}: no pid ({seen.get('error') or 'pidfile missing or empty'})")
            continue
        state = seen.get("state")
        if state is None:
            gone = seen.get("error") or f"pid {seen['pid']} is not in /proc"
            mismatches.append(f"{role}: {gone}, expected state {want['state']} ({want['why']})")
            continue
        if state != want["state"]:
            mismatches.append(
                f"{role}: pid {seen['pid']} is in state {state}, expected {want['state']} ({want['why']})"
            )
        patterns = want.get("wchan_patterns") or []
        wchan = seen.get("wchan") or ""
        # An empty wchan (5.10 on x86 with ORC) falls back to the kernel stack's functions.
        places = [wchan] if wchan else list(seen.get("stack") or [])
        if patterns and not any(pattern in place.lower() for place in places for pattern in patterns):
            where = (
                wchan or "nothing (wchan 0" + (", stack " + " < ".join(places[:8]) if places else "") + ")"
            )
            mismatches.append(
                f"{role}: pid {seen['pid']} waits in {where}, expected one of " + ", ".join(patterns)
            )
        if want.get("unkillable") and seen.get("killed_but_alive") is False:
            mismatches.append(
                f"{role}: pid {seen['pid']} went away after SIGKILL, expected it to be unkillable"
            )
    texts = {
        "oops": "an oops headline (BUG: unable to handle ...) in the kernel log",
        "recursive_fault": f'"{RECURSIVE_FAULT_MARKER}" in the kernel log',
        "last_unloaded_chardev": f'"{LAST_UNLOADED_MARKER}" in the kernel log',
        "taint_die": "taint flag D (128) in /proc/sys/kernel/tainted",
        "oops_of_victim": "an oops in the victim's own task (PID: <victim> in the oops)",
        "hung_task_silent": "the hung-task detector silent after the oops (no 'blocked for more than')",
        "sysrq_w_blocked": "each task in D in the SysRq w dump (sysrq: Show Blocked State)",
    }
    for marker, want_value in expected.get("markers", {}).items():
        if bool(observed.get(marker)) != bool(want_value):
            what = texts.get(marker, marker)
            mismatches.append(("missing: " if want_value else "unexpected: ") + what)
    return mismatches


def observed_from(
    tasks: Sequence[TaskEvidence], log: KernelLogEvidence, tainted: int | None
) -> dict[str, Any]:
    """The observation dict that compare() takes."""
    victim_pid = next((task.pid for task in tasks if task.role == ROLE_VICTIM), None)
    return {
        "tasks": {
            task.role: {
                "pid": task.pid,
                "state": task.state,
                "wchan": task.wchan,
                "stack": task.stack,
                "killed_but_alive": task.killed_but_alive,
                "state_after_kill": task.state_after_kill,
                "error": task.error,
            }
            for task in tasks
        },
        "oops": log.oops,
        "oops_of_victim": victim_pid is not None and victim_pid in {pid for pid, _comm in log.oops_tasks},
        "oops_tasks": [{"pid": pid, "comm": comm} for pid, comm in log.oops_tasks],
        "recursive_fault": log.recursive_fault,
        "last_unloaded_chardev": log.last_unloaded_chardev,
        "taint_die": bool(tainted is not None and tainted & TAINT_DIE),
    }


def diagnostics_markers(diagnostics: Mapping[str, Any] | None) -> dict[str, bool]:
    """compare()'s markers from kernel_diagnostics(): every task in D shown by SysRq w (true when no task
    is in D), and the hung-task detector silent about them (no report; the oops silenced it)."""
    diagnostics = diagnostics or {}
    hung = diagnostics.get("hung_task") or {}
    return {
        "sysrq_w_blocked": all((diagnostics.get("sysrq_w") or {}).get("shown", {}).values()),
        "hung_task_silent": bool(hung.get("silenced")) and not any(hung.get("reported", {}).values()),
    }
