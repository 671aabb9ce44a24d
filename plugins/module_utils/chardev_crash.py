# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Expected outcomes and evidence parsers for the chardev unload-while-open crash.

One module, two users:

* the Ansible module ``chardev_crash_evidence`` imports it as ``ansible.module_utils.chardev_crash``
  (Ansible finds ``roles/chardev_crash/module_utils`` when the module runs inside the role);
* pytest and the testinfra tests put ``roles/chardev_crash/module_utils`` on ``sys.path`` and
  ``import chardev_crash``.

It runs on the managed node too, whose Python may be as old as 3.9 (Debian 11): stdlib only, no
``match``, and ``X | None`` only inside annotations (postponed by the ``__future__`` import).

Nothing here blocks without a bound. Reading ``/proc/<pid>/{stat,wchan,cmdline}`` of a stuck task does
not wait on that task: the victim is stuck after ``exit_mm()`` (its mm is gone, ``cmdline`` is empty) and
the pipe reader sleeps on the pipe's mutex, which ``/proc`` never takes. The stuck processes' own stdio
and pipes are never read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    RUN_DIR,
    TAINT_BASELINE_PATH,
)

MODES = ("read", "splice")
ROLE_VICTIM = "victim"
ROLE_READER = "reader"
#: The command name (comm) chardev_victim.py gives each of its processes.
ROLE_COMMS = {ROLE_VICTIM: "chardev-victim", ROLE_READER: "chardev-reader"}

# ---------------------------------------------------------------------------------------------------------
# The one table of expected outcomes
# ---------------------------------------------------------------------------------------------------------
#
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


# ---------------------------------------------------------------------------------------------------------
# Parsers for captured evidence
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The few fields of /proc/<pid>/stat the lab uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    #: Clock ticks after boot at which the task started (field 22): with the pid, who the task is.
    starttime: int | None = None
    #: The task's PF_* flags (field 9); PF_KTHREAD tells a kernel thread.
    flags: int | None = None


def parse_proc_stat(text: str) -> ProcStat:
    """Parse /proc/<pid>/stat. comm may hold spaces and parentheses, so split at the LAST ')'.

    Raises ValueError on text that is not a stat line.
    """
    text = text.strip()
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 1 or close_paren < open_paren:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    rest = text[close_paren + 1 :].split()
    if len(rest) < 2:
        raise ValueError(f"truncated /proc/<pid>/stat line: {text[:80]!r}")
    # rest[0] is field 3 (state), so field N is rest[N - 3]; starttime is field 22.
    starttime = int(rest[19]) if len(rest) > 19 and rest[19].isdigit() else None
    flags = int(rest[6]) if len(rest) > 6 and rest[6].isdigit() else None
    return ProcStat(
        pid=int(text[:open_paren].strip()),
        comm=text[open_paren + 1 : close_paren],
        state=rest[0],
        ppid=int(rest[1]),
        starttime=starttime,
        flags=flags,
    )


#: include/linux/sched.h: the task is a kernel thread.
PF_KTHREAD = 0x00200000


def parse_wchan(text: str) -> str | None:
    """Parse /proc/<pid>/wchan: a symbol name, or None for "0"/empty (running, or hidden)."""
    value = text.strip().strip("\x00")
    if value in ("", "0"):
        return None
    return value


_STACK_FRAME_RE = re.compile(r"^(?:\[<[0-9a-fx]+>\]\s*)?([A-Za-z0-9_.$]+)\+0x")


def parse_stack(text: str) -> list[str]:
    """Function names of /proc/<pid>/stack, innermost first: "[<0>] pipe_read+0x2d/0x450" -> "pipe_read".

    Lines that are not frames (empty, or a kernel's notice) are left out.
    """
    frames = []
    for line in text.splitlines():
        match = _STACK_FRAME_RE.match(line.strip())
        if match:
            frames.append(match.group(1))
    return frames


