#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hold /dev/chardev open across an rmmod, then use it on a trigger: the lab's crash victim.

Runs on the lab VMs' system Python (3.9 on Debian 11, 3.11, 3.13), stdlib only.

read mode:   open the device, report ready, wait for the trigger, read() from it.
splice mode: create a pipe, fork a reader that keeps touching the pipe, open the device, report ready,
             wait for the trigger, splice() the device into the pipe.

After the module has been removed, the read() or splice() oopses in the kernel and this process never
comes back: see kernel-facts.md and plugins/module_utils/chardev_outcomes.py for the states.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own code
EXIT_TIMEOUT = 3
EXIT_NO_CRASH = 4

POLL_INTERVAL = 0.2
READ_SIZE = 4096
PR_SET_NAME = 15

EPILOG = """\
trigger: send SIGUSR1 to the victim (its pid is in --pidfile), or create the --trigger-file.
A stale trigger file, ready file and pidfiles are removed at start.

exit status: 0 ready (--detach) or never (the crash keeps the process for ever), 1 error,
2 usage error, 3 no trigger before --timeout, 4 the read/splice returned: no crash happened
(is the module still loaded?).

Start it detached, for example from an Ansible command task:
  python3 chardev_victim.py splice --device /dev/chardev --pidfile /run/chardev-lab/victim.pid \\
      --reader-pidfile /run/chardev-lab/reader.pid --ready-file /run/chardev-lab/ready \\
      --log /run/chardev-lab/victim.log --detach
--detach returns once the victim holds the device open; --log sends every standard stream of the
victim and the reader to that file, so neither can hold its caller's pipes.
"""


class VictimError(Exception):
    """A failure to report and exit with EXIT_ERROR."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chardev_victim.py",
        description="Hold a character device open across rmmod and use it on a trigger (chardev lab).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "mode", choices=("read", "splice"), help="read() the device, or splice() it into a pipe"
    )
    parser.add_argument("--device", default="/dev/chardev", help="character device (default: %(default)s)")
    parser.add_argument("--pidfile", required=True, help="file to write the victim's pid to")
    parser.add_argument("--ready-file", required=True, help="file created once the device is held open")
    parser.add_argument("--reader-pidfile", help="file for the pipe reader's pid (required for splice)")
    parser.add_argument("--trigger-file", help="also trigger when this file exists (polled every 0.2 s)")
    parser.add_argument("--log", help="send stdin from /dev/null and stdout/stderr to this file (appended)")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run in a new session in the background; return once ready (requires --log)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for the trigger, 0 for ever (default: %(default)s)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=15.0,
        help="with --detach, seconds to wait for the victim to become ready (default: %(default)s)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; exits with status 2 and a message on errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "splice" and not args.reader_pidfile:
        parser.error("splice mode needs --reader-pidfile")
    if args.detach and not args.log:
        parser.error("--detach needs --log (a detached process must not keep its caller's streams)")
    if args.timeout < 0 or args.ready_timeout <= 0:
        parser.error("--timeout must be >= 0 and --ready-timeout > 0")
    # Absolute paths: --detach changes to "/" before it writes any of them.
    for name in ("device", "pidfile", "ready_file", "reader_pidfile", "trigger_file", "log"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    paths = [args.pidfile, args.ready_file, args.reader_pidfile, args.trigger_file]
    used = [p for p in paths if p]
    if len({os.path.abspath(p) for p in used}) != len(used):
        parser.error("--pidfile, --ready-file, --reader-pidfile and --trigger-file must be different files")
    if args.log and os.path.abspath(args.log) in {os.path.abspath(p) for p in used}:
        parser.error("--log must be a file of its own")
    return args


# --- small helpers -------------------------------------------------------------------------------------


def log(role: str, message: str) -> None:
    """One line to stderr (the log file once redirected), unbuffered so nothing is lost in a crash."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {role}[{os.getpid()}]: {message}\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", errors="replace"))


def ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def write_file_atomic(path: str, text: str) -> None:
    ensure_parent(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def pidfile_entry() -> str:
    """ "PID STARTTIME" of this process: the start time (field 22 of /proc/self/stat, clock ticks after
    boot) lets the lab tell this process from a later one that got the same pid."""
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return f"{os.getpid()} {int(fields[19])}\n"
    except (OSError, IndexError, ValueError):
        return f"{os.getpid()}\n"


def remove_if_present(path: str | None) -> None:
    if not path:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def set_comm(name: str) -> None:
    """Name the task (what ps shows as [name] once the cmdline is gone). Best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except Exception:  # a nicer name is not worth failing for
        pass


def redirect_stdio(log_path: str, keep: Sequence[int] = ()) -> None:
    """stdin from /dev/null, stdout and stderr appended to log_path, every other inherited fd closed."""
    ensure_parent(log_path)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    close_other_fds(keep)


def close_other_fds(keep: Sequence[int] = ()) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def splice(fd_in: int, fd_out: int, count: int) -> int:
    """splice(2) from fd_in to fd_out: os.splice on Python 3.10+, libc through ctypes on 3.9."""
    if hasattr(os, "splice"):
        return os.splice(fd_in, fd_out, count)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    func = libc.splice
    func.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
    ]
    func.restype = ctypes.c_ssize_t
    result = func(fd_in, None, fd_out, None, count, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def open_device(path: str) -> int:
    """os.open, never text-mode open(): that one lseeks at once (the first fault on 5.10 was there)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VictimError(
            f"cannot open {path}: {exc.strerror} (is the module loaded and the node made?)"
        ) from exc
    if not stat.S_ISCHR(os.fstat(fd).st_mode):
        os.close(fd)
        raise VictimError(f"{path} is not a character device")
    return fd


class Trigger:
    """SIGUSR1 or the trigger file, whichever comes first."""

    def __init__(self, trigger_file: str | None) -> None:
        self.trigger_file = trigger_file
        self.fired = False
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.fired = True

    def wait(self, timeout: float) -> bool:
        """True when triggered, False after timeout seconds (0 = no limit)."""
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while not self.fired:
            if self.trigger_file and os.path.exists(self.trigger_file):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True


# --- the two processes ---------------------------------------------------------------------------------


def reader_main(read_fd: int, pidfile: str, victim_pid: int) -> int:
    """The pipe reader: keep taking the pipe's mutex until it blocks for good.

    Non-blocking reads still take the pipe mutex first (pipe_read), so this loop touches the pipe every
    0.2 s and, as soon as the victim has faulted inside splice() holding that mutex, sleeps in D for
    ever. Unlike a plain blocking read started too early (which would sleep interruptibly in S waiting
    for data), there is no race with the trigger. The write end stays open here, so the victim's exit
    never releases the pipe and the reader never sees end of file.
    """
    set_comm("chardev-reader")
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    flags = fcntl.fcntl(read_fd, fcntl.F_GETFL)
    fcntl.fcntl(read_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    write_file_atomic(pidfile, pidfile_entry())
    log("reader", f"polling the pipe (victim {victim_pid})")
    while True:
        try:
            data = os.read(read_fd, READ_SIZE)
        except BlockingIOError:
            data = None
        if data:
            log("reader", f"read {len(data)} bytes from the pipe")
        elif data == b"":
            log("reader", "end of file on the pipe")
            return EXIT_OK
        if os.getppid() != victim_pid:
            log("reader", "victim gone, exiting")
            return EXIT_OK
        time.sleep(POLL_INTERVAL)


def wait_for_file(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_reader(reader_pid: int) -> None:
    try:
        os.kill(reader_pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid, _status = os.waitpid(reader_pid, os.WNOHANG)
        if pid:
            return
        time.sleep(0.05)


def victim_main(args: argparse.Namespace, status_fd: int | None = None) -> int:
    """Set up, report ready, wait for the trigger, then use the file. Returns only if nothing crashed."""
    set_comm("chardev-victim")
    reader_pid = None
    fd = None
    try:
        if args.mode == "splice":
            # The pipe and the reader come first, so the reader never inherits the device.
            read_fd, write_fd = os.pipe()
            reader_pid = os.fork()
            if reader_pid == 0:
                if status_fd is not None:
                    os.close(status_fd)
                code = EXIT_ERROR
                try:
                    code = reader_main(read_fd, args.reader_pidfile, os.getppid())
                except BaseException as exc:  # the child must never return into the parent's code
                    log("reader", f"error: {exc}")
                finally:
                    os._exit(code)
            if not wait_for_file(args.reader_pidfile, 10):
                raise VictimError("the pipe reader did not write its pidfile within 10 s")
        else:
            write_fd = -1
        fd = open_device(args.device)
        write_file_atomic(args.pidfile, pidfile_entry())
        trigger = Trigger(args.trigger_file)
        ready = f"victim={os.getpid()}" + (f" reader={reader_pid}" if reader_pid else "") + "\n"
        write_file_atomic(args.ready_file, ready)
        log("victim", f"holding {args.device} open as fd {fd} ({args.mode} mode); {ready.strip()}")
        if status_fd is not None:
            os.write(status_fd, b"ready\n")
            os.close(status_fd)
            status_fd = None
        if not trigger.wait(args.timeout):
            log("victim", f"no trigger within {args.timeout:g} s, giving up")
            return EXIT_TIMEOUT
        if args.mode == "read":
            log("victim", f"triggered: read() on fd {fd}")
            data = os.read(fd, READ_SIZE)
            log(
                "victim",
                f"read() returned {len(data)} bytes {data[:16]!r}: no crash (is the module still loaded?)",
            )
        else:
            log("victim", f"triggered: splice() from fd {fd} into the pipe")
            count = splice(fd, write_fd, READ_SIZE)
            log("victim", f"splice() returned {count}: no crash (is the module still loaded?)")
        return EXIT_NO_CRASH
    except VictimError as exc:
        log("victim", f"error: {exc}")
        if status_fd is not None:
            os.write(status_fd, f"error: {exc}\n".encode())
        return EXIT_ERROR
    except OSError as exc:
        log("victim", f"error: {exc}")
        if status_fd is not None:
            os.write(status_fd, f"error: {exc}\n".encode())
        return EXIT_ERROR
    finally:
        if reader_pid:
            stop_reader(reader_pid)


def detach(args: argparse.Namespace) -> int:
    """Double fork into a new session; the original process waits (bounded) for the victim to be ready."""
    status_r, status_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:
        os.close(status_r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        code = EXIT_ERROR
        try:
            os.chdir("/")
            redirect_stdio(args.log, keep=(status_w,))
            code = victim_main(args, status_w)
        except BaseException as exc:  # never return into the caller's code
            log("victim", f"error: {exc}")
        finally:
            os._exit(code)
    os.close(status_w)
    os.waitpid(first, 0)
    message = read_status(status_r, args.ready_timeout)
    os.close(status_r)
    if message.startswith("ready"):
        with open(args.pidfile, encoding="ascii") as handle:
            victim = handle.read().split()[0]
        print(f"chardev victim ready ({args.mode} mode): pid {victim}, log {args.log}")
        return EXIT_OK
    reason = message or f"no answer within {args.ready_timeout:g} s"
    print(f"chardev victim not ready: {reason}", file=sys.stderr)
    print(f"see {args.log}", file=sys.stderr)
    return EXIT_ERROR


def read_status(fd: int, timeout: float) -> str:
    """The first line the detached victim reports, or "" after timeout seconds or end of file."""
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _writable, _errors = select.select([fd], [], [], remaining)
        if not readable:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            break
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace").strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (args.pidfile, args.ready_file, args.reader_pidfile, args.trigger_file):
        remove_if_present(path)
    if args.detach:
        return detach(args)
    if args.log:
        redirect_stdio(args.log)
    return victim_main(args)


if __name__ == "__main__":
    sys.exit(main())
