# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's log and what it tells: /dev/kmsg records and dmesg (read_kernel_log_lines), the oops
headlines, the recursive fault and "[last unloaded: chardev" (parse_kernel_log), the hung-task reports and
SysRq w's blocked-state dump, and asking the kernel for them (kernel_diagnostics).

Runs on the managed node (Python 3.9 and later): stdlib only. Nothing here blocks without a bound.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    read_optional,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    TAINT_DIE,
)

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
