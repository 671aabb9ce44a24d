#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Show what /dev/chardev does, check it, and print the result as one JSON document.

Runs as root on the lab hosts' system Python (3.9 on Debian 11, 3.11, 3.13), stdlib only. The checks:

  reads         open, read to the end and close, --reads times; each message must be
                "I already told you N times Hello world!" with N one more than the read before
                (N counts every open since the module was loaded, earlier runs included); with
                --first-count, the first N as well (0 right after the module was loaded: the
                module prints the count, then increments it, as the article's does)
  second open   while one descriptor holds the device open, a second open() must fail with EBUSY
  write         write() must fail with EINVAL (the open for writing itself succeeds and counts)
  rmmod         only with --expect-rmmod-refused (safe and classic variants): while the device is
                held open, "rmmod chardev" must fail with "Module chardev is in use"

All system calls go through a System object, so the unit tests can run every check against a fake
device; the judging and the summary are pure functions of what the checks observed.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

EXIT_OK = 0  # the demonstration ran; "ok" in the JSON says whether every check passed
EXIT_NO_DEVICE = 1  # the device does not exist or is not a character device
EXIT_USAGE = 2  # argparse's own code

VARIANTS = ("safe", "classic", "crash")
MODULE = "chardev"
SYS_MODULE = "/sys/module"
READ_SIZE = 4096
READ_LIMIT = 65536  # the message is under 64 bytes; a device that never reaches EOF is not ours
WRITE_DATA = b"hello from chardev_demo\n"
RMMOD_TIMEOUT = 30.0
EXPECTED_SHAPE = "I already told you N times Hello world!"
MESSAGE_RE = re.compile(r"I already told you (\d+) times Hello world!\n?")

EPILOG = """\
exit status: 0 the demonstration ran (the JSON's "ok" says whether every check passed),
1 the device does not exist or is not a character device, 2 usage error.

Never combine --expect-rmmod-refused with the crash variant: that module does not pin itself while its
file is open, so rmmod would unload it under the open file and the next use of the file would oops the
kernel. As a second guard, rmmod only runs when /sys/module/chardev/refcnt shows the module pinned.
"""


# --- the system calls, replaceable in tests -------------------------------------------------------------


def _read_text_file(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command with its output captured and untranslated, and no access to our descriptors."""
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=env,
        close_fds=True,
        check=False,
    )


@dataclass
class System:
    """Everything the checks do to the host. The defaults are the real calls."""

    open: Callable[[str, int], int] = os.open
    read: Callable[[int, int], bytes] = os.read
    write: Callable[[int, bytes], int] = os.write
    close: Callable[[int], None] = os.close
    stat: Callable[[str], os.stat_result] = os.stat
    read_text: Callable[[str], str] = _read_text_file
    run: Callable[[Sequence[str], float], subprocess.CompletedProcess] = _run_command


# --- pure functions: parsing and judging -----------------------------------------------------------------


def parse_message(text: str) -> int | None:
    """N from "I already told you N times Hello world!\\n", or None for anything else."""
    match = MESSAGE_RE.fullmatch(text)
    return int(match.group(1)) if match else None


def counts_consecutive(counts: Sequence[int | None]) -> bool:
    """True when every count was parsed and each is the one before plus one.

    The first count may be anything: the module counts every open since it was loaded.
    """
    if not counts:
        return False
    previous = None
    for n in counts:
        if n is None or (previous is not None and n != previous + 1):
            return False
        previous = n
    return True


def errno_name(number: int | None) -> str | None:
    """errno.EBUSY -> "EBUSY" (the number as text when Python has no name for it)."""
    if number is None:
        return None
    return errno.errorcode.get(number, str(number))


def os_error_text(exc: OSError) -> str:
    return exc.strerror or str(exc)


def parse_refcount(text: str) -> int | None:
    """The number in /sys/module/<name>/refcnt, or None when it is not a number."""
    try:
        return int(text.strip())
    except ValueError:
        return None


class Verdict(NamedTuple):
    """A judged check: its JSON entry, the error it adds (None when it passed), its summary line."""

    entry: dict[str, Any] | None
    error: str | None
    line: str


def judge_refusal(label: str, observed: dict[str, Any], expected: str) -> Verdict:
    """Judge an operation that must fail with the errno named `expected`.

    observed: {"setup_error": str or None, "errno": name or None, "error": str or None}; errno None
    means the operation succeeded (error then says what happened).
    """
    setup_error = observed.get("setup_error")
    name = observed.get("errno")
    text = observed.get("error")
    if setup_error:
        entry = {"ok": False, "errno": None, "error": setup_error}
        return Verdict(entry, f"{label}: not tried: {setup_error}", f"{label}: not tried: {setup_error}")
    entry = {"ok": name == expected, "errno": name, "error": text}
    if name == expected:
        return Verdict(entry, None, f"{label}: refused with {name} ({text})")
    if name is None:
        return Verdict(
            entry,
            f"{label}: expected {expected}, but it was not refused: {text}",
            f"{label}: NOT refused: {text}",
        )
    return Verdict(
        entry,
        f"{label}: expected {expected}, got {name} ({text})",
        f"{label}: refused with {name} ({text}), expected {expected}",
    )


def judge_rmmod(observed: dict[str, Any] | None, variant: str | None) -> Verdict:
    """Judge the rmmod while the device is held open; observed None means it was not asked for.

    observed: {"setup_error", "ran", "skipped", "refcount", "returncode", "output", "module_gone"}.
    """
    label = "rmmod while open"
    if observed is None:
        if variant == "crash":
            reason = (
                "crash variant: the module does not pin itself, so rmmod would unload it under the open "
                "file and the next use of that file would oops the kernel"
            )
        else:
            reason = "--expect-rmmod-refused not given"
        return Verdict(None, None, f"{label}: not tried ({reason})")

    output = observed.get("output") or ""
    entry = {
        "ok": False,
        "output": output,
        "ran": bool(observed.get("ran")),
        "refcount": observed.get("refcount"),
        "module_gone": bool(observed.get("module_gone")),
    }
    if observed.get("setup_error"):
        message = f"{label}: not tried: {observed['setup_error']}"
        return Verdict(entry, message, message)
    if not observed.get("ran"):
        message = f"{label}: NOT tried, for safety: {observed.get('skipped')}"
        return Verdict(entry, message, message)
    if observed.get("module_gone"):
        message = (
            f"{label}: rmmod SUCCEEDED: module {MODULE} was unloaded while the device was open. The open "
            "file now points into freed module memory; it was closed without another read, and even that "
            "close may oops the kernel. Reboot this host before using it again"
        )
        return Verdict(entry, message, f"{label}: SUCCEEDED, the module was unloaded under the open file")
    refused = observed.get("returncode") not in (None, 0) and "in use" in output
    if refused:
        entry["ok"] = True
        return Verdict(entry, None, f"{label}: refused: {output}")
    if observed.get("returncode") is None:
        message = f"{label}: rmmod did not finish: {output}"
    else:
        message = f"{label}: rmmod failed, but not because the module is in use: {output or '(no output)'}"
    return Verdict(entry, message, message)


def judge(
    device: str,
    variant: str | None,
    reads: Sequence[dict[str, Any]],
    second_open: dict[str, Any],
    write: dict[str, Any],
    rmmod: dict[str, Any] | None,
    first_count: int | None = None,
) -> dict[str, Any]:
    """The JSON document: every observation judged, with the errors and the student's summary."""
    errors: list[str] = []
    summary: list[str] = []
    read_entries = []
    for index, read in enumerate(reads, start=1):
        message = read.get("message") or ""
        error = read.get("error")
        n = None if error else parse_message(message)
        read_entries.append({"n": n, "message": message, "error": error})
        if error:
            errors.append(f"read {index}: {error}")
            summary.append(f"read {index}: failed: {error}")
        elif n is None:
            got = (
                "nothing (an empty message)"
                if not message
                else f"an unexpected message {json.dumps(message)}"
            )
            errors.append(f"read {index}: got {got}, expected {EXPECTED_SHAPE}")
            summary.append(f"read {index}: got {got}")
        else:
            summary.append(f"read {index}: {message.rstrip()}")
    counts = [entry["n"] for entry in read_entries]
    consecutive = counts_consecutive(counts)
    if not consecutive and counts and all(n is not None for n in counts):
        shown = ", ".join(str(n) for n in counts)
        errors.append(f"the counts are not consecutive: {shown} (each open should add exactly one)")
        summary.append(f"counts {shown}: NOT consecutive (each open should add exactly one)")

    first_ok = None
    if first_count is not None and counts and counts[0] is not None:
        first_ok = counts[0] == first_count
        if not first_ok:
            errors.append(
                f"read 1: the first count was {counts[0]}, expected {first_count} "
                "(the module prints the count, then increments it: the first read after loading says 0)"
            )
            summary.append(f"first count {counts[0]}: NOT {first_count}")

    verdicts = {
        "ebusy": judge_refusal("second open while open", second_open, "EBUSY"),
        "write_refused": judge_refusal("write", write, "EINVAL"),
        "rmmod_refused": judge_rmmod(rmmod, variant),
    }
    for verdict in verdicts.values():
        summary.append(verdict.line)
        if verdict.error:
            errors.append(verdict.error)

    if errors:
        summary.append(f"FAILED: {len(errors)} problem{'' if len(errors) == 1 else 's'} found")
    else:
        summary.append("all checks passed")
    return {
        "device": device,
        "variant": variant,
        "reads": read_entries,
        "counts_consecutive": consecutive,
        "first_count": {"expected": first_count, "ok": first_ok},
        "ebusy": verdicts["ebusy"].entry,
        "write_refused": verdicts["write_refused"].entry,
        "rmmod_refused": verdicts["rmmod_refused"].entry,
        "ok": not errors,
        "errors": errors,
        "summary": summary,
    }


# --- the checks: they observe, judge() decides -----------------------------------------------------------


def check_device(system: System, device: str) -> str | None:
    """None when device is a character device, else what is wrong with it."""
    try:
        mode = system.stat(device).st_mode
    except FileNotFoundError:
        return f"{device} does not exist (load the module and create the node first: the chardev role does)"
    except OSError as exc:
        return f"cannot stat {device}: {os_error_text(exc)}"
    if not stat.S_ISCHR(mode):
        return f"{device} is not a character device"
    return None


def read_to_end(system: System, fd: int) -> bytes:
    data = b""
    while True:
        chunk = system.read(fd, READ_SIZE)
        if not chunk:
            return data
        data += chunk
        if len(data) > READ_LIMIT:
            raise ValueError(f"no end of file after {len(data)} bytes")


def read_once(system: System, device: str) -> dict[str, Any]:
    """Open, read to the end, close: {"message": text, "error": None or what failed}."""
    try:
        fd = system.open(device, os.O_RDONLY)
    except OSError as exc:
        return {"message": "", "error": f"open failed with {errno_name(exc.errno)} ({os_error_text(exc)})"}
    try:
        data = read_to_end(system, fd)
    except OSError as exc:
        return {"message": "", "error": f"read failed with {errno_name(exc.errno)} ({os_error_text(exc)})"}
    except ValueError as exc:
        return {"message": "", "error": str(exc)}
    finally:
        system.close(fd)
    return {"message": data.decode("utf-8", errors="replace"), "error": None}


def check_second_open(system: System, device: str) -> dict[str, Any]:
    """Hold the device open and try to open it again."""
    try:
        held = system.open(device, os.O_RDONLY)
    except OSError as exc:
        return {"setup_error": f"could not open the device to hold it: {os_error_text(exc)}"}
    try:
        try:
            second = system.open(device, os.O_RDONLY)
        except OSError as exc:
            return {"setup_error": None, "errno": errno_name(exc.errno), "error": os_error_text(exc)}
        system.close(second)
        return {"setup_error": None, "errno": None, "error": "the second open succeeded"}
    finally:
        system.close(held)


def check_write(system: System, device: str) -> dict[str, Any]:
    """Open for writing (that open succeeds and counts as an open) and write."""
    try:
        fd = system.open(device, os.O_WRONLY)
    except OSError as exc:
        return {"setup_error": f"could not open the device for writing: {os_error_text(exc)}"}
    try:
        try:
            written = system.write(fd, WRITE_DATA)
        except OSError as exc:
            return {"setup_error": None, "errno": errno_name(exc.errno), "error": os_error_text(exc)}
        written_text = f"{written} of {len(WRITE_DATA)} bytes written"
        return {"setup_error": None, "errno": None, "error": written_text}
    finally:
        system.close(fd)


def module_refcount(system: System, module: str) -> tuple[int | None, str | None]:
    """(refcount, None), or (None, why it could not be read). A missing entry means: not loaded."""
    path = f"{SYS_MODULE}/{module}/refcnt"
    try:
        text = system.read_text(path)
    except FileNotFoundError:
        return None, f"{path} does not exist: is module {module} loaded?"
    except OSError as exc:
        return None, f"cannot read {path}: {os_error_text(exc)}"
    count = parse_refcount(text)
    if count is None:
        return None, f"{path} holds {text.strip()!r}, not a number"
    return count, None


def module_loaded(system: System, module: str) -> bool:
    """False only when /sys/module/<name>/refcnt is gone: the module is no longer loaded."""
    try:
        system.read_text(f"{SYS_MODULE}/{module}/refcnt")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def find_rmmod() -> str:
    """rmmod lives in /usr/sbin or /sbin, which a non-login PATH may lack."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("rmmod", path=search) or "rmmod"


def check_rmmod(system: System, device: str, module: str = MODULE) -> tuple[dict[str, Any], int | None]:
    """Hold the device open and ask rmmod to unload the module.

    Returns the observation and, only when the module is gone, the descriptor still to close: the
    caller closes it after printing the result, since on the unloaded module even close() may oops.
    Nothing is read from that descriptor again.
    """
    try:
        fd = system.open(device, os.O_RDONLY)
    except OSError as exc:
        return {"setup_error": f"could not open the device to hold it: {os_error_text(exc)}"}, None
    observed: dict[str, Any] = {
        "setup_error": None,
        "ran": False,
        "skipped": None,
        "refcount": None,
        "returncode": None,
        "output": "",
        "module_gone": False,
    }
    try:
        # Second guard after the variant check: a module that is not pinned while its file is open
        # (refcount 0) would be unloaded by rmmod, leaving this descriptor pointing into freed memory.
        refcount, problem = module_refcount(system, module)
        observed["refcount"] = refcount
        if problem or refcount is None or refcount < 1:
            observed["skipped"] = problem or (
                f"module {module} has refcount {refcount} while {device} is open, so it is not pinned and "
                "rmmod would unload it under the open file (is the crash variant loaded?)"
            )
            return observed, None
        observed["ran"] = True
        try:
            proc = system.run([find_rmmod(), module], RMMOD_TIMEOUT)
        except subprocess.TimeoutExpired:
            observed["output"] = f"no answer within {RMMOD_TIMEOUT:g} s"
        except OSError as exc:
            observed["output"] = f"cannot run rmmod: {os_error_text(exc)}"
        else:
            observed["returncode"] = proc.returncode
            observed["output"] = "\n".join(
                part.strip() for part in (proc.stdout or "", proc.stderr or "") if part.strip()
            )
        observed["module_gone"] = observed["returncode"] == 0 or not module_loaded(system, module)
        return observed, fd if observed["module_gone"] else None
    finally:
        if not observed["module_gone"]:
            system.close(fd)


# --- command line ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chardev_demo.py",
        description="Exercise the chardev lab's character device and print the result as JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="/dev/chardev", help="character device (default: %(default)s)")
    parser.add_argument("--variant", choices=VARIANTS, help="the module variant that is loaded")
    parser.add_argument(
        "--reads", type=int, default=3, help="how many times to open and read (1-100, default: %(default)s)"
    )
    parser.add_argument(
        "--first-count",
        type=int,
        help="the count the first read must show (0 when the module was loaded just before the demo)",
    )
    parser.add_argument(
        "--expect-rmmod-refused",
        action="store_true",
        help="also check that rmmod is refused while the device is open (safe and classic variants only)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; exits with status 2 and a message on errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.reads <= 100:
        parser.error("--reads must be between 1 and 100")
    if args.first_count is not None and args.first_count < 0:
        parser.error("--first-count must be 0 or more")
    if args.expect_rmmod_refused and args.variant == "crash":
        parser.error(
            "--expect-rmmod-refused cannot be used with --variant crash: that module does not pin itself "
            "while its file is open, so rmmod would unload it and the next use of the open file would "
            "oops the kernel"
        )
    if args.expect_rmmod_refused and args.variant is None:
        parser.error("--expect-rmmod-refused needs --variant safe or --variant classic")
    return args


def run_demo(system: System, args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    """Every check in order; returns the judged result and the descriptor still to close, if any."""
    reads = [read_once(system, args.device) for _read in range(args.reads)]
    second_open = check_second_open(system, args.device)
    write = check_write(system, args.device)
    rmmod = None
    dangling = None
    if args.expect_rmmod_refused:
        rmmod, dangling = check_rmmod(system, args.device)
    return judge(args.device, args.variant, reads, second_open, write, rmmod, args.first_count), dangling


def main(argv: Sequence[str] | None = None, system: System | None = None) -> int:
    args = parse_args(argv)
    system = system or System()
    problem = check_device(system, args.device)
    if problem:
        print(f"chardev_demo: {problem}", file=sys.stderr)
        return EXIT_NO_DEVICE
    result, dangling = run_demo(system, args)
    # One line: the Ansible role picks it out of output that may also carry stderr (ssh -tt).
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if dangling is not None:
        banner = "!" * 72
        print(
            f"{banner}\nchardev_demo: FAILED: rmmod unloaded module {MODULE} while {args.device} was open.\n"
            "Closing that file may oops the kernel. Reboot this host before using it again.\n"
            f"{banner}",
            file=sys.stderr,
            flush=True,
        )
        # Last of all, after the result is out: on the unloaded module this close() may oops the
        # kernel and kill this process. Never read from it first.
        system.close(dangling)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
