"""Unit tests for the crash state of a lab host: the "crash state" section of
roles/chardev_crash/module_utils/chardev_crash.py and the chardev_crash_state module.

Everything runs against a fake tree under tmp_path (/proc, /sys, /run, /var). The kernel log is given
as lines, or, for the module, read from a /dev/kmsg path that does not exist with subprocess.run
replaced, so this machine's /dev/kmsg is never read and dmesg never runs. The only real processes are
`sleep` children this file starts itself; os.kill refuses to signal any other pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chardev_crash_state
import pytest
from ansible.module_utils.testing import patch_module_args
from chardev_crash import (
    RUN_DIR,
    TAINT_BASELINE_PATH,
    TAINT_LAB,
    crash_state,
    parse_record,
    parse_taint_baseline,
    pidfiles_for,
    read_kernel_log_lines,
    run_files,
    taint_baseline_entry,
)

TAINT_D = 128
TAINT_P = 1
TAINT_O = 1 << 12
TAINT_E = 1 << 13
TAINT_AFTER_CRASH = TAINT_D | TAINT_O | TAINT_E
BOOT_ID = "0b7c6c3e-1f0e-4d43-9a0e-5b2b1c7e8f90"
OTHER_BOOT_ID = "7d0f3a1e-2b4c-4e5d-8f60-718293a4b5c6"

RECURSIVE_FAULT_LOG = [
    "chardev: unregistered",
    "Fixing recursive fault but reboot is needed!",
]
OOPS_LOG_6_1 = [
    "BUG: unable to handle page fault for address: ffffffffc0a2e2c0",
    "Oops: 0000 [#1] PREEMPT SMP NOPTI",
    "CPU: 0 PID: 845 Comm: chardev-victim Tainted: G           OE      6.1.0-56-amd64 #1  Debian 6.1.158-1",
    "Fixing recursive fault but reboot is needed!",
]
DMESG_RECURSIVE = "[  260.1] chardev: unregistered\n[  260.2] Fixing recursive fault but reboot is needed!\n"


def stat_line(pid: int, comm: str, state: str, starttime: int) -> str:
    """A /proc/<pid>/stat line with every field up to 22 (starttime) and a few after it."""
    return f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {starttime} 0 0\n"


def real_starttime(pid: int) -> int:
    """Field 22 of a real process's /proc/<pid>/stat."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


