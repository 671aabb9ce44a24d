# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading /proc and /sys of a target: /proc/devices, the files a task shows in /proc/<pid> (stat,
wchan, stack, cmdline) and the lab's watched tasks (the victim and the pipe reader, by their PID files).

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import stat as stat_module
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import PROC_DEVICES


class ProcDevicesError(ValueError):
    """/proc/devices holds a line that is not "<major> <name>" or a section header."""


@dataclasses.dataclass(frozen=True)
class ProcDevices:
    """The two sections of /proc/devices, as (major, name) pairs in file order."""

    char: tuple[tuple[int, str], ...]
    block: tuple[tuple[int, str], ...]

    def char_majors(self, name: str) -> list[int]:
        """The majors registered as a character device under name, in file order (block devices are
        ignored)."""
        return [major for major, entry in self.char if entry == name]


def parse_proc_devices(text: str) -> ProcDevices:
    """Parse /proc/devices. Lines are "<major> <name>"; names may contain '/' (e.g. "/dev/vc/0")."""
    sections: dict[str, list[tuple[int, str]]] = {"char": [], "block": []}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "Character devices:":
            current = "char"
            continue
        if line == "Block devices:":
            current = "block"
            continue
        if current is None:
            raise ProcDevicesError(f"unexpected line before any section in {PROC_DEVICES}: {raw!r}")
        number, _sep, name = line.partition(" ")
        if not number.isdigit() or not name.strip():
            raise ProcDevicesError(f"unexpected line in {PROC_DEVICES}: {raw!r}")
        sections[current].append((int(number), name.strip()))
    return ProcDevices(char=tuple(sections["char"]), block=tuple(sections["block"]))


MODES = ("read", "splice")
ROLE_VICTIM = "victim"
ROLE_READER = "reader"
#: The command name (comm) chardev_victim.py gives each of its processes.
ROLE_COMMS = {ROLE_VICTIM: "chardev-victim", ROLE_READER: "chardev-reader"}


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


def task_to_dict(task: TaskEvidence) -> dict[str, Any]:
    """TaskEvidence as a plain dict (module return value)."""
    return asdict(task)


def read_optional(path: str) -> str | None:
    """The text of a file, or None when it does not exist or cannot be read."""
    return _read_text(path)


@dataclass(frozen=True)
class Holders:
    """The processes that have a device open, and the /proc/<pid>/fd directories that could not be read
    (a holder there cannot be ruled out)."""

    found: tuple[dict[str, Any], ...] = ()
    unreadable: tuple[str, ...] = ()


def device_holders(
    root: str,
    device: str,
    major: int | None,
    stat: Callable[[str], os.stat_result] = os.stat,
) -> Holders:
    """Every process below root with an open file on the device: an fd whose link is the device's path
    (also once the node was removed: "<path> (deleted)"), or any character device node whose major is
    the driver's (a node made elsewhere, with mknod, reaches the same driver). A reference count does not
    tell: the crash variant's stays 0 while its file is open, so /proc is read. A process that exits while
    it is read is skipped."""
    try:
        names = os.listdir(os.path.join(root, "proc"))
    except OSError as exc:
        return Holders(unreadable=(f"{os.path.join(root, 'proc')}: {exc.strerror or exc}",))
    found: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for pid in sorted(int(name) for name in names if name.isdigit()):
        fd_dir = proc_path(root, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue
        except OSError as exc:
            unreadable.append(f"/proc/{pid}/fd: {exc.strerror or exc}")
            continue
        for fd in sorted(fds, key=lambda name: int(name) if name.isdigit() else -1):
            link = os.path.join(fd_dir, fd)
            try:
                target = os.readlink(link)
            except OSError:
                continue
            held = target in (device, f"{device} (deleted)")
            if not held and major is not None and target.startswith("/"):
                try:
                    st = stat(link)
                except OSError:
                    continue
                held = stat_module.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == major
            if held:
                task = read_task_state(root, pid)
                found.append(
                    {"pid": pid, "comm": task.comm if task else None, "fd": int(fd), "target": target}
                )
                break
    return Holders(tuple(found), tuple(unreadable))
