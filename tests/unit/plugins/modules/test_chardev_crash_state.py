"""Unit tests for plugins/modules/chardev_crash_state.py: the crash state of a lab host end to end (read,
mark, record, stop_leftover, the taint baseline) and operation=prepare (the layout of chardev, the lesson
marker, the hung-task timeout). The crash state itself
(plugins/module_utils/chardev_record.py) is tested in tests/unit/plugins/module_utils/test_chardev_crash.py.

Everything runs against a fake tree under tmp_path (/proc, /sys, /run, /var). The kernel log is read from
a /dev/kmsg path that does not exist with subprocess.run replaced, so this machine's /dev/kmsg is never
read and dmesg never runs. The only real processes are `sleep` children this file starts itself;
os.kill refuses to signal any other pid.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils import chardev_record
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    LESSON_MARKER_PATH,
    RUN_DIR,
)
from ansible_collections.chardev_lab.lab.plugins.modules import chardev_crash_state
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    BOOT_ID,
    OTHER_BOOT_ID,
    TAINT_AFTER_CRASH,
    TAINT_D,
    TAINT_E,
    TAINT_O,
    TAINT_P,
    FakeHost,
    failing_writes,
    kernel_text,
    run_module,
)

DMESG_RECURSIVE = kernel_text("bullseye", "dmesg-recursive-fault.txt")


def real_starttime(pid: int) -> int:
    """Field 22 of a real process's /proc/<pid>/stat."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


# --- the module end to end ----------------------------------------------------------------------------