def parse_cmdline(data: bytes | str) -> list[str]:
    """Parse /proc/<pid>/cmdline (NUL separated, usually NUL terminated). Empty for exited tasks."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if not data:
        return []
    return data.rstrip("\x00").split("\x00")


OOPS_HEADLINES = (
    "BUG: unable to handle page fault for address:",  # x86 since 5.1
    "BUG: unable to handle kernel paging request",  # x86 before 5.1, arm64
    "BUG: unable to handle kernel NULL pointer dereference",
)
RECURSIVE_FAULT_MARKER = "Fixing recursive fault but reboot is needed!"
# "CPU: 0 PID: 845 Comm: chardev-victim Tainted: ..." (6.12 adds "UID: 0 " before PID): the task the
# oops happened in. The oops is the victim's when this pid is the victim's.
_OOPS_TASK_RE = re.compile(r"\bPID: (\d+) Comm: (.*?) (?:Tainted:|Not tainted)")
LAST_UNLOADED_MARKER = "[last unloaded: chardev"

# "[  123.456789] " (dmesg) at the start of a line.
_TIMESTAMP_RE = re.compile(r"^\[\s*\d+\.\d+\]\s?")
# "<4>" syslog priority prefix (dmesg -r, some consoles).
_PRIORITY_RE = re.compile(r"^<\d+>")


def strip_log_prefix(line: str) -> str:
    """Drop a syslog priority "<N>" and a dmesg timestamp "[ 12.345678] " from the start of a line."""
    line = _PRIORITY_RE.sub("", line)
    return _TIMESTAMP_RE.sub("", line)


def parse_kmsg_records(raw: Iterable[str]) -> list[str]:
    """Turn /dev/kmsg records ("6,123,4567,-;text" plus " KEY=value" lines) into message lines."""
    lines: list[str] = []
    for record in raw:
        for part in record.split("\n"):
            if not part or part.startswith(" "):
                continue  # empty, or a dictionary continuation line (" SUBSYSTEM=...")
            head, sep, message = part.partition(";")
            lines.append(message if sep and "," in head else part)
    return lines


@dataclass
class KernelLogEvidence:
    """What the kernel log shows about the crash."""

    oops: bool = False
    oops_headlines: int = 0
    oops_lines: list[str] = field(default_factory=list)
    recursive_fault: bool = False
    last_unloaded_chardev: bool = False
    #: (pid, comm) of the task each oops happened in, in log order.
    oops_tasks: list[tuple[int, str]] = field(default_factory=list)


def _is_headline(line: str) -> bool:
    return any(headline in line for headline in OOPS_HEADLINES)


def parse_kernel_log(text: str | Sequence[str], max_lines: int = 20) -> KernelLogEvidence:
    """Find the crash markers in kernel log text (dmesg output, or lines from /dev/kmsg).

    oops_lines is a window of at most max_lines lines starting at the FIRST oops headline (timestamps
    removed); the lab reboots before each crash, so the first oops of the boot is the crash.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    lines = [strip_log_prefix(line.rstrip("\r\n")) for line in lines]
    evidence = KernelLogEvidence()
    first = None
    for index, line in enumerate(lines):
        if _is_headline(line):
            evidence.oops_headlines += 1
            if first is None:
                first = index
        if RECURSIVE_FAULT_MARKER in line:
            evidence.recursive_fault = True
        task = _OOPS_TASK_RE.search(line)
        if task and first is not None:
            evidence.oops_tasks.append((int(task.group(1)), task.group(2)))
        if LAST_UNLOADED_MARKER in line:
            evidence.last_unloaded_chardev = True
    if first is not None:
        evidence.oops = True
        evidence.oops_lines = lines[first : first + max(1, max_lines)]
    return evidence