class FakeHost:
    """/proc, /sys, /run/chardev-lab and /var/lib/chardev-lab of a lab host below root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run = root / RUN_DIR.lstrip("/")
        self.run.mkdir(parents=True)
        (root / "proc/sys/kernel/random").mkdir(parents=True)
        (root / "sys/kernel").mkdir(parents=True)
        self.boot_id(BOOT_ID)

    def write(self, path: str, text: str) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def tainted(self, value: int) -> None:
        self.write("/proc/sys/kernel/tainted", f"{value}\n")

    def oops_count(self, value: int) -> None:
        self.write("/sys/kernel/oops_count", f"{value}\n")

    def boot_id(self, value: str) -> None:
        self.write("/proc/sys/kernel/random/boot_id", f"{value}\n")

    def module_loaded(self, loaded: bool = True) -> None:
        module = self.root / "sys/module/chardev"
        if loaded:
            module.mkdir(parents=True, exist_ok=True)
        elif module.exists():
            module.rmdir()

    def record(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        (self.run / "crashed.json").write_text(text)

    def read_record(self) -> dict[str, Any]:
        return json.loads((self.run / "crashed.json").read_text())

    def task(self, pid: int, comm: str, state: str, starttime: int) -> None:
        proc = self.root / "proc" / str(pid)
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "stat").write_text(stat_line(pid, comm, state, starttime))
        (proc / "wchan").write_text("0")

    def real_task(self, pid: int) -> None:
        """A real process seen through the fake /proc (a symbolic link to /proc/<pid>)."""
        (self.root / "proc" / str(pid)).symlink_to(f"/proc/{pid}")

    def pidfile(self, role: str, text: str) -> None:
        (self.run / f"{role}.pid").write_text(text)

    def baseline(self, data: Any) -> Path:
        text = data if isinstance(data, str) else json.dumps(data)
        return self.write(TAINT_BASELINE_PATH, text)

    @property
    def baseline_path(self) -> Path:
        return self.root / TAINT_BASELINE_PATH.lstrip("/")

    def state(self, log_lines: list[str] | None = None) -> dict[str, Any]:
        return crash_state(str(self.root), RUN_DIR, log_lines, TAINT_BASELINE_PATH)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "root")


# --- run_files, pidfiles_for, parse_record ------------------------------------------------------------


def test_run_files() -> None:
    assert run_files() == {
        "record": "/run/chardev-lab/crashed.json",
        "victim": "/run/chardev-lab/victim.pid",
        "reader": "/run/chardev-lab/reader.pid",
        "ready": "/run/chardev-lab/ready",
        "trigger": "/run/chardev-lab/trigger",
        "log": "/run/chardev-lab/victim.log",
        "program": "/run/chardev-lab/chardev_victim.py",
        "layout": "/run/chardev-lab/layout.json",
        "settings": "/run/chardev-lab/settings-before.json",
    }
    assert run_files("/tmp/x")["victim"] == "/tmp/x/victim.pid"


def test_pidfiles_for() -> None:
    assert pidfiles_for("splice") == {
        "victim": "/run/chardev-lab/victim.pid",
        "reader": "/run/chardev-lab/reader.pid",
    }
    assert pidfiles_for("read", "/tmp/x") == {"victim": "/tmp/x/victim.pid"}  # no pipe reader
    with pytest.raises(ValueError, match="unknown mode 'write'"):
        pidfiles_for("write")


def test_parse_record() -> None:
    assert parse_record(None) == (None, None)
    assert parse_record('{"state": "crashed"}') == ({"state": "crashed"}, None)
    record, error = parse_record("{half")
    assert record == {} and (error or "").startswith("not JSON")
    assert parse_record("[1, 2]") == ({}, "not a JSON object")


def test_parse_taint_baseline() -> None:
    good = {"boot_id": BOOT_ID, "tainted": 1, "recorded_at": "2026-11-26T09:10:00+00:00"}
    assert parse_taint_baseline(json.dumps(good)) == good
    for text in (None, "", "{broken", "[]", '{"tainted": "1"}', '{"boot_id": "x"}'):
        assert parse_taint_baseline(text) is None, text


def test_taint_baseline_entry_drops_the_labs_own_bits_when_loaded() -> None:
    tainted = TAINT_P | TAINT_O | TAINT_E
    assert TAINT_LAB == TAINT_O | TAINT_E
    assert taint_baseline_entry(tainted, BOOT_ID, True, "now") == {
        "boot_id": BOOT_ID,
        "tainted": TAINT_P,
        "recorded_at": "now",
    }
    # not loaded: O and E come from another module of the host, and belong to its baseline
    assert taint_baseline_entry(tainted, None, False, "now")["tainted"] == tainted
    assert taint_baseline_entry(0, BOOT_ID, True, "now")["tainted"] == 0


# --- read_kernel_log_lines ----------------------------------------------------------------------------


def test_read_kernel_log_lines_from_kmsg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("1,1043,301222000,-;Fixing recursive fault but reboot is needed!\n SUBSYSTEM=none\n")

    def no_dmesg(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dmesg must not run when /dev/kmsg can be read")

    monkeypatch.setattr(subprocess, "run", no_dmesg)
    assert read_kernel_log_lines(str(kmsg)) == (["Fixing recursive fault but reboot is needed!"], str(kmsg))


def test_read_kernel_log_lines_falls_back_to_dmesg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    outcome: dict[str, Any] = {"returncode": 0}

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        assert kwargs["timeout"] == 7
        assert kwargs["stdin"] == subprocess.DEVNULL
        if outcome.get("raise"):
            raise outcome["raise"]
        return subprocess.CompletedProcess(argv, outcome["returncode"], DMESG_RECURSIVE.encode(), b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    absent = str(tmp_path / "no-kmsg")
    lines, source = read_kernel_log_lines(absent, 7)
    assert (source, calls) == ("dmesg", [["dmesg"]])
    assert lines[1].endswith("Fixing recursive fault but reboot is needed!")
    outcome["returncode"] = 1
    assert read_kernel_log_lines(absent, 7) == ([], "none")
    outcome["raise"] = FileNotFoundError(2, "No such file or directory", "dmesg")
    assert read_kernel_log_lines(absent, 7) == ([], "none")
    outcome["raise"] = subprocess.TimeoutExpired(["dmesg"], 7)
    assert read_kernel_log_lines(absent, 7) == ([], "none")


# --- crash_state: phases ------------------------------------------------------------------------------


def test_fresh_host(host: FakeHost) -> None:
    state = host.state()
    assert state["crashed"] is False
    assert state["reasons"] == []
    assert state["phase"] == "fresh"
    assert (state["record"], state["record_error"]) == (None, None)
    assert state["record_path"] == "/run/chardev-lab/crashed.json"
    assert state["files"] == run_files()
    assert state["leftovers"] == []
    assert state["module_loaded"] is False
    assert (state["tainted"], state["taint_die"], state["oops_count"]) == (None, False, None)
    assert (state["oops"], state["recursive_fault"]) == (False, False)
    assert state["boot_id"] == BOOT_ID
    assert (state["taint_baseline"], state["new_taint"]) == (None, None)
    assert (state["panic_on_oops"], state["oops_limit"], state["lockdown"]) == (None, None, None)


def test_fresh_host_with_sysctls_and_a_loaded_module(host: FakeHost) -> None:
    host.tainted(TAINT_O | TAINT_E)
    host.oops_count(0)
    host.module_loaded()
    host.write("/proc/sys/kernel/panic_on_oops", "1\n")
    host.write("/proc/sys/kernel/oops_limit", "10000\n")
    host.write("/sys/kernel/security/lockdown", "[none] integrity confidentiality\n")
    state = host.state(["chardev: registered with major 247"])
    assert (state["crashed"], state["phase"], state["reasons"]) == (False, "fresh", [])
    assert (state["tainted"], state["oops_count"], state["module_loaded"]) == (TAINT_O | TAINT_E, 0, True)
    assert (state["panic_on_oops"], state["oops_limit"]) == (1, 10000)
    assert state["lockdown"] == "[none] integrity confidentiality"


def test_done_complete_record(host: FakeHost) -> None:
    record = {
        "state": "crashed",
        "mode": "splice",
        "as_expected": True,
        "marked_at": "t0",
        "crashed_at": "t1",
    }
    host.record(record)
    host.tainted(TAINT_AFTER_CRASH)
    host.oops_count(2)
    state = host.state(OOPS_LOG_6_1)
    assert state["crashed"] is True
    assert state["phase"] == "done"
    assert state["record"] == record
    assert state["reasons"] == [
        "crash record /run/chardev-lab/crashed.json (crashed)",
        "taint flag D (oops)",
        "oops_count 2",
        "oops in the kernel log",
        "recursive fault in the kernel log",
    ]
    assert (state["taint_die"], state["oops"], state["recursive_fault"]) == (True, True, True)


def test_done_record_of_an_older_role_without_state(host: FakeHost) -> None:
    """The records written before "state" existed are complete crash records."""
    host.record({"mode": "read", "crashed_at": "t1"})
    state = host.state()
    assert (state["crashed"], state["phase"]) == (True, "done")
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (crashed)"]


def test_recover_taint_d_without_record(host: FakeHost) -> None:
    host.tainted(TAINT_AFTER_CRASH)
    state = host.state()
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["reasons"] == ["taint flag D (oops)"]


def test_recover_unloading_record_and_oops_count(host: FakeHost) -> None:
    """The run was interrupted after the crash: the record still says "unloading"."""
    host.record({"state": "unloading", "mode": "splice", "marked_at": "t0"})
    host.tainted(0)
    host.oops_count(2)
    state = host.state()
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (unloading)", "oops_count 2"]
    assert state["record"]["mode"] == "splice"


def test_recover_recursive_fault_in_the_log_only(host: FakeHost) -> None:
    """No record, no taint file, no oops count: the kernel log alone says the kernel is damaged."""
    state = host.state(RECURSIVE_FAULT_LOG)
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["reasons"] == ["recursive fault in the kernel log"]
    assert state["recursive_fault"] is True
    # the same host without the log lines is fresh
    assert host.state()["phase"] == "fresh"


@pytest.mark.parametrize(
    ("text", "why"), [("{half a record", "not JSON"), ('["crashed"]', "not a JSON object")]
)
def test_recover_broken_record(host: FakeHost, text: str, why: str) -> None:
    """A broken record counts as a crash (the safe side) that is not completely recorded."""
    host.record(text)
    host.tainted(0)
    state = host.state()
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["record"] == {}
    assert (state["record_error"] or "").startswith(why)
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (unreadable)"]


def test_armed_module_removed_under_a_live_victim(host: FakeHost) -> None:
    host.record({"state": "unloading", "mode": "read", "marked_at": "t0"})
    host.tainted(TAINT_O | TAINT_E)
    host.task(812, "chardev-victim", "S", starttime=4242)
    host.pidfile("victim", "812 4242\n")
    state = host.state(["chardev: unregistered"])
    assert state["module_loaded"] is False
    assert (state["crashed"], state["phase"]) == (False, "armed")
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (unloading)"]
    assert [(t["role"], t["pid"], t["state"], t["identity"]) for t in state["leftovers"]] == [
        ("victim", 812, "S", "starttime")
    ]


def test_leftover_live_victim_module_loaded(host: FakeHost) -> None:
    host.module_loaded()
    host.tainted(TAINT_O | TAINT_E)
    host.task(812, "chardev-victim", "S", starttime=4242)
    host.task(813, "chardev-reader", "S", starttime=4243)
    host.pidfile("victim", "812 4242\n")
    host.pidfile("reader", "813 4243\n")
    state = host.state()
    assert (state["crashed"], state["phase"]) == (False, "leftover")
    assert [(t["role"], t["pid"]) for t in state["leftovers"]] == [("victim", 812), ("reader", 813)]


def test_reused_victim_pid_is_not_a_leftover(host: FakeHost) -> None:
    """The victim's pid now belongs to another process (other start time): nothing is left over."""
    host.module_loaded()
    host.tainted(0)
    host.task(812, "chardev-victim", "S", starttime=9999)
    host.pidfile("victim", "812 4242\n")
    state = host.state()
    assert (state["phase"], state["leftovers"]) == ("fresh", [])
    host.module_loaded(False)
    assert host.state()["phase"] == "fresh"  # nor armed


