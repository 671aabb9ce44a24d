"""The crash role's victim program (roles/chardev_crash/files/chardev_victim.py, copied to the targets and
run there by Python 3.9 and up): its command line, its PID files and, against /dev/zero (which never
crashes), its non-crash paths. Nothing here loads a module or crashes a kernel.

The program is run as the targets run it, through subprocess on its file; its functions are imported by
its module name, from roles/chardev_crash/files on pytest's pythonpath (pyproject.toml).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import chardev_victim
import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils import chardev_proc

REPO_ROOT = Path(__file__).resolve().parents[2]
VICTIM = REPO_ROOT / "roles/chardev_crash/files/chardev_victim.py"


def victim_args(*extra: str) -> list[str]:
    return ["--pidfile", "/run/chardev-lab/victim.pid", "--ready-file", "/run/chardev-lab/ready", *extra]


def test_victim_read_defaults() -> None:
    args = chardev_victim.parse_args(["read", *victim_args()])
    assert args.mode == "read"
    assert args.device == "/dev/chardev"
    assert args.pidfile == "/run/chardev-lab/victim.pid"
    assert args.ready_file == "/run/chardev-lab/ready"
    assert args.trigger_file is None and args.log is None and args.detach is False
    assert args.timeout == 3600.0


def test_victim_splice_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = chardev_victim.parse_args(
        [
            "splice",
            "--device",
            "dev/chardev",
            *victim_args("--reader-pidfile", "reader.pid", "--trigger-file", "go", "--log", "v.log"),
            "--detach",
            "--timeout",
            "0",
        ]
    )
    assert args.mode == "splice"
    assert args.reader_pidfile == str(tmp_path / "reader.pid")  # absolute: --detach changes to /
    assert args.trigger_file == str(tmp_path / "go")
    assert args.log == str(tmp_path / "v.log")
    assert args.device == str(tmp_path / "dev/chardev")
    assert args.detach is True and args.timeout == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["splice", *victim_args()], "splice mode needs --reader-pidfile"),
        (["read", *victim_args("--detach")], "--detach needs --log"),
        (["read", *victim_args("--timeout", "-1")], "--timeout must be >= 0"),
        (["read", *victim_args("--trigger-file", "/run/chardev-lab/ready")], "must be different files"),
        (["read", *victim_args("--log", "/run/chardev-lab/victim.pid")], "--log must be a file of its own"),
        (["write", *victim_args()], "invalid choice"),
        (["read", "--ready-file", "/r"], "--pidfile"),
    ],
)
def test_victim_refuses_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        chardev_victim.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_victim_help() -> None:
    done = subprocess.run(
        [sys.executable, str(VICTIM), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0
    assert "SIGUSR1" in done.stdout and "--detach" in done.stdout and "--ready-file" in done.stdout


def test_victim_splice_falls_back_to_ctypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "splice", raising=False)
    read_end, write_end = os.pipe()
    source = os.open("/dev/zero", os.O_RDONLY)
    try:
        assert chardev_victim.splice(source, write_end, 100) == 100
        assert os.read(read_end, 200) == b"\0" * 100
        with pytest.raises(OSError):
            chardev_victim.splice(write_end, read_end, 10)
    finally:
        for fd in (read_end, write_end, source):
            os.close(fd)


def zero_is_a_chardev() -> bool:
    try:
        return stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    except OSError:
        return False


def live_pidfile_entry(path: Path, comm: str) -> int:
    """Check a PID file of the running victim program: "PID STARTTIME", the start time being that of the
    live process (field 22 of its /proc/<pid>/stat), which the lab's identity check accepts."""
    text = path.read_text()
    assert text.endswith("\n") and len(text.split()) == 2, text
    pid, starttime = (int(field) for field in text.split())
    assert chardev_proc.read_pidfile_entry(str(path)) == (pid, starttime)
    assert chardev_proc.read_pidfile(str(path)) == pid
    live = chardev_proc.read_task_state("/", pid)
    assert live is not None, f"pid {pid} is not running"
    assert live.starttime == starttime
    assert live.comm == comm
    assert chardev_proc.identify(comm.removeprefix("chardev-"), live, starttime) == ("starttime", None)
    return pid


def test_victim_pidfile_entry_is_pid_and_starttime() -> None:
    """pidfile_entry() of this very process: its pid and the start time in /proc/self/stat."""
    entry = chardev_victim.pidfile_entry()
    pid, starttime = (int(field) for field in entry.split())
    assert entry == f"{pid} {starttime}\n"
    assert pid == os.getpid()
    me = chardev_proc.read_task_state("/", os.getpid())
    assert me is not None and me.starttime == starttime


def test_victim_pidfile_entry_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a readable /proc/self/stat the PID file holds the pid alone (identified by comm)."""
    real_open = open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/self/stat":
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert chardev_victim.pidfile_entry() == f"{os.getpid()}\n"


@pytest.mark.skipif(not zero_is_a_chardev(), reason="needs /dev/zero")
@pytest.mark.parametrize("mode", ["read", "splice"])
def test_victim_without_crash_exits_4(mode: str, tmp_path: Path) -> None:
    """Against /dev/zero the trigger's read/splice just works: the victim says so and exits 4."""
    run = tmp_path / "run"
    argv = [
        sys.executable,
        str(VICTIM),
        mode,
        "--device",
        "/dev/zero",
        "--pidfile",
        str(run / "victim.pid"),
        "--reader-pidfile",
        str(run / "reader.pid"),
        "--ready-file",
        str(run / "ready"),
        "--trigger-file",
        str(run / "go"),
        "--log",
        str(run / "victim.log"),
        "--detach",
    ]
    started = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert started.returncode == 0, started.stderr
    assert "chardev victim ready" in started.stdout
    victim = live_pidfile_entry(run / "victim.pid", "chardev-victim")
    assert (run / "ready").read_text().startswith(f"victim={victim}")
    assert f"pid {victim}," in started.stdout
    if mode == "splice":
        reader = live_pidfile_entry(run / "reader.pid", "chardev-reader")
        assert reader != victim
    (run / "go").touch()
    log = run / "victim.log"
    for _attempt in range(100):
        if "no crash" in log.read_text():
            break
        time.sleep(0.1)
    text = log.read_text()
    assert "no crash (is the module still loaded?)" in text, text
    assert "holding /dev/zero open as fd" in text


def test_victim_detach_reports_open_errors(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        str(VICTIM),
        "read",
        "--device",
        str(tmp_path / "absent"),
        "--pidfile",
        str(tmp_path / "v.pid"),
        "--ready-file",
        str(tmp_path / "ready"),
        "--log",
        str(tmp_path / "v.log"),
        "--detach",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "cannot open" in done.stderr
    assert not (tmp_path / "ready").exists()