# The kernel's own diagnostics of a task stuck in D (TASK_UNINTERRUPTIBLE), both printed to the log:
#  * the hung-task detector (khungtaskd) reports a task whose context-switch count has not moved for
#    kernel.hung_task_timeout_secs: "INFO: task chardev-reader:523 blocked for more than 10 seconds.",
#    then "task:chardev-reader state:D stack:0 pid:523 ppid:1 flags:..." and the call trace. It looks at
#    D tasks only: a task in X (EXIT_DEAD, 5.17+) is never reported. It stops after
#    kernel.hung_task_warnings reports (10 by default) per boot.
#  * SysRq w ("echo w > /proc/sysrq-trigger", root only, whatever kernel.sysrq says) prints
#    "sysrq: Show Blocked State" and the same task line and trace for every task in D at that moment.
_HUNG_TASK_RE = re.compile(r"INFO: task (.+):(\d+) blocked for more than (\d+) seconds")
SYSRQ_BLOCKED_MARKER = "sysrq: Show Blocked State"
# 5.10 pads the fields ("stack:    0 pid:  523"); 6.12 adds "tgid:".
_TASK_LINE_RE = re.compile(r"^task:(.*?)\s+state:(\S+)\s.*?\bpid:\s*(\d+)")
_TRACE_FRAME_RE = re.compile(r"^\s*(?:\? )?([A-Za-z_][A-Za-z0-9_.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+")


def _task_dumps(lines: Sequence[str], max_frames: int = 16) -> list[dict[str, Any]]:
    """The "task:... state:... pid:..." blocks in lines, each with its call trace's function names."""
    dumps: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in lines:
        match = _TASK_LINE_RE.match(line.strip())
        if match:
            current = {
                "comm": match.group(1).strip(),
                "state": match.group(2),
                "pid": int(match.group(3)),
                "stack": [],
            }
            dumps.append(current)
            continue
        frame = _TRACE_FRAME_RE.match(line)
        if current is not None and frame and len(current["stack"]) < max_frames:
            current["stack"].append(frame.group(1))
    return dumps


def parse_hung_task_reports(lines: Sequence[str], max_lines: int = 24) -> list[dict[str, Any]]:
    """Every hung-task report in the log: comm, pid, seconds, the stack's functions and its lines."""
    clean = [strip_log_prefix(line.rstrip("\r\n")) for line in lines]
    reports: list[dict[str, Any]] = []
    for index, line in enumerate(clean):
        match = _HUNG_TASK_RE.search(line)
        if not match:
            continue
        block = [line]
        for following in clean[index + 1 : index + max_lines]:
            if (
                _HUNG_TASK_RE.search(following)
                or SYSRQ_BLOCKED_MARKER in following
                or _is_headline(following)
            ):
                break
            block.append(following)
            if following.strip() == "</TASK>":
                break
        dumps = _task_dumps(block)
        reports.append(
            {
                "comm": match.group(1),
                "pid": int(match.group(2)),
                "seconds": int(match.group(3)),
                "stack": dumps[0]["stack"] if dumps else [],
                "lines": block,
            }
        )
    return reports


def parse_sysrq_blocked(lines: Sequence[str], max_lines: int = 80) -> dict[str, Any] | None:
    """The last "Show Blocked State" dump in the log (tasks in D with their stacks), or None."""
    clean = [strip_log_prefix(line.rstrip("\r\n")) for line in lines]
    starts = [index for index, line in enumerate(clean) if SYSRQ_BLOCKED_MARKER in line]
    if not starts:
        return None
    block = []
    for line in clean[starts[-1] : starts[-1] + max_lines]:
        if block and (SYSRQ_BLOCKED_MARKER in line or _HUNG_TASK_RE.search(line) or _is_headline(line)):
            break
        block.append(line)
    return {"tasks": _task_dumps(block), "lines": block}