def test_old_pidfile_of_another_command_is_not_a_leftover(host: FakeHost) -> None:
    host.module_loaded()
    host.task(812, "sshd", "S", starttime=9999)
    host.pidfile("victim", "812\n")  # no start time: the command name decides
    assert host.state()["phase"] == "fresh"
    host.task(812, "chardev-victim", "S", starttime=9999)  # overwrite: now it is the victim
    state = host.state()
    assert state["phase"] == "leftover"
    assert state["leftovers"][0]["identity"] == "comm"


def test_stuck_victim_without_crash_markers_is_not_alive(host: FakeHost) -> None:
    """A victim already in D or X is not "alive": not armed, not a leftover to stop."""
    host.task(812, "chardev-victim", "D", starttime=4242)
    host.pidfile("victim", "812 4242\n")
    state = host.state()
    assert state["phase"] == "fresh"
    assert [t["state"] for t in state["leftovers"]] == ["D"]


# --- crash_state: taint before the lab ----------------------------------------------------------------


def test_new_taint_without_baseline_is_all_of_it(host: FakeHost) -> None:
    host.tainted(TAINT_P | TAINT_O | TAINT_E)
    state = host.state()
    assert state["taint_baseline"] is None
    assert state["new_taint"] == TAINT_P | TAINT_O | TAINT_E


