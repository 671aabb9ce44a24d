"""Unit tests for the lab's demonstration script: roles/chardev_demo/files/chardev_demo.py, a program
copied to the targets. Its functions are imported by its module name, from roles/chardev_demo/files on
pytest's pythonpath (pyproject.toml); the command line is run through subprocess on the file.

The pure parts (message parsing, the consecutive check, the judging) get observations written by hand.
The checks and main() run against FakeChardev, a stand-in for the kernel module behind /dev/chardev
that follows its rules (one opener at a time, a counter per open, writes refused, rmmod refused while
the module is pinned) unless a test breaks one of them. The command line is also run for real, against
/dev/null (a character device that accepts everything) and paths that are not character devices.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chardev_demo import (
    System,
    counts_consecutive,
    judge,
    judge_refusal,
    judge_rmmod,
    main,
    parse_args,
    parse_message,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "roles/chardev_demo/files/chardev_demo.py"

DEVICE = "/dev/chardev"
REFCNT = "/sys/module/chardev/refcnt"
IN_USE = "rmmod: ERROR: Module chardev is in use"


def message(n: int) -> str:
    return f"I already told you {n} times Hello world!\n"


def refused(name: str) -> dict[str, Any]:
    return {"setup_error": None, "errno": name, "error": os.strerror(getattr(errno, name))}


# --- a fake chardev module ---------------------------------------------------------------------------------


class FakeChardev:
    """The module and its device node as the script sees them through System; records every call."""

    def __init__(
        self,
        *,
        count: int = 0,
        step: int = 1,
        exclusive: bool = True,
        write_errno: int | None = errno.EINVAL,
        pinned: bool = True,
        rmmod_unloads: bool = False,
        mode: int = stat.S_IFCHR | 0o644,
    ) -> None:
        self.count = count  # opens since the module was loaded
        self.step = step  # what each open adds (1 for the real module)
        self.exclusive = exclusive  # a second open gets EBUSY
        self.write_errno = write_errno  # None: writes are accepted
        self.pinned = pinned  # an open file holds a module reference (safe, classic)
        self.rmmod_unloads = rmmod_unloads  # rmmod succeeds even while the file is open
        self.mode = mode
        self.loaded = True
        self.files: dict[int, dict[str, Any]] = {}
        self.next_fd = 10
        self.calls: list[tuple[Any, ...]] = []

    def system(self) -> System:
        return System(
            open=self.open,
            read=self.read,
            write=self.write,
            close=self.close,
            stat=self.stat,
            read_text=self.read_text,
            run=self.run,
        )

    def stat(self, path: str) -> os.stat_result:
        if path != DEVICE:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return os.stat_result((self.mode, 1, 5, 1, 0, 0, 0, 0, 0, 0))

    def open(self, path: str, flags: int) -> int:
        self.calls.append(("open", flags))
        if path != DEVICE:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if not self.loaded:
            raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))
        if self.exclusive and self.files:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        # Like the module (and the article's): print the count, then increment it.
        fd = self.next_fd
        self.next_fd += 1
        self.files[fd] = {"data": message(self.count).encode(), "pos": 0}
        self.count += self.step
        return fd

    def read(self, fd: int, size: int) -> bytes:
        self.calls.append(("read", fd))
        assert self.loaded, "read() from a file of an unloaded module: this would oops the kernel"
        entry = self.files[fd]
        chunk = entry["data"][entry["pos"] : entry["pos"] + min(size, 7)]  # short reads, as a pipe might
        entry["pos"] += len(chunk)
        return chunk

    def write(self, fd: int, data: bytes) -> int:
        self.calls.append(("write", fd))
        assert fd in self.files
        if self.write_errno is not None:
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        return len(data)

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))
        del self.files[fd]

    def read_text(self, path: str) -> str:
        self.calls.append(("read_text", path))
        if path != REFCNT or not self.loaded:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return f"{len(self.files) if self.pinned else 0}\n"

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        self.calls.append(("run", tuple(argv)))
        assert Path(argv[0]).name == "rmmod" and argv[1:] == ["chardev"]
        assert timeout > 0
        if self.files and self.pinned and not self.rmmod_unloads:
            return subprocess.CompletedProcess(argv, 1, "", IN_USE + "\n")
        self.loaded = False
        return subprocess.CompletedProcess(argv, 0, "", "")


def run_main(fake: FakeChardev, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv, system=fake.system()) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "one JSON document on one line"
    return json.loads(out)


SAFE = ["--variant", "safe", "--expect-rmmod-refused"]


# --- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I already told you 1 times Hello world!\n", 1),
        ("I already told you 4294967295 times Hello world!\n", 4294967295),
        ("I already told you 7 times Hello world!", 7),  # no newline
        ("I already told you 0 times Hello world!\n", 0),  # the seed's module started at 0
        ("", None),
        ("I already told you -1 times Hello world!\n", None),
        ("I already told you N times Hello world!\n", None),
        ("I already told you 3 times Hello world!\nI already told you 4 times Hello world!\n", None),
        ("xI already told you 3 times Hello world!\n", None),
        ("I already told you 3 times Hello world!\n\n", None),
    ],
)
def test_parse_message(text: str, expected: int | None) -> None:
    assert parse_message(text) == expected


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([1], True),
        ([4, 5, 6], True),
        ([100, 101], True),  # earlier runs count too: any start is fine
        ([4, 6, 7], False),
        ([4, 4, 5], False),
        ([5, 4], False),
        ([4, None, 6], False),
        ([None], False),
        ([], False),
    ],
)
def test_counts_consecutive(counts: list[int | None], expected: bool) -> None:
    assert counts_consecutive(counts) is expected


# --- judging ------------------------------------------------------------------------------------------------


def good_observations() -> dict[str, Any]:
    return {
        "device": DEVICE,
        "variant": "safe",
        "reads": [{"message": message(n), "error": None} for n in (4, 5, 6)],
        "second_open": refused("EBUSY"),
        "write": refused("EINVAL"),
        "rmmod": {
            "setup_error": None,
            "ran": True,
            "skipped": None,
            "refcount": 1,
            "returncode": 1,
            "output": IN_USE,
            "module_gone": False,
        },
    }


def test_judge_all_good() -> None:
    result = judge(**good_observations())
    assert result["ok"] is True
    assert result["errors"] == []
    assert result["counts_consecutive"] is True
    assert [r["n"] for r in result["reads"]] == [4, 5, 6]
    assert result["ebusy"] == {"ok": True, "errno": "EBUSY", "error": "Device or resource busy"}
    assert result["write_refused"] == {"ok": True, "errno": "EINVAL", "error": "Invalid argument"}
    assert result["rmmod_refused"] == {
        "ok": True,
        "output": IN_USE,
        "ran": True,
        "refcount": 1,
        "module_gone": False,
    }
    assert result["summary"] == [
        "read 1: I already told you 4 times Hello world!",
        "read 2: I already told you 5 times Hello world!",
        "read 3: I already told you 6 times Hello world!",
        "second open while open: refused with EBUSY (Device or resource busy)",
        "write: refused with EINVAL (Invalid argument)",
        f"rmmod while open: refused: {IN_USE}",
        "all checks passed",
    ]


def test_judge_counts_not_consecutive() -> None:
    observations = good_observations()
    observations["reads"] = [{"message": message(n), "error": None} for n in (4, 6, 7)]
    result = judge(**observations)
    assert result["ok"] is False
    assert result["counts_consecutive"] is False
    assert result["errors"] == ["the counts are not consecutive: 4, 6, 7 (each open should add exactly one)"]
    assert result["summary"][3] == "counts 4, 6, 7: NOT consecutive (each open should add exactly one)"
    assert result["summary"][-1] == "FAILED: 1 problem found"


def test_judge_read_errors_and_bad_messages() -> None:
    observations = good_observations()
    observations["reads"] = [
        {"message": message(4), "error": None},
        {"message": "", "error": "open failed with EBUSY (Device or resource busy)"},
        {"message": "hello\n", "error": None},
    ]
    result = judge(**observations)
    assert result["ok"] is False
    assert result["reads"][1] == {
        "n": None,
        "message": "",
        "error": "open failed with EBUSY (Device or resource busy)",
    }
    assert result["errors"][0] == "read 2: open failed with EBUSY (Device or resource busy)"
    assert result["errors"][1] == (
        'read 3: got an unexpected message "hello\\n", expected I already told you N times Hello world!'
    )
    assert len(result["errors"]) == 2, "no separate counts error when a read already failed"
    assert result["summary"][:3] == [
        "read 1: I already told you 4 times Hello world!",
        "read 2: failed: open failed with EBUSY (Device or resource busy)",
        'read 3: got an unexpected message "hello\\n"',
    ]
    assert result["summary"][-1] == "FAILED: 2 problems found"


@pytest.mark.parametrize(
    ("observed", "ok", "error", "line"),
    [
        (refused("EBUSY"), True, None, "second open: refused with EBUSY (Device or resource busy)"),
        (
            {"setup_error": None, "errno": None, "error": "the second open succeeded"},
            False,
            "second open: expected EBUSY, but it was not refused: the second open succeeded",
            "second open: NOT refused: the second open succeeded",
        ),
        (
            refused("EACCES"),
            False,
            "second open: expected EBUSY, got EACCES (Permission denied)",
            "second open: refused with EACCES (Permission denied), expected EBUSY",
        ),
        (
            {"setup_error": "could not open the device to hold it: Device or resource busy"},
            False,
            "second open: not tried: could not open the device to hold it: Device or resource busy",
            "second open: not tried: could not open the device to hold it: Device or resource busy",
        ),
    ],
)
def test_judge_refusal(observed: dict[str, Any], ok: bool, error: str | None, line: str) -> None:
    verdict = judge_refusal("second open", observed, "EBUSY")
    assert verdict.entry is not None
    assert verdict.entry["ok"] is ok
    assert verdict.error == error
    assert verdict.line == line


def test_judge_refusal_does_not_count_a_busy_setup_as_ebusy() -> None:
    """The device held by someone else makes the first open fail with EBUSY: that proves nothing."""
    verdict = judge_refusal("second open", {"setup_error": "could not open: busy", "errno": "EBUSY"}, "EBUSY")
    assert verdict.entry == {"ok": False, "errno": None, "error": "could not open: busy"}


def rmmod_observed(**changes: Any) -> dict[str, Any]:
    observed = good_observations()["rmmod"]
    observed.update(changes)
    return observed


def test_judge_rmmod_not_asked() -> None:
    crash = judge_rmmod(None, "crash")
    assert crash.entry is None and crash.error is None
    assert crash.line.startswith("rmmod while open: not tried (crash variant:")
    assert judge_rmmod(None, "safe").line == "rmmod while open: not tried (--expect-rmmod-refused not given)"


def test_judge_rmmod_refused_for_the_wrong_reason() -> None:
    verdict = judge_rmmod(rmmod_observed(output="rmmod: ERROR: ... Operation not permitted"), "safe")
    assert verdict.entry is not None and verdict.entry["ok"] is False
    assert verdict.error is not None and "not because the module is in use" in verdict.error


def test_judge_rmmod_in_use_needs_a_failed_rmmod() -> None:
    verdict = judge_rmmod(rmmod_observed(returncode=0, output="in use?"), "safe")
    assert verdict.entry is not None and verdict.entry["ok"] is False


def test_judge_rmmod_module_gone_is_loud() -> None:
    verdict = judge_rmmod(rmmod_observed(returncode=0, output="", module_gone=True), "classic")
    assert verdict.entry is not None
    assert verdict.entry["ok"] is False and verdict.entry["module_gone"] is True
    assert verdict.error is not None
    assert "SUCCEEDED" in verdict.error and "Reboot" in verdict.error


def test_judge_rmmod_skipped_for_safety() -> None:
    verdict = judge_rmmod(rmmod_observed(ran=False, skipped="refcount 0", returncode=None, output=""), "safe")
    assert verdict.entry is not None and verdict.entry["ran"] is False
    assert verdict.error == "rmmod while open: NOT tried, for safety: refcount 0"


def test_judge_timeout() -> None:
    verdict = judge_rmmod(rmmod_observed(returncode=None, output="no answer within 30 s"), "safe")
    assert verdict.error == "rmmod while open: rmmod did not finish: no answer within 30 s"


# --- the command line ---------------------------------------------------------------------------------------


def test_parse_args_defaults() -> None:
    args = parse_args([])
    assert (args.device, args.variant, args.reads, args.expect_rmmod_refused) == (DEVICE, None, 3, False)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--variant", "crash", "--expect-rmmod-refused"], "cannot be used with --variant crash"),
        (["--expect-rmmod-refused"], "needs --variant safe or --variant classic"),
        (["--variant", "unsafe"], "invalid choice"),
        (["--reads", "0"], "--reads must be between 1 and 100"),
        (["--reads", "three"], "invalid int value"),
    ],
)
def test_parse_args_refuses(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert complaint in capsys.readouterr().err


def test_main_refuses_crash_with_rmmod_before_touching_the_device(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(pinned=False)
    with pytest.raises(SystemExit) as exc:
        main(["--variant", "crash", "--expect-rmmod-refused"], system=fake.system())
    assert exc.value.code == 2
    assert fake.calls == []
    assert "oops" in capsys.readouterr().err


# --- main() against the fake device ---------------------------------------------------------------------


def test_main_all_good(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(count=3)
    result = run_main(fake, SAFE, capsys)
    assert result["ok"] is True, result["errors"]
    assert result["device"] == DEVICE and result["variant"] == "safe"
    assert [r["n"] for r in result["reads"]] == [3, 4, 5]
    assert result["reads"][0]["message"] == message(3)
    assert result["first_count"] == {"expected": None, "ok": None}
    assert result["ebusy"]["ok"] and result["write_refused"]["ok"]
    assert result["rmmod_refused"]["ok"] is True
    assert result["rmmod_refused"]["refcount"] == 1
    assert result["summary"][-1] == "all checks passed"
    # reads 3, the held and the refused open, the open for writing, the open held across rmmod
    assert fake.count == 3 + 3 + 1 + 1 + 1
    assert fake.files == {}, "every descriptor was closed"
    assert fake.loaded


def test_main_the_next_run_continues_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev()
    first = run_main(fake, SAFE, capsys)
    second = run_main(fake, SAFE, capsys)
    assert [r["n"] for r in first["reads"]] == [0, 1, 2]
    assert [r["n"] for r in second["reads"]] == [6, 7, 8]
    assert second["ok"] is True


def test_main_first_count_after_loading_is_zero(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev()
    result = run_main(fake, [*SAFE, "--first-count", "0"], capsys)
    assert result["ok"] is True, result["errors"]
    assert result["summary"][0] == "read 1: I already told you 0 times Hello world!"
    assert result["first_count"] == {"expected": 0, "ok": True}


def test_main_first_count_wrong_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    # A module that increments before printing (the lab's before issue 10) says 1 first.
    fake = FakeChardev(count=1)
    result = run_main(fake, [*SAFE, "--first-count", "0"], capsys)
    assert result["ok"] is False
    assert result["first_count"] == {"expected": 0, "ok": False}
    assert result["errors"] == [
        "read 1: the first count was 1, expected 0 "
        "(the module prints the count, then increments it: the first read after loading says 0)"
    ]


def test_main_crash_variant_never_runs_rmmod(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(pinned=False)
    result = run_main(fake, ["--variant", "crash", "--reads", "2"], capsys)
    assert result["ok"] is True, result["errors"]
    assert result["rmmod_refused"] is None
    assert [r["n"] for r in result["reads"]] == [0, 1]
    assert not any(call[0] in ("run", "read_text") for call in fake.calls)
    assert fake.files == {}


def test_main_counts_not_consecutive(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(step=2)
    result = run_main(fake, SAFE, capsys)
    assert result["ok"] is False
    assert result["counts_consecutive"] is False
    assert [r["n"] for r in result["reads"]] == [0, 2, 4]
    assert result["errors"] == ["the counts are not consecutive: 0, 2, 4 (each open should add exactly one)"]


def test_main_second_open_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(exclusive=False)
    result = run_main(fake, SAFE, capsys)
    assert result["ok"] is False
    assert result["ebusy"] == {"ok": False, "errno": None, "error": "the second open succeeded"}
    assert result["errors"] == [
        "second open while open: expected EBUSY, but it was not refused: the second open succeeded"
    ]
    assert fake.files == {}, "both descriptors were closed"


def test_main_write_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(write_errno=None)
    result = run_main(fake, SAFE, capsys)
    assert result["ok"] is False
    assert result["write_refused"]["ok"] is False
    assert result["write_refused"]["errno"] is None
    assert result["errors"] == ["write: expected EINVAL, but it was not refused: 24 of 24 bytes written"]
    write_open = [call for call in fake.calls if call[0] == "open" and call[1] == os.O_WRONLY]
    assert len(write_open) == 1


def test_main_write_refused_with_another_errno(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(write_errno=errno.EPERM)
    result = run_main(fake, SAFE, capsys)
    assert result["write_refused"] == {"ok": False, "errno": "EPERM", "error": "Operation not permitted"}
    assert result["errors"] == ["write: expected EINVAL, got EPERM (Operation not permitted)"]


def test_main_rmmod_succeeds_no_read_after(capsys: pytest.CaptureFixture[str]) -> None:
    """The module is pinned as far as refcnt shows, yet rmmod unloads it (say, a race)."""
    fake = FakeChardev(rmmod_unloads=True)
    system = fake.system()
    seen_at_close: list[tuple[str, str]] = []

    def close(fd: int) -> None:
        if not fake.loaded:  # the dangling descriptor: the result must already be out
            captured = capsys.readouterr()
            seen_at_close.append((captured.out, captured.err))
        fake.close(fd)

    system.close = close
    assert main(SAFE, system=system) == 0
    assert capsys.readouterr().out == "", "nothing printed after the dangling close"
    assert len(seen_at_close) == 1
    out, err = seen_at_close[0]
    result = json.loads(out)
    assert result["ok"] is False
    assert result["rmmod_refused"]["ok"] is False
    assert result["rmmod_refused"]["module_gone"] is True
    assert any("rmmod SUCCEEDED" in error for error in result["errors"])
    assert "rmmod unloaded module chardev while /dev/chardev was open" in err
    assert "Reboot this host" in err
    rmmod_at = next(index for index, call in enumerate(fake.calls) if call[0] == "run")
    after = fake.calls[rmmod_at + 1 :]
    assert not any(call[0] == "read" for call in after), after
    closes = [call for call in after if call[0] == "close"]
    assert len(closes) == 1, "the held descriptor is closed, once, at the very end"
    assert after[-1] == closes[0]
    assert fake.files == {}


def test_main_refuses_rmmod_when_the_module_is_not_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """--variant safe but the crash module is loaded: refcnt 0 while open, so rmmod must not run."""
    fake = FakeChardev(pinned=False)
    result = run_main(fake, SAFE, capsys)
    assert result["ok"] is False
    assert not any(call[0] == "run" for call in fake.calls)
    assert fake.loaded
    assert result["rmmod_refused"]["ran"] is False
    assert result["rmmod_refused"]["refcount"] == 0
    assert result["errors"][-1].startswith(
        "rmmod while open: NOT tried, for safety: module chardev has refcount 0"
    )
    assert fake.files == {}


def test_main_rmmod_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev()

    def hang(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        raise subprocess.TimeoutExpired(argv, timeout)

    system = fake.system()
    system.run = hang
    assert main(SAFE, system=system) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["errors"] == ["rmmod while open: rmmod did not finish: no answer within 30 s"]
    assert fake.files == {}


def test_main_missing_device(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev()
    assert main(["--device", "/dev/nothing"], system=fake.system()) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "chardev_demo: /dev/nothing does not exist" in captured.err
    assert fake.calls == []


def test_main_not_a_char_device(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev(mode=stat.S_IFREG | 0o644)
    assert main([], system=fake.system()) == 1
    assert "/dev/chardev is not a character device" in capsys.readouterr().err


def test_read_without_eof_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeChardev()
    system = fake.system()
    system.read = lambda fd, size: b"x" * size
    assert main(["--reads", "1"], system=system) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reads"][0]["error"].startswith("no end of file after")
    assert fake.files == {}


# --- the real script, as Ansible runs it ------------------------------------------------------------------


def run_script(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_script_refuses_crash_with_rmmod() -> None:
    proc = run_script("--variant", "crash", "--expect-rmmod-refused")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--expect-rmmod-refused cannot be used with --variant crash" in proc.stderr


def test_script_missing_device(tmp_path: Path) -> None:
    proc = run_script("--device", str(tmp_path / "chardev"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "does not exist" in proc.stderr


def test_script_regular_file(tmp_path: Path) -> None:
    (tmp_path / "chardev").write_text(message(1))
    proc = run_script("--device", str(tmp_path / "chardev"))
    assert proc.returncode == 1
    assert "is not a character device" in proc.stderr


def working_pythons() -> list[str]:
    """This interpreter and any python3.9 / 3.11 / 3.13 on PATH that really runs (pyenv shims may not)."""
    found = {sys.executable}
    for minor in (9, 11, 13):
        candidate = shutil.which(f"python3.{minor}")
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            found.add(probe.stdout.strip())
    return sorted(found)


PYTHONS = working_pythons()


@pytest.mark.parametrize("python", PYTHONS)
def test_script_against_dev_null(python: str) -> None:
    """/dev/null is a character device that reads empty and takes any write: every check fails."""
    proc = run_script("--device", "/dev/null", "--variant", "safe", "--reads", "2", python=python)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(proc.stdout)
    assert result["ok"] is False
    assert result["reads"] == [{"n": None, "message": "", "error": None}] * 2
    assert result["ebusy"]["ok"] is False and result["write_refused"]["ok"] is False
    assert result["rmmod_refused"] is None
    assert result["summary"][0] == "read 1: got nothing (an empty message)"
    assert result["summary"][-1] == "FAILED: 4 problems found"


def test_script_is_python_3_9_syntax() -> None:
    """Debian 11 runs it with Python 3.9: no match statements or other newer syntax."""
    ast.parse(SCRIPT.read_text(), feature_version=(3, 9))


def test_script_is_stdlib_only() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= set(sys.stdlib_module_names)