# Bit -> (letter, meaning), as in the kernel's taint_flags table (kernel/panic.c) and
# Documentation/admin-guide/tainted-kernels.rst. Bit 0 prints "P" when set and "G" when clear.
TAINT_FLAGS: dict[int, tuple[str, str]] = {
    0: ("P", "proprietary module was loaded"),
    1: ("F", "module was force loaded"),
    2: ("S", "kernel running on an out of specification system"),
    3: ("R", "module was force unloaded"),
    4: ("M", "processor reported a Machine Check Exception"),
    5: ("B", "bad page referenced or some unexpected page flags"),
    6: ("U", "taint requested by userspace application"),
    7: ("D", "kernel died recently, i.e. there was an OOPS or BUG"),
    8: ("A", "an ACPI table was overridden by user"),
    9: ("W", "kernel issued warning"),
    10: ("C", "staging driver was loaded"),
    11: ("I", "workaround for bug in platform firmware applied"),
    12: ("O", "externally-built (out-of-tree) module was loaded"),
    13: ("E", "unsigned module was loaded"),
    14: ("L", "soft lockup occurred"),
    15: ("K", "kernel has been live patched"),
    16: ("X", "auxiliary taint, defined for and used by distros"),
    17: ("T", "kernel was built with the struct randomization plugin"),
    18: ("N", "an in-kernel test has been run"),
    19: ("J", "userspace used a mutating debug operation in fwctl"),
}
TAINT_DIE = 1 << 7


def parse_tainted(text: str) -> int:
    """Parse /proc/sys/kernel/tainted (a decimal integer)."""
    return int(text.strip())


def taint_letters(value: int) -> str:
    """The letters of the set taint bits, lowest bit first, e.g. 12416 -> "DOE". Unknown bits -> "?"."""
    letters = []
    for bit in range(max(value.bit_length(), 1)):
        if value & (1 << bit):
            letters.append(TAINT_FLAGS.get(bit, ("?", ""))[0])
    return "".join(letters)


def decode_taint(value: int) -> list[dict[str, Any]]:
    """Each set taint bit as {bit, value, letter, meaning}."""
    decoded = []
    for bit in range(value.bit_length()):
        if value & (1 << bit):
            letter, meaning = TAINT_FLAGS.get(bit, ("?", "unknown taint bit"))
            decoded.append({"bit": bit, "value": 1 << bit, "letter": letter, "meaning": meaning})
    return decoded


