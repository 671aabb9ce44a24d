"""Unit tests for plugins/modules/chardev_crash_evidence.py, end to end through AnsibleModule and run():
the evidence of a crashed host read from a fake /proc tree (SIGKILL, the clock and the kernel log
replaced by fakes), with and without the kernel's own diagnostics (kernel_diagnostics, hung_task_wait).
The parsers and the judging (plugins/module_utils/) are tested in
tests/unit/plugins/module_utils/test_chardev_crash.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    NOT_IN_D,
    parse_kernel_log,
    parse_kmsg_records,
)
from ansible_collections.chardev_lab.lab.plugins.modules import chardev_crash_evidence
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    TAINT_AFTER_CRASH,
    TAINT_LAB,
    FakeHost,
    FakeKernel,
    FakeSystem,
    kernel_lines,
    kernel_text,
    kmsg_records,
    run_module,
    stat_line,
)

# Debian 11 read mode, as dmesg prints it; Debian 12 splice mode, as /dev/kmsg records.
DMESG_5_10 = kernel_text("bullseye", "dmesg-read-crash.txt")
KMSG_6_1 = kmsg_records("bookworm", "kmsg-splice-crash.txt")
# The crash itself (compact), and SysRq w dumps of the tasks in D.
OOPS_6_1 = kernel_lines("bookworm", "dmesg-splice-crash-compact.txt")
OOPS_5_10 = kernel_lines("bullseye", "dmesg-crash-compact.txt")
SYSRQ_6_1 = kernel_lines("bookworm", "dmesg-sysrq-w-splice.txt")
SYSRQ_5_10 = kernel_lines("bullseye", "dmesg-sysrq-w-splice.txt")
# A hung-task report of the 6.1 reader: only ever printed by a kernel that has not oopsed.
HUNG_6_1_READER = kernel_lines("bookworm", "dmesg-hung-task-reader.txt")
READER_STACK_6_1 = [
    "__schedule",
    "schedule",
    "schedule_preempt_disabled",
    "__mutex_lock.constprop.0",
    "pipe_read",
    "vfs_read",
    "ksys_read",
    "do_syscall_64",
    "entry_SYSCALL_64_after_hwframe",
]
# O, E: the lab's module loaded, no oops: the hung-task detector still checks.
TAINT_NO_OOPS = TAINT_LAB


# --- the module on a crashed host -----------------------------------------------------------------------


@pytest.fixture
def crashed_6_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    """A 6.1 system after the splice crash, as the module sees it."""
    fake = FakeHost(tmp_path, run_dir="/run")
    fake.task(845, "chardev-victim", "X")
    fake.task(846, "chardev-reader", "D", "pipe_read", b"python3\x00chardev_victim.py\x00splice\x00")
    fake.pidfile("victim.pid", fake.entry(845))
    fake.pidfile("reader.pid", fake.entry(846))
    (fake.root / "proc/sys/kernel").mkdir(parents=True)
    (fake.root / "proc/sys/kernel/tainted").write_text(f"{TAINT_AFTER_CRASH}\n")
    (fake.root / "sys/kernel").mkdir(parents=True)
    (fake.root / "sys/kernel/oops_count").write_text("2\n")
    monkeypatch.setattr(chardev_crash_evidence, "SEND_SIGNAL", fake.kill)
    monkeypatch.setattr(
        chardev_crash_evidence, "read_kernel_log", lambda: (parse_kmsg_records(KMSG_6_1), "/dev/kmsg")
    )
    return fake


def module_args(fake: FakeHost, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run_dir": str(fake.root / "run"),
        "mode": "splice",
        "kernel_release": "6.1.0-56-amd64",
        "kill_wait": 0.3,
    }
    args.update(extra)
    return args


def test_module_as_expected(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(chardev_crash_evidence, module_args(crashed_6_1), capsys, crashed_6_1.system())
    assert result["changed"] is False
    assert "failed" not in result
    assert result["as_expected"] is True, result["mismatches"]
    assert result["mismatches"] == []
    assert result["kill_test_done"] is True
    assert [(t["role"], t["state"], t["killed_but_alive"]) for t in result["tasks"]] == [
        ("victim", "X", True),
        ("reader", "D", True),
    ]
    assert result["tasks"][1]["wchan"] == "pipe_read"
    assert [t["identity"] for t in result["tasks"]] == ["starttime", "starttime"]
    assert result["oops"] is True and result["oops_headlines"] == 2
    assert result["oops_tasks"] == [{"pid": 845, "comm": "chardev-victim"}]
    assert result["observed"]["oops_of_victim"] is True
    assert result["expected"]["markers"]["oops_of_victim"] is True
    assert result["oops_lines"][0].startswith("BUG: unable to handle page fault for address:")
    assert len(result["oops_lines"]) <= 20
    assert result["recursive_fault"] is True
    assert result["last_unloaded_chardev"] is True
    assert result["tainted"] == TAINT_AFTER_CRASH
    assert result["taint_flags"] == "DOE"
    assert result["taint_decoded"][0]["letter"] == "D"
    assert result["oops_count"] == 2
    assert result["kernel_log_source"] == "/dev/kmsg"
    assert result["expected"]["tasks"]["victim"]["state"] == "X"
    assert result["observed"]["taint_die"] is True
    assert result["msg"] == "crash evidence as expected for 6.1.0-56-amd64 (splice)"
    assert crashed_6_1.kills == [(845, signal.SIGKILL), (846, signal.SIGKILL)]


def test_module_read_mode_watches_only_the_victim(
    crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    """run_dir + mode give the PID files: read mode has no pipe reader, so reader.pid is not looked at."""
    result = run_module(
        chardev_crash_evidence, module_args(crashed_6_1, mode="read"), capsys, crashed_6_1.system()
    )
    assert [t["role"] for t in result["tasks"]] == ["victim"]
    assert result["tasks"][0]["pidfile"] == str(crashed_6_1.root / "run/victim.pid")
    assert crashed_6_1.kills == [(845, signal.SIGKILL)]
    assert result["as_expected"] is True, result["mismatches"]


def test_module_never_kills_a_reused_pid(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    """The victim's and the reader's pids now belong to other processes (other start times)."""
    for pid, comm in ((845, "chardev-victim"), (846, "chardev-reader")):
        (crashed_6_1.root / f"proc/{pid}/stat").write_text(stat_line(pid, comm, "D", 7))
    result = run_module(chardev_crash_evidence, module_args(crashed_6_1), capsys, crashed_6_1.system())
    assert crashed_6_1.kills == []
    assert result["as_expected"] is False
    assert [(t["pid"], t["state"], t["identity"], t["kill_sent"]) for t in result["tasks"]] == [
        (845, None, None, False),
        (846, None, None, False),
    ]
    assert result["mismatches"][0].startswith(
        "victim: pid 845 is another process now (chardev-victim, started at tick 7"
    )
    assert result["mismatches"][1].startswith("reader: pid 846 is another process now")


def test_module_oops_of_another_task(
    crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An oops whose PID: is not the victim's: reported as a mismatch."""
    records = [
        line.replace("PID: 845 Comm: chardev-victim", "PID: 17 Comm: kworker/0:1") for line in KMSG_6_1
    ]
    monkeypatch.setattr(
        chardev_crash_evidence, "read_kernel_log", lambda: (parse_kmsg_records(records), "/dev/kmsg")
    )
    result = run_module(chardev_crash_evidence, module_args(crashed_6_1), capsys, crashed_6_1.system())
    assert result["oops_tasks"] == [{"pid": 17, "comm": "kworker/0:1"}]
    assert result["observed"]["oops_of_victim"] is False
    assert result["mismatches"] == ["missing: an oops in the victim's own task (PID: <victim> in the oops)"]