def test_new_taint_with_baseline(host: FakeHost) -> None:
    baseline = {"boot_id": BOOT_ID, "tainted": TAINT_P, "recorded_at": "t0"}
    host.baseline(baseline)
    host.tainted(TAINT_P)
    state = host.state()
    assert (state["taint_baseline"], state["new_taint"]) == (baseline, 0)
    host.tainted(TAINT_P | TAINT_O | TAINT_E)
    assert host.state()["new_taint"] == TAINT_O | TAINT_E


def test_new_taint_with_a_broken_baseline(host: FakeHost) -> None:
    host.baseline("{not json")
    host.tainted(TAINT_P)
    state = host.state()
    assert (state["taint_baseline"], state["new_taint"]) == (None, TAINT_P)


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

        monkeypatch.setattr(chardev_crash_state, "ROOT", str(root))
        monkeypatch.setattr(chardev_crash_state, "KMSG_PATH", str(root / "dev/kmsg-absent"))
        monkeypatch.setattr(chardev_crash_state, "STOP_WAIT", 3.0)
        monkeypatch.setattr(subprocess, "run", fake_run)
        monkeypatch.setattr(os, "kill", guarded_kill)


@pytest.fixture
def mhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleHost:
    return ModuleHost(tmp_path / "root", monkeypatch)


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


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        chardev_crash_state.main()
    return json.loads(capsys.readouterr().out)