def parse_oops_count(text: str | None) -> int | None:
    """Parse /sys/kernel/oops_count; None when the file is absent (older kernels) or unreadable."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


# ---------------------------------------------------------------------------------------------------------
# Comparing expectation and observation
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Gathering from a live system
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TaskEvidence:
    """One watched process, as /proc shows it."""

    role: str
    pidfile: str
    pid: int | None = None
    comm: str | None = None
    state: str | None = None
    wchan: str | None = None
    stack: list[str] = field(default_factory=list)
    cmdline: list[str] = field(default_factory=list)
    #: How the task was known to be the one its pidfile names: "starttime" (pid and start time, as the
    #: victim wrote them), "comm" (an older pidfile without start time: the command name), or None.
    identity: str | None = None
    kill_sent: bool = False
    killed_but_alive: bool | None = None
    state_after_kill: str | None = None
    error: str | None = None


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def read_optional_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def proc_path(root: str, pid: int, name: str) -> str:
    """Path of /proc/<pid>/<name> below root."""
    return os.path.join(root, "proc", str(pid), name)


def read_pidfile_entry(path: str) -> tuple[int, int | None]:
    """The pid in a pidfile and, when the writer recorded it, the task's start time ("PID STARTTIME",
    as chardev_victim.py writes it); raises OSError/ValueError."""
    with open(path, encoding="ascii") as handle:
        text = handle.read().strip()
    fields = text.split()
    pid = int(fields[0]) if fields else 0
    if pid <= 1:
        raise ValueError(f"pidfile {path} holds no usable pid ({text!r})")
    starttime = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return pid, starttime


def read_pidfile(path: str) -> int:
    """The pid in a pidfile; raises OSError/ValueError."""
    return read_pidfile_entry(path)[0]


def identify(role: str, stat: ProcStat, starttime: int | None) -> tuple[str | None, str | None]:
    """Whether the live task is the one its pidfile was written for: (how it was known, or None; why not).

    The pid and start time together name one task for the whole boot; a pidfile without a start time
    (an older victim) falls back to the command name chardev_victim.py sets. A pid reused by another
    process is never taken for the victim, so it is never signalled.
    """
    if starttime is not None:
        if stat.starttime == starttime:
            return "starttime", None
        return None, (
            f"pid {stat.pid} is another process now ({stat.comm}, started at tick {stat.starttime}; "
            f"the {role} started at tick {starttime})"
        )
    expected = ROLE_COMMS.get(role)
    if expected is None or stat.comm == expected:
        return "comm", None
    return None, f"pid {stat.pid} is {stat.comm!r}, not the {role} ({expected!r}): the pid was reused"


def read_task_state(root: str, pid: int) -> ProcStat | None:
    """The stat of pid below root, or None when the pid is not in /proc."""
    text = _read_text(proc_path(root, pid, "stat"))
    if text is None:
        return None
    try:
        return parse_proc_stat(text)
    except ValueError:
        return None


def gather_tasks(
    pidfiles: Mapping[str, str],
    root: str = "/",
    kill_test: bool = True,
    kill_wait: float = 2.0,
    poll_interval: float = 0.1,
    kill: Callable[[int, int], None] = os.kill,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[TaskEvidence]:
    """Read each role's pidfile and its task's stat, wchan and cmdline below root (default "/").

    With kill_test, send SIGKILL to every task in state D or X (only those: a task still waiting in S
    would really die, and closing the device then would crash now), then poll for at most kill_wait
    seconds and record whether it is still there and in which state. A stuck D task stays D; an X task
    stays listed. Only /proc is read; never a stuck process's pipes or stdio.
    """
    results: list[TaskEvidence] = []
    for role, pidfile in pidfiles.items():
        task = TaskEvidence(role=role, pidfile=str(pidfile))
        results.append(task)
        try:
            task.pid, starttime = read_pidfile_entry(str(pidfile))
        except (OSError, ValueError) as exc:
            task.error = f"cannot read pidfile {pidfile}: {exc}"
            continue
        stat = read_task_state(root, task.pid)
        if stat is None:
            task.error = f"pid {task.pid} is not in /proc"
            continue
        task.identity, why_not = identify(role, stat, starttime)
        if task.identity is None:
            task.error = why_not
            continue
        task.comm, task.state = stat.comm, stat.state
        task.wchan = parse_wchan(_read_text(proc_path(root, task.pid, "wchan")) or "")
        task.stack = parse_stack(_read_text(proc_path(root, task.pid, "stack")) or "")
        task.cmdline = parse_cmdline(read_optional_bytes(proc_path(root, task.pid, "cmdline")) or b"")
    if not kill_test:
        return results
    stuck = [t for t in results if t.pid is not None and t.state in ("D", "X") and t.pid != os.getpid()]
    for task in stuck:
        if task.pid is None:  # stuck holds tasks with a pid only (narrows the type)
            raise AssertionError(task)
        try:
            kill(task.pid, signal.SIGKILL)
            task.kill_sent = True
        except ProcessLookupError:
            task.kill_sent = True  # already gone: the wait below records that
        except OSError as exc:
            task.error = f"SIGKILL to pid {task.pid} failed: {errno.errorcode.get(exc.errno or 0, exc)}"
    waiting = [t for t in stuck if t.kill_sent]
    deadline = clock() + max(0.0, kill_wait)
    while waiting:
        for task in list(waiting):
            if task.pid is None:  # waiting is part of stuck (narrows the type)
                raise AssertionError(task)
            stat = read_task_state(root, task.pid)
            task.state_after_kill = stat.state if stat else None
            if stat is None:
                task.killed_but_alive = False
                waiting.remove(task)
        if not waiting or clock() >= deadline:
            break
        sleep(poll_interval)
    for task in waiting:
        task.killed_but_alive = True
    return results


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


HUNG_TASK_TIMEOUT_FILE = "proc/sys/kernel/hung_task_timeout_secs"
HUNG_TASK_PANIC_FILE = "proc/sys/kernel/hung_task_panic"
SYSRQ_TRIGGER_FILE = "proc/sysrq-trigger"
NOT_IN_D = "not in D: the hung-task detector and SysRq w show tasks in D (TASK_UNINTERRUPTIBLE) only"


def kernel_diagnostics(
    stuck: Sequence[Mapping[str, Any]],
    read_lines: Callable[[], list[str]],
    root: str = "/",
    wait: float = 0.0,
    sysrq: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The kernel's own word on the stuck tasks: its hung-task reports and a SysRq w dump.

    stuck: {"role", "pid", "state"} of each watched task. For the tasks in D, wait (at most wait
    seconds, polling the log every second) until the hung-task detector has reported each of them, then
    write "w" to /proc/sysrq-trigger and read the dump. Tasks in X are listed as not applicable: the
    kernel shows neither for them. Only reads, except the SysRq write, which only prints.

    Once the kernel has oopsed (taint D) its hung-task detector is silent: check_hung_uninterruptible_tasks()
    returns at once ("If the system crashed already then all bets are off, do not report extra hung
    tasks", kernel/hung_task.c, in 5.10, 6.1 and 6.12 alike; measured on 5.10: no report of the D victim
    within 35 s at a 10 s timeout). Then there is nothing to wait for: `silenced` says why, and the
    reports found (none expected) are returned. SysRq w still shows the tasks in D.
    """
    in_d = {entry["role"]: entry["pid"] for entry in stuck if entry.get("state") == "D" and entry.get("pid")}
    timeout_text = read_optional(os.path.join(root, HUNG_TASK_TIMEOUT_FILE))
    timeout = int(timeout_text) if timeout_text and timeout_text.strip().isdigit() else None
    tainted_text = read_optional(os.path.join(root, "proc/sys/kernel/tainted"))
    oopsed = bool(tainted_text and tainted_text.strip().isdigit() and int(tainted_text) & TAINT_DIE)
    silenced = (
        "the kernel has oopsed (taint D), and from then on its hung-task detector checks nothing "
        '(kernel/hung_task.c: "If the system crashed already then all bets are off, do not report extra '
        'hung tasks"): no "blocked for more than" report comes, whatever the timeout'
        if oopsed
        else None
    )
    not_applicable = {
        entry["role"]: NOT_IN_D + f" (pid {entry.get('pid')} is in {entry.get('state') or 'no state'})"
        for entry in stuck
        if entry["role"] not in in_d
    }

    def reported(lines: list[str]) -> tuple[list[dict[str, Any]], dict[str, bool]]:
        reports = parse_hung_task_reports(lines)
        pids = {report["pid"] for report in reports}
        return reports, {role: pid in pids for role, pid in in_d.items()}

    lines = read_lines()
    reports, seen = reported(lines)
    deadline = clock() + (wait if in_d and timeout and not oopsed else 0.0)
    while not all(seen.values()) and clock() < deadline:
        sleep(1.0)
        lines = read_lines()
        reports, seen = reported(lines)
    hung_task = {
        "timeout_secs": timeout,
        "silenced": silenced,
        "reports": [report for report in reports if report["pid"] in in_d.values()],
        "reported": seen,
        "not_applicable": not_applicable,
    }
    sysrq_w: dict[str, Any] = {
        "done": False,
        "tasks": [],
        "lines": [],
        "shown": {role: False for role in in_d},
        "error": None if sysrq else "not asked",
    }
    if sysrq and in_d:
        try:
            with open(os.path.join(root, SYSRQ_TRIGGER_FILE), "w", encoding="ascii") as handle:
                handle.write("w\n")
            sysrq_w["done"] = True
        except OSError as exc:
            sysrq_w["error"] = f"cannot write {SYSRQ_TRIGGER_FILE}: {exc.strerror or exc}"
        if sysrq_w["done"]:
            dump = None
            for _attempt in range(5):  # the dump is printed synchronously; the log reader may lag a moment
                dump = parse_sysrq_blocked(read_lines())
                if dump and any(task["pid"] in in_d.values() for task in dump["tasks"]):
                    break
                sleep(0.5)
            if dump:
                sysrq_w["tasks"], sysrq_w["lines"] = dump["tasks"], dump["lines"][:60]
        pids = {task["pid"] for task in sysrq_w["tasks"]}
        sysrq_w["shown"] = {role: pid in pids for role, pid in in_d.items()}
    return {"hung_task": hung_task, "sysrq_w": sysrq_w}