def test_module_mismatch_does_not_fail(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    (crashed_6_1.root / "sys/kernel/oops_count").unlink()
    result = run_module(
        chardev_crash_evidence,
        module_args(crashed_6_1, kernel_release="5.10.0-35-amd64"),
        capsys,
        crashed_6_1.system(),
    )
    assert "failed" not in result
    assert result["as_expected"] is False
    assert result["mismatches"][0].startswith("victim: pid 845 is in state X, expected D")
    assert result["oops_count"] is None
    assert result["msg"].startswith("crash evidence differs from the expectation for 5.10.0-35-amd64")


def test_module_check_mode_sends_no_signal(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(
        chardev_crash_evidence,
        module_args(crashed_6_1, _ansible_check_mode=True),
        capsys,
        crashed_6_1.system(),
    )
    assert crashed_6_1.kills == []
    assert result["kill_test_done"] is False
    assert result["as_expected"] is True
    assert all(t["killed_but_alive"] is None for t in result["tasks"])
    assert "check mode: SIGKILL not sent" in result["msg"]


def test_module_kill_test_off(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(
        chardev_crash_evidence, module_args(crashed_6_1, kill_test=False), capsys, crashed_6_1.system()
    )
    assert crashed_6_1.kills == []
    assert result["kill_test_done"] is False
    assert "check mode" not in result["msg"]


def test_module_defaults_to_running_kernel(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    args = module_args(crashed_6_1)
    del args["kernel_release"]
    result = run_module(chardev_crash_evidence, args, capsys, crashed_6_1.system())
    assert result["kernel_release"] == os.uname().release


def test_module_refuses_bad_input(crashed_6_1: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(
        chardev_crash_evidence, module_args(crashed_6_1, kernel_release="linux"), capsys, crashed_6_1.system()
    )
    assert result["failed"] is True
    assert "cannot parse kernel release" in result["msg"]
    result = run_module(
        chardev_crash_evidence, module_args(crashed_6_1, mode="write"), capsys, crashed_6_1.system()
    )
    assert result["failed"] is True
    assert "mode" in result["msg"]


def test_read_kernel_log_falls_back_to_dmesg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(chardev_crash_evidence, "KMSG_PATH", str(tmp_path / "no-kmsg"))
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        assert kwargs["timeout"] > 0
        return subprocess.CompletedProcess(argv, 0, DMESG_5_10.encode(), b"")

    monkeypatch.setattr(chardev_crash_evidence.subprocess, "run", fake_run)
    lines, source = chardev_crash_evidence.read_kernel_log()
    assert source == "dmesg"
    assert calls == [["dmesg"]]
    assert parse_kernel_log(lines).recursive_fault is True

    def timeout_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(chardev_crash_evidence.subprocess, "run", timeout_run)
    assert chardev_crash_evidence.read_kernel_log() == ([], "none")


# --- the evidence module --------------------------------------------------------------------------------


def crashed_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tasks: list[tuple[str, int, str, str, str]],
    kernel: FakeKernel,
) -> list[tuple[int, int]]:
    """The fake /proc tree with the watched tasks (role, pid, comm, state, wchan) and PID files; the
    module's SEND_SIGNAL, CLOCK, SLEEP and read_kernel_log pointed at fakes. Returns the kills."""
    host = FakeHost(tmp_path, run_dir="/run")
    for role, pid, comm, state, wchan in tasks:
        host.task(pid, comm, state, wchan)
        host.pidfile(f"{role}.pid", host.entry(pid))
    host.tainted(TAINT_AFTER_CRASH)
    monkeypatch.setattr(chardev_crash_evidence, "SEND_SIGNAL", host.kill)
    monkeypatch.setattr(chardev_crash_evidence, "CLOCK", kernel.clock)
    monkeypatch.setattr(chardev_crash_evidence, "SLEEP", kernel.sleep)
    monkeypatch.setattr(chardev_crash_evidence, "read_kernel_log", lambda: (kernel.read_lines(), "/dev/kmsg"))
    return host.kills


def params(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run_dir": str(tmp_path / "run"),
        "mode": "splice",
        "kill_test": True,
        "kill_wait": 0.0,
        "kernel_release": "6.1.0-56-amd64",
        "log_lines": 20,
        "settle": 0,
        "kernel_diagnostics": True,
        "hung_task_wait": 30.0,
    }
    args.update(extra)
    return args


TASKS_6_1 = [
    ("victim", 522, "chardev-victim", "X", "0"),
    ("reader", 523, "chardev-reader", "D", "pipe_read"),
]
TASKS_5_10 = [
    ("victim", 812, "chardev-victim", "D", "0"),
    ("reader", 813, "chardev-reader", "D", "0"),
]


def test_module_run_6_1_with_kernel_diagnostics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    kills = crashed_host(tmp_path, monkeypatch, TASKS_6_1, kernel)
    result = chardev_crash_evidence.run(params(tmp_path), check_mode=False, system=FakeSystem(tmp_path))
    assert result["as_expected"] is True, result["mismatches"]
    assert result["expected"]["markers"]["sysrq_w_blocked"] is True
    assert result["expected"]["markers"]["hung_task_silent"] is True
    assert "hung_task_report" not in result["expected"]["markers"]
    assert result["observed"]["sysrq_w_blocked"] is True
    assert result["observed"]["hung_task_silent"] is True
    assert result["hung_task"]["silenced"].startswith("the kernel has oopsed (taint D)")
    assert result["hung_task"]["reported"] == {"reader": False}
    assert result["hung_task"]["reports"] == []
    assert result["hung_task"]["not_applicable"] == {"victim": NOT_IN_D + " (pid 522 is in X)"}
    assert result["sysrq_w"]["done"] is True and result["sysrq_w"]["shown"] == {"reader": True}
    assert kernel.trigger.read_text() == "w\n"
    assert kernel.sleeps == [] and kernel.now == 0.0  # hung_task_wait 30, but nothing to wait for
    assert [pid for pid, _signal in kills] == [522, 523]
    json.dumps(result)


def test_module_run_5_10_with_kernel_diagnostics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path, OOPS_5_10, sysrq_dump=SYSRQ_5_10, timeout="120\n")
    crashed_host(tmp_path, monkeypatch, TASKS_5_10, kernel)
    # wchan is 0 on 5.10 (ORC): the reader's wait shows in /proc/<pid>/stack
    (tmp_path / "proc/813/stack").write_text(
        "[<0>] pipe_read+0x47/0x460\n[<0>] new_sync_read+0x119/0x1b0\n[<0>] vfs_read+0xf1/0x190\n"
    )
    result = chardev_crash_evidence.run(
        params(tmp_path, kernel_release="5.10.0-35-amd64", kill_test=False),
        check_mode=False,
        system=FakeSystem(tmp_path),
    )
    assert result["as_expected"] is True, result["mismatches"]
    assert result["hung_task"]["silenced"]
    assert result["hung_task"]["reported"] == {"victim": False, "reader": False}
    assert result["hung_task"]["not_applicable"] == {}
    assert result["sysrq_w"]["shown"] == {"victim": True, "reader": True}
    assert result["observed"]["hung_task_silent"] is True
    assert kernel.sleeps == []


def test_module_run_report_after_the_oops_is_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung-task report of the reader in the log of an oopsed kernel: not what the kernel does."""
    kernel = FakeKernel(tmp_path, OOPS_6_1 + HUNG_6_1_READER, sysrq_dump=SYSRQ_6_1)
    crashed_host(tmp_path, monkeypatch, TASKS_6_1, kernel)
    result = chardev_crash_evidence.run(
        params(tmp_path, hung_task_wait=12), check_mode=False, system=FakeSystem(tmp_path)
    )
    assert kernel.now == 0.0
    assert result["as_expected"] is False
    assert result["mismatches"] == [
        "missing: the hung-task detector silent after the oops (no 'blocked for more than')"
    ]
    assert result["hung_task"]["reported"] == {"reader": True}
    assert result["observed"]["hung_task_silent"] is False


def test_module_run_without_taint_d_waits_for_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc/sys/kernel/tainted without D: the detector still checks, so the module waits hung_task_wait
    seconds for its report; none came, and the crash's expectations are not met."""
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    crashed_host(tmp_path, monkeypatch, TASKS_6_1, kernel)
    (tmp_path / "proc/sys/kernel/tainted").write_text(f"{TAINT_NO_OOPS}\n")
    result = chardev_crash_evidence.run(
        params(tmp_path, hung_task_wait=12), check_mode=False, system=FakeSystem(tmp_path)
    )
    assert kernel.now == pytest.approx(12.0)
    assert kernel.sleeps == [1.0] * 12
    assert result["hung_task"]["silenced"] is None
    assert result["hung_task"]["reported"] == {"reader": False}
    assert result["as_expected"] is False
    assert result["mismatches"] == [
        "missing: taint flag D (128) in /proc/sys/kernel/tainted",
        "missing: the hung-task detector silent after the oops (no 'blocked for more than')",
    ]


@pytest.mark.parametrize(
    ("diagnostics", "check_mode"), [(False, False), (True, True)], ids=["option-off", "check-mode"]
)
def test_module_run_without_diagnostics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diagnostics: bool, check_mode: bool
) -> None:
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    crashed_host(tmp_path, monkeypatch, TASKS_6_1, kernel)
    result = chardev_crash_evidence.run(
        params(tmp_path, kernel_diagnostics=diagnostics), check_mode=check_mode, system=FakeSystem(tmp_path)
    )
    assert result["as_expected"] is True, result["mismatches"]
    assert result["hung_task"] is None and result["sysrq_w"] is None
    for marker in ("sysrq_w_blocked", "hung_task_silent"):
        assert marker not in result["expected"]["markers"]
        assert marker not in result["observed"]
    assert kernel.trigger.read_text() == ""
    assert kernel.sleeps == []


def test_module_accepts_the_new_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    crashed_host(tmp_path, monkeypatch, TASKS_6_1, kernel)
    args = {
        "run_dir": str(tmp_path / "run"),
        "mode": "splice",
        "kernel_release": "6.1.0-56-amd64",
        "kill_test": False,
        "kernel_diagnostics": True,
        "hung_task_wait": 5,
    }
    result = run_module(chardev_crash_evidence, args, capsys, FakeSystem(tmp_path))
    assert "failed" not in result, result
    assert result["as_expected"] is True, result["mismatches"]
    assert result["sysrq_w"]["shown"] == {"reader": True}
    assert result["hung_task"]["silenced"] and result["hung_task"]["reported"] == {"reader": False}
    assert kernel.sleeps == []