class ModuleHost(FakeHost):
    """A FakeHost that the chardev_crash_state module sees as its root, with a fake dmesg."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(root)
        self.dmesg = ""
        self.dmesg_calls = 0
        self.signals: list[tuple[int, int]] = []
        self.signallable: set[int] = set()
        real_kill = os.kill

        def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
            assert argv == ["dmesg"]
            self.dmesg_calls += 1
            return subprocess.CompletedProcess(argv, 0, self.dmesg.encode(), b"")

        def guarded_kill(pid: int, sig: int) -> None:
            self.signals.append((pid, sig))
            if pid not in self.signallable:
                raise AssertionError(f"signal {sig} to pid {pid}, which this test did not start")
            real_kill(pid, sig)

        monkeypatch.setattr(chardev_crash_state, "STOP_WAIT", 3.0)
        monkeypatch.setattr(subprocess, "run", fake_run)
        monkeypatch.setattr(os, "kill", guarded_kill)


@pytest.fixture
def mhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleHost:
    return ModuleHost.booted(tmp_path / "root", monkeypatch=monkeypatch)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Real `sleep 60` children; every one left is killed and reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def start_sleeper(sleepers: list[subprocess.Popen[bytes]], mhost: ModuleHost) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    sleepers.append(child)
    mhost.signallable.add(child.pid)
    mhost.real_task(child.pid)
    return child


def test_module_read(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.tainted(TAINT_AFTER_CRASH)
    mhost.oops_count(2)
    mhost.record({"state": "crashed", "mode": "read"})
    mhost.dmesg = DMESG_RECURSIVE
    result = run_module(chardev_crash_state, {}, capsys, mhost.system())
    assert "failed" not in result
    assert result["changed"] is False
    assert (result["crashed"], result["phase"]) == (True, "done")
    assert result["reasons"] == [
        "crash record /run/chardev-lab/crashed.json (crashed)",
        "taint flag D (oops)",
        "oops_count 2",
        "recursive fault in the kernel log",
    ]
    assert result["recursive_fault"] is True  # from the fake dmesg: the fake /dev/kmsg does not exist
    assert mhost.dmesg_calls == 1
    assert result["files"]["victim"] == "/run/chardev-lab/victim.pid"
    assert not mhost.baseline_path.exists()


def test_module_read_fresh_host(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.tainted(0)
    result = run_module(chardev_crash_state, {"operation": "read"}, capsys, mhost.system())
    assert (result["changed"], result["crashed"], result["phase"], result["new_taint"]) == (
        False,
        False,
        "fresh",
        0,
    )
    assert result["record"] is None


def test_module_records_taint_baseline_once_per_boot(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.tainted(TAINT_P)
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert result["changed"] is True
    written = json.loads(mhost.baseline_path.read_text())
    assert (written["boot_id"], written["tainted"]) == (BOOT_ID, TAINT_P)
    assert written["recorded_at"].endswith("+00:00")
    assert result["taint_baseline"] == written
    # a second read in the same boot keeps the first record, even with more taint by then
    mhost.tainted(TAINT_P | TAINT_O | TAINT_E)
    before = mhost.baseline_path.read_text()
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert result["changed"] is False
    assert mhost.baseline_path.read_text() == before
    assert result["new_taint"] == TAINT_O | TAINT_E
    # a new boot records again (the module loaded: its own O and E are left out)
    mhost.boot_id(OTHER_BOOT_ID)
    mhost.module_loaded()
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert result["changed"] is True
    written = json.loads(mhost.baseline_path.read_text())
    assert (written["boot_id"], written["tainted"]) == (OTHER_BOOT_ID, TAINT_P)


def test_module_taint_baseline_in_check_mode(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.tainted(TAINT_P)
    result = run_module(
        chardev_crash_state,
        {"record_taint_baseline": True, "_ansible_check_mode": True},
        capsys,
        mhost.system(),
    )
    assert result["changed"] is True  # would record
    assert not mhost.baseline_path.exists()
    assert not (mhost.root / "var").exists()
    assert result["taint_baseline"] is None


def test_module_crashed_host_records_no_baseline(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.tainted(TAINT_P | TAINT_D)
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert (result["changed"], result["crashed"]) == (False, True)
    assert not mhost.baseline_path.exists()
    # nor one whose kernel log alone says so
    mhost.tainted(TAINT_P)
    mhost.dmesg = DMESG_RECURSIVE
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert (result["changed"], result["crashed"], result["phase"]) == (False, True, "recover")
    assert not mhost.baseline_path.exists()


def test_module_without_taint_file_records_no_baseline(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert (result["changed"], result["tainted"]) == (False, None)
    assert not mhost.baseline_path.exists()


def test_module_mark(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.module_loaded()
    mhost.tainted(TAINT_O | TAINT_E)
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.task(813, "chardev-reader", "S", starttime=4243)
    mhost.pidfile("victim.pid", "812 4242\n")
    mhost.pidfile("reader.pid", "813 4243\n")
    result = run_module(chardev_crash_state, {"operation": "mark", "mode": "splice"}, capsys, mhost.system())
    assert result["changed"] is True
    written = mhost.read_record()
    assert written == result["record"]
    assert written["state"] == "unloading"
    assert written["mode"] == "splice"
    assert written["marked_at"].endswith("+00:00")
    assert written["kernel_release"] == os.uname().release
    assert written["watched"] == {
        "victim": {"pid": 812, "comm": "chardev-victim", "identity": "starttime"},
        "reader": {"pid": 813, "comm": "chardev-reader", "identity": "starttime"},
    }
    # this boot, and the load of chardev the victim holds open
    assert written["boot_id"] == BOOT_ID
    assert written["module"] == {"sysfs_ino": mhost.path("/sys/module/chardev").stat().st_ino, "text": None}
    # interrupted before the rmmod: a leftover; after it: armed (the kernel still intact)
    assert run_module(chardev_crash_state, {}, capsys, mhost.system())["phase"] == "leftover"
    mhost.module_loaded(False)
    result = run_module(chardev_crash_state, {}, capsys, mhost.system())
    assert (result["crashed"], result["phase"]) == (False, "armed")


def test_module_mark_read_mode_and_check_mode(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.pidfile("victim.pid", "812 4242\n")
    mhost.pidfile("reader.pid", "813 4243\n")  # not watched in read mode
    result = run_module(
        chardev_crash_state,
        {"operation": "mark", "mode": "read", "_ansible_check_mode": True},
        capsys,
        mhost.system(),
    )
    assert result["changed"] is True
    assert result["record"]["watched"] == {
        "victim": {"pid": 812, "comm": "chardev-victim", "identity": "starttime"}
    }
    assert not (mhost.run / "crashed.json").exists()


def test_module_mark_and_record_need_their_options(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(chardev_crash_state, {"operation": "mark"}, capsys, mhost.system())
    assert result["failed"] is True and result["msg"] == "operation=mark needs mode"
    result = run_module(chardev_crash_state, {"operation": "record", "mode": "read"}, capsys, mhost.system())
    assert result["failed"] is True and "needs evidence" in result["msg"]
    assert not (mhost.run / "crashed.json").exists()


EVIDENCE = {
    "changed": False,
    "invocation": {"module_args": {"mode": "read"}},
    "as_expected": True,
    "tasks": [{"role": "victim", "pid": 812, "state": "X"}],
    "oops_tasks": [{"pid": 812, "comm": "chardev-victim"}],
    "kernel_release": "6.1.0-56-amd64",
    "msg": "crash evidence as expected for 6.1.0-56-amd64 (read)",
}


def test_module_record_completes_the_mark(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.pidfile("victim.pid", "812 4242\n")
    marked = run_module(chardev_crash_state, {"operation": "mark", "mode": "read"}, capsys, mhost.system())[
        "record"
    ]
    result = run_module(
        chardev_crash_state,
        {"operation": "record", "mode": "read", "evidence": EVIDENCE},
        capsys,
        mhost.system(),
    )
    assert result["changed"] is True
    written = mhost.read_record()
    assert written == result["record"]
    assert written["state"] == "crashed"
    assert written["mode"] == "read"
    assert written["boot_id"] == BOOT_ID  # it counts for this boot only
    assert written["marked_at"] == marked["marked_at"]
    assert written["crashed_at"].endswith("+00:00")
    assert "changed" not in written and "invocation" not in written
    for key in ("as_expected", "tasks", "oops_tasks", "kernel_release", "msg"):
        assert written[key] == EVIDENCE[key]
    mhost.tainted(TAINT_AFTER_CRASH)
    assert run_module(chardev_crash_state, {}, capsys, mhost.system())["phase"] == "done"


def test_module_record_without_mark_and_in_check_mode(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(
        chardev_crash_state,
        {"operation": "record", "mode": "splice", "evidence": EVIDENCE, "_ansible_check_mode": True},
        capsys,
        mhost.system(),
    )
    assert result["record"]["state"] == "crashed" and "marked_at" not in result["record"]
    assert not (mhost.run / "crashed.json").exists()
    mhost.record("{broken")  # a broken mark is replaced
    run_module(
        chardev_crash_state,
        {"operation": "record", "mode": "splice", "evidence": EVIDENCE},
        capsys,
        mhost.system(),
    )
    written = mhost.read_record()
    assert (written["state"], written["mode"]) == ("crashed", "splice")
    assert "marked_at" not in written


def test_module_stop_leftover_signals_the_identified_victim(
    mhost: ModuleHost, sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A real process whose pid and start time are in victim.pid is stopped; another one whose pid is in
    reader.pid with a wrong start time (the pid reused) is not signalled."""
    mhost.module_loaded()
    mhost.tainted(TAINT_O | TAINT_E)
    victim = start_sleeper(sleepers, mhost)
    stranger = start_sleeper(sleepers, mhost)
    mhost.pidfile("victim.pid", f"{victim.pid} {real_starttime(victim.pid)}\n")
    mhost.pidfile("reader.pid", f"{stranger.pid} {real_starttime(stranger.pid) + 1}\n")
    run_module(chardev_crash_state, {"operation": "mark", "mode": "splice"}, capsys, mhost.system())
    assert run_module(chardev_crash_state, {}, capsys, mhost.system())["phase"] == "leftover"
    result = run_module(chardev_crash_state, {"operation": "stop_leftover"}, capsys, mhost.system())
    assert "failed" not in result, result
    assert result["changed"] is True
    assert result["stopped"] == [victim.pid]
    assert victim.wait(timeout=5) == -signal.SIGTERM
    assert stranger.poll() is None  # still running
    assert mhost.signals == [(victim.pid, signal.SIGTERM)]
    assert result["phase"] == "fresh"  # read again after the stop