def diagnostics_markers(diagnostics: Mapping[str, Any] | None) -> dict[str, bool]:
    """compare()'s markers from kernel_diagnostics(): every task in D shown by SysRq w (true when no task
    is in D), and the hung-task detector silent about them (no report; the oops silenced it)."""
    diagnostics = diagnostics or {}
    hung = diagnostics.get("hung_task") or {}
    return {
        "sysrq_w_blocked": all((diagnostics.get("sysrq_w") or {}).get("shown", {}).values()),
        "hung_task_silent": bool(hung.get("silenced")) and not any(hung.get("reported", {}).values()),
    }


def task_to_dict(task: TaskEvidence) -> dict[str, Any]:
    """TaskEvidence as a plain dict (module return value)."""
    return asdict(task)


def read_kmsg(
    path: str = "/dev/kmsg",
    max_records: int = 200000,
    time_limit: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """All records currently in the kernel ring buffer, read from /dev/kmsg without blocking.

    Opened O_NONBLOCK, a read returns one record and EAGAIN at the end; EPIPE means records were
    overwritten while reading and is skipped. Bounded by max_records and time_limit. Raises OSError
    when /dev/kmsg cannot be opened (not root, dmesg_restrict, container).
    """
    records: list[str] = []
    deadline = clock() + time_limit
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while len(records) < max_records and clock() < deadline:
            try:
                chunk = os.read(fd, 16384)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue
                raise
            if not chunk:
                break
            records.append(chunk.decode("utf-8", errors="replace"))
    finally:
        os.close(fd)
    return records


def read_optional(path: str) -> str | None:
    """The text of a file, or None when it does not exist or cannot be read."""
    return _read_text(path)


# ---------------------------------------------------------------------------------------------------------
# The crash state of a host: the one place that knows where it lives and what it means
# ---------------------------------------------------------------------------------------------------------
#
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
#: Where the taint of the kernel before the lab is kept (persistent: a reset reboots a real host).
#: Taint bits loading chardev itself sets (O out-of-tree, E unsigned): never part of a baseline.
TAINT_LAB = (1 << 12) | (1 << 13)

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


def read_kernel_log_lines(kmsg_path: str = "/dev/kmsg", dmesg_timeout: float = 15) -> tuple[list[str], str]:
    """Kernel log lines and their source: /dev/kmsg (non-blocking), else dmesg (bounded), else "none"."""
    try:
        return parse_kmsg_records(read_kmsg(kmsg_path)), kmsg_path
    except OSError:
        pass
    try:
        done = subprocess.run(
            ["dmesg"], stdin=subprocess.DEVNULL, capture_output=True, timeout=dmesg_timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return [], "none"
    if done.returncode != 0:
        return [], "none"
    return done.stdout.decode("utf-8", errors="replace").splitlines(), "dmesg"


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read_int(root: str, path: str) -> int | None:
    text = _read_text(_under(root, path))
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
    files = run_files(run_dir)
    record, record_error = parse_record(_read_text(_under(root, files["record"])))
    tainted = _read_int(root, "/proc/sys/kernel/tainted")
    oops_count = parse_oops_count(_read_text(_under(root, "/sys/kernel/oops_count")))
    log = parse_kernel_log(list(log_lines or []))
    module_loaded = os.path.isdir(_under(root, "/sys/module/chardev"))
    boot_id = (_read_text(_under(root, "/proc/sys/kernel/random/boot_id")) or "").strip() or None
    baseline = parse_taint_baseline(_read_text(_under(root, baseline_path)))

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
            {role: _under(root, files[role]) for role in (ROLE_VICTIM, ROLE_READER)}, root, kill_test=False
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
        "lockdown": (_read_text(_under(root, "/sys/kernel/security/lockdown")) or "").strip() or None,
        "boot_id": boot_id,
        "taint_baseline": baseline,
        "new_taint": new_taint,
    }