def test_module_read(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.tainted(TAINT_AFTER_CRASH)
    mhost.oops_count(2)
    mhost.record({"state": "crashed", "mode": "read"})
    mhost.dmesg = DMESG_RECURSIVE
    result = run_module({}, capsys)
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
    result = run_module({"operation": "read"}, capsys)
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
    result = run_module({"record_taint_baseline": True}, capsys)
    assert result["changed"] is True
    written = json.loads(mhost.baseline_path.read_text())
    assert (written["boot_id"], written["tainted"]) == (BOOT_ID, TAINT_P)
    assert written["recorded_at"].endswith("+00:00")
    assert result["taint_baseline"] == written
    # a second read in the same boot keeps the first record, even with more taint by then
    mhost.tainted(TAINT_P | TAINT_O | TAINT_E)
    before = mhost.baseline_path.read_text()
    result = run_module({"record_taint_baseline": True}, capsys)
    assert result["changed"] is False
    assert mhost.baseline_path.read_text() == before
    assert result["new_taint"] == TAINT_O | TAINT_E
    # a new boot records again (the module loaded: its own O and E are left out)
    mhost.boot_id(OTHER_BOOT_ID)
    mhost.module_loaded()
    result = run_module({"record_taint_baseline": True}, capsys)
    assert result["changed"] is True
    written = json.loads(mhost.baseline_path.read_text())
    assert (written["boot_id"], written["tainted"]) == (OTHER_BOOT_ID, TAINT_P)


def test_module_taint_baseline_in_check_mode(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.tainted(TAINT_P)
    result = run_module({"record_taint_baseline": True, "_ansible_check_mode": True}, capsys)
    assert result["changed"] is True  # would record
    assert not mhost.baseline_path.exists()
    assert not (mhost.root / "var").exists()
    assert result["taint_baseline"] is None


def test_module_crashed_host_records_no_baseline(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.tainted(TAINT_P | TAINT_D)
    result = run_module({"record_taint_baseline": True}, capsys)
    assert (result["changed"], result["crashed"]) == (False, True)
    assert not mhost.baseline_path.exists()
    # nor one whose kernel log alone says so
    mhost.tainted(TAINT_P)
    mhost.dmesg = DMESG_RECURSIVE
    result = run_module({"record_taint_baseline": True}, capsys)
    assert (result["changed"], result["crashed"], result["phase"]) == (False, True, "recover")
    assert not mhost.baseline_path.exists()


def test_module_without_taint_file_records_no_baseline(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module({"record_taint_baseline": True}, capsys)
    assert (result["changed"], result["tainted"]) == (False, None)
    assert not mhost.baseline_path.exists()


def test_module_mark(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.module_loaded()
    mhost.tainted(TAINT_O | TAINT_E)
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.task(813, "chardev-reader", "S", starttime=4243)
    mhost.pidfile("victim", "812 4242\n")
    mhost.pidfile("reader", "813 4243\n")
    result = run_module({"operation": "mark", "mode": "splice"}, capsys)
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
    # interrupted before the rmmod: a leftover; after it: armed (the kernel still intact)
    assert run_module({}, capsys)["phase"] == "leftover"
    mhost.module_loaded(False)
    result = run_module({}, capsys)
    assert (result["crashed"], result["phase"]) == (False, "armed")


def test_module_mark_read_mode_and_check_mode(mhost: ModuleHost, capsys: pytest.CaptureFixture[str]) -> None:
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.pidfile("victim", "812 4242\n")
    mhost.pidfile("reader", "813 4243\n")  # not watched in read mode
    result = run_module({"operation": "mark", "mode": "read", "_ansible_check_mode": True}, capsys)
    assert result["changed"] is True
    assert result["record"]["watched"] == {
        "victim": {"pid": 812, "comm": "chardev-victim", "identity": "starttime"}
    }
    assert not (mhost.run / "crashed.json").exists()


def test_module_mark_and_record_need_their_options(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module({"operation": "mark"}, capsys)
    assert result["failed"] is True and result["msg"] == "operation=mark needs mode"
    result = run_module({"operation": "record", "mode": "read"}, capsys)
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
    mhost.pidfile("victim", "812 4242\n")
    marked = run_module({"operation": "mark", "mode": "read"}, capsys)["record"]
    result = run_module({"operation": "record", "mode": "read", "evidence": EVIDENCE}, capsys)
    assert result["changed"] is True
    written = mhost.read_record()
    assert written == result["record"]
    assert written["state"] == "crashed"
    assert written["mode"] == "read"
    assert written["marked_at"] == marked["marked_at"]
    assert written["crashed_at"].endswith("+00:00")
    assert "changed" not in written and "invocation" not in written
    for key in ("as_expected", "tasks", "oops_tasks", "kernel_release", "msg"):
        assert written[key] == EVIDENCE[key]
    mhost.tainted(TAINT_AFTER_CRASH)
    assert run_module({}, capsys)["phase"] == "done"


def test_module_record_without_mark_and_in_check_mode(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(
        {"operation": "record", "mode": "splice", "evidence": EVIDENCE, "_ansible_check_mode": True}, capsys
    )
    assert result["record"]["state"] == "crashed" and "marked_at" not in result["record"]
    assert not (mhost.run / "crashed.json").exists()
    mhost.record("{broken")  # a broken mark is replaced
    run_module({"operation": "record", "mode": "splice", "evidence": EVIDENCE}, capsys)
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
    mhost.pidfile("victim", f"{victim.pid} {real_starttime(victim.pid)}\n")
    mhost.pidfile("reader", f"{stranger.pid} {real_starttime(stranger.pid) + 1}\n")
    assert run_module({}, capsys)["phase"] == "leftover"
    result = run_module({"operation": "stop_leftover"}, capsys)
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
    mhost.pidfile("victim", f"{stranger.pid} {real_starttime(stranger.pid) + 1}\n")
    result = run_module({"operation": "stop_leftover"}, capsys)
    assert (result["changed"], result["stopped"], result["phase"]) == (False, [], "fresh")
    assert mhost.signals == []
    assert stranger.poll() is None


def test_module_stop_leftover_check_mode(
    mhost: ModuleHost, sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.module_loaded()
    victim = start_sleeper(sleepers, mhost)
    mhost.pidfile("victim", f"{victim.pid} {real_starttime(victim.pid)}\n")
    result = run_module({"operation": "stop_leftover", "_ansible_check_mode": True}, capsys)
    assert (result["changed"], result["stopped"], result["phase"]) == (True, [victim.pid], "leftover")
    assert mhost.signals == []
    assert victim.poll() is None


@pytest.mark.parametrize("situation", ["armed", "crashed"])
def test_module_stop_leftover_leaves_an_armed_or_crashed_host_alone(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str], situation: str
) -> None:
    """Module removed (closing the file would crash the kernel now), or the kernel already crashed."""
    mhost.task(812, "chardev-victim", "S", starttime=4242)
    mhost.pidfile("victim", "812 4242\n")
    if situation == "crashed":
        mhost.module_loaded()
        mhost.tainted(TAINT_AFTER_CRASH)
    result = run_module({"operation": "stop_leftover"}, capsys)
    assert (result["changed"], result["stopped"]) == (False, [])
    assert result["phase"] == ("armed" if situation == "armed" else "recover")
    assert mhost.signals == []


# --- bugs these tests found, fixed -----------------------------------------------------------------------


def test_an_oops_in_the_log_is_a_reason(host: FakeHost) -> None:
    state = host.state(OOPS_LOG_6_1[:3])  # an oops headline, no recursive fault, no taint file
    assert state["crashed"] is True
    assert state["reasons"] != []


def test_module_new_taint_agrees_with_the_baseline_it_recorded(
    mhost: ModuleHost, capsys: pytest.CaptureFixture[str]
) -> None:
    mhost.tainted(TAINT_P)
    result = run_module({"record_taint_baseline": True}, capsys)
    assert result["taint_baseline"]["tainted"] == TAINT_P
    assert result["new_taint"] == 0