def test_module_stop_leftover_never_signals_a_reused_pid(
    mhost: ModuleHost, sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.module_loaded()
    stranger = start_sleeper(sleepers, mhost)
    mhost.pidfile("victim.pid", f"{stranger.pid} {real_starttime(stranger.pid) + 1}\n")
    result = run_module(chardev_crash_state, {"operation": "stop_leftover"}, capsys, mhost.system())
    assert (result["changed"], result["stopped"], result["phase"]) == (False, [], "fresh")
    assert mhost.signals == []
    assert stranger.poll() is None


def test_module_stop_leftover_check_mode(
    mhost: ModuleHost, sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.module_loaded()
    victim = start_sleeper(sleepers, mhost)
    mhost.pidfile("victim.pid", f"{victim.pid} {real_starttime(victim.pid)}\n")
    run_module(chardev_crash_state, {"operation": "mark", "mode": "read"}, capsys, mhost.system())
    result = run_module(
        chardev_crash_state,
        {"operation": "stop_leftover", "_ansible_check_mode": True},
        capsys,
        mhost.system(),
    )
    assert (result["changed"], result["stopped"], result["phase"]) == (True, [victim.pid], "leftover")
    assert mhost.signals == []
    assert victim.poll() is None


@pytest.mark.parametrize("situation", ["armed", "crashed"])
def test_module_stop_leftover_leaves_an_armed_or_crashed_host_alone(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str], situation: str
) -> None:
    """Module removed (closing the file would crash the kernel now), or the kernel already crashed."""
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.pidfile("victim.pid", "812 4242\n")
    if situation == "crashed":
        mhost.module_loaded()
        mhost.tainted(TAINT_AFTER_CRASH)
    result = run_module(chardev_crash_state, {"operation": "stop_leftover"}, capsys, mhost.system())
    assert (result["changed"], result["stopped"]) == (False, [])
    assert result["phase"] == ("armed" if situation == "armed" else "recover")
    assert mhost.signals == []


def test_module_stop_leftover_never_signals_the_victim_of_a_removed_load(
    mhost: ModuleHost, sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The crash's rmmod done, the victim not yet read, and chardev loaded again (make lab, or by hand):
    the victim holds the file of a freed module, and the SIGTERM's close would run its code. It is armed,
    never signalled, though a chardev is loaded."""
    mhost.module("crash")
    victim = start_sleeper(sleepers, mhost)  # a real process: a signal would really reach it
    mhost.pidfile("victim.pid", f"{victim.pid} {real_starttime(victim.pid)}\n")
    run_module(chardev_crash_state, {"operation": "mark", "mode": "read"}, capsys, mhost.system())
    mhost.rmmod()
    mhost.module("safe", sections={".text": "0xffffffffc0b71000"})
    result = run_module(chardev_crash_state, {"operation": "stop_leftover"}, capsys, mhost.system())
    assert (result["changed"], result["stopped"], result["phase"]) == (False, [], "armed")
    assert (result["crashed"], result["module_loaded"]) == (False, True)
    assert mhost.signals == []
    assert victim.poll() is None


def test_module_stop_leftover_stops_before_a_signal_once_the_load_is_gone(
    mhost: ModuleHost,
    sleepers: list[subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The load is checked again before each signal: removed between the read and the signal, the
    victim is not signalled."""
    mhost.module("crash")
    victim = start_sleeper(sleepers, mhost)
    mhost.pidfile("victim.pid", f"{victim.pid} {real_starttime(victim.pid)}\n")
    run_module(chardev_crash_state, {"operation": "mark", "mode": "read"}, capsys, mhost.system())
    real_live_leftovers = chardev_crash_state.live_leftovers

    def rmmod_meanwhile(run_dir: str, system: Any) -> list[int]:
        if mhost.path("/sys/module/chardev").exists():
            mhost.rmmod()
        return real_live_leftovers(run_dir, system)

    monkeypatch.setattr(chardev_crash_state, "live_leftovers", rmmod_meanwhile)
    result = run_module(chardev_crash_state, {"operation": "stop_leftover"}, capsys, mhost.system())
    assert mhost.signals == []
    assert victim.poll() is None
    assert result["phase"] == "armed"


@pytest.mark.parametrize(
    ("operation", "error", "words"),
    [
        ("mark", errno.ENOSPC, "No space left on device"),
        ("record", errno.EACCES, "Permission denied"),
    ],
)
def test_module_mark_and_record_say_why_the_record_cannot_be_written(
    mhost: ModuleHost,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
    error: int,
    words: str,
) -> None:
    """A full /run, or a run directory root may not write: a message that says what and what to do."""
    failing_writes(monkeypatch, chardev_record, "crashed.json", error)
    params = {"operation": operation, "mode": "read", "evidence": EVIDENCE}
    result = run_module(chardev_crash_state, params, capsys, mhost.system())
    assert result["failed"] is True
    assert result["msg"].startswith(f"writing the crash record {mhost.path(RUN_DIR)}/crashed.json failed: ")
    assert words in result["msg"]
    assert ("free some space" if error == errno.ENOSPC else "check the owner, mode") in result["msg"]
    assert "Traceback" not in json.dumps(result)
    assert not (mhost.run / "crashed.json").exists()


def test_module_new_taint_agrees_with_the_baseline_it_recorded(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.tainted(TAINT_P)
    result = run_module(chardev_crash_state, {"record_taint_baseline": True}, capsys, mhost.system())
    assert result["taint_baseline"]["tainted"] == TAINT_P
    assert result["new_taint"] == 0


# --- operation=prepare -----------------------------------------------------------------------------------


@pytest.fixture
def state_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    host = FakeHost.booted(tmp_path / "root")
    del monkeypatch  # the module sees the host through host.system()
    host.module("crash")
    return host


def prepare(host: FakeHost, check_mode: bool = False, **params: Any) -> dict[str, Any]:
    return chardev_crash_state.run(
        {"operation": "prepare", "run_dir": RUN_DIR, "hung_task_timeout": 10, **params},
        check_mode,
        host.system(),
    )


def test_prepare_first_run_and_again(state_host: FakeHost) -> None:
    result = prepare(state_host)
    assert result["changed"] is True
    layout = result["layout"]
    assert state_host.read_json(f"{RUN_DIR}/layout.json") == layout
    assert (layout["module"], layout["boot_id"], layout["kernel"]) == ("chardev", BOOT_ID, "6.1.0-56-amd64")
    assert (layout["readable"], layout["reason"]) == (True, None)
    assert layout["sections"][".rodata"] == "0xffffffffc0a65000"
    assert {"name": "chardev_fops", "type": "r", "address": "0xffffffffc0a651a0"} in layout["symbols"]
    assert "other_fn" not in {symbol["name"] for symbol in layout["symbols"]}

    settings = state_host.read_json(f"{RUN_DIR}/settings-before.json")
    assert (settings["boot_id"], settings["hung_task_timeout_secs"]) == (BOOT_ID, 120)
    marker = state_host.read_json(LESSON_MARKER_PATH)
    assert marker["boot_id"] == BOOT_ID and marker["prepared_at"].endswith("+00:00")
    assert state_host.path("/proc/sys/kernel/hung_task_timeout_secs").read_text() == "10\n"
    assert result["hung_task_timeout"] == {"before": 120, "now": 10, "lowered": True, "why": None}

    again = prepare(state_host)
    assert again["changed"] is False
    assert again["layout"] == layout
    assert again["hung_task_timeout"] == {"before": 120, "now": 10, "lowered": True, "why": None}
    assert state_host.read_json(f"{RUN_DIR}/settings-before.json") == settings  # the first value is kept
    assert state_host.read_json(LESSON_MARKER_PATH) == marker


def test_prepare_in_a_new_boot_writes_the_marker_again(state_host: FakeHost) -> None:
    prepare(state_host)
    state_host.write("/proc/sys/kernel/random/boot_id", OTHER_BOOT_ID + "\n")
    state_host.write("/proc/sys/kernel/hung_task_timeout_secs", "120\n")
    result = prepare(state_host)
    assert result["changed"] is True
    assert state_host.read_json(LESSON_MARKER_PATH)["boot_id"] == OTHER_BOOT_ID
    assert state_host.read_json(f"{RUN_DIR}/settings-before.json")["boot_id"] == OTHER_BOOT_ID
    assert result["hung_task_timeout"]["before"] == 120


def test_prepare_leaves_the_timeout_alone_when_it_would_panic(state_host: FakeHost) -> None:
    state_host.write("/proc/sys/kernel/hung_task_panic", "1\n")
    result = prepare(state_host)
    assert result["changed"] is True  # the layout and the marker
    hung = result["hung_task_timeout"]
    assert (hung["before"], hung["now"], hung["lowered"]) == (120, 120, False)
    assert hung["why"].startswith("kernel.hung_task_panic is 1")
    assert state_host.path("/proc/sys/kernel/hung_task_timeout_secs").read_text() == "120\n"
    assert not state_host.path(f"{RUN_DIR}/settings-before.json").exists()
    assert prepare(state_host)["changed"] is False


def test_prepare_with_hung_task_timeout_0(state_host: FakeHost) -> None:
    result = prepare(state_host, hung_task_timeout=0)
    assert result["hung_task_timeout"] == {
        "before": 120,
        "now": 120,
        "lowered": False,
        "why": "left alone (hung_task_timeout 0)",
    }
    assert state_host.path("/proc/sys/kernel/hung_task_timeout_secs").read_text() == "120\n"
    assert not state_host.path(f"{RUN_DIR}/settings-before.json").exists()


def test_prepare_without_a_hung_task_detector(state_host: FakeHost) -> None:
    state_host.path("/proc/sys/kernel/hung_task_timeout_secs").unlink()
    hung = prepare(state_host)["hung_task_timeout"]
    assert (hung["before"], hung["lowered"]) == (None, False)
    assert "this kernel has no hung-task detector" in hung["why"]
    assert not state_host.path("/proc/sys/kernel/hung_task_timeout_secs").exists()


def test_prepare_module_not_loaded(state_host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    state_host.rmmod()
    with pytest.raises(ValueError, match="cannot record where chardev lives: chardev is not loaded"):
        prepare(state_host)
    result = run_module(chardev_crash_state, {"operation": "prepare"}, capsys, state_host.system())
    assert result["failed"] is True
    assert "chardev is not loaded" in result["msg"]
    assert not state_host.path(f"{RUN_DIR}/layout.json").exists()
    assert not state_host.path(LESSON_MARKER_PATH).exists()


def test_prepare_in_check_mode_writes_nothing(
    state_host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(str(path) for path in state_host.root.rglob("*"))
    result = run_module(
        chardev_crash_state,
        {"operation": "prepare", "_ansible_check_mode": True},
        capsys,
        state_host.system(),
    )
    assert result["changed"] is True
    assert result["hung_task_timeout"] == {"before": 120, "now": 10, "lowered": True, "why": None}
    assert sorted(str(path) for path in state_host.root.rglob("*")) == before
    assert state_host.path("/proc/sys/kernel/hung_task_timeout_secs").read_text() == "120\n"
