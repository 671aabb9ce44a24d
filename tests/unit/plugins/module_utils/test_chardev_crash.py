"""Unit tests for plugins/module_utils/chardev_{outcomes,proc,kernel_log,taint,record}.py (one
chardev_crash.py before the split): the crash evidence and the crash state.

* the expected outcome, the parsers of /proc and of the kernel log, taint, compare() and observed_from();
* the gathering of the victim's tasks from a fake /proc tree (SIGKILL replaced by a fake);
* the kernel's own diagnostics of the stuck tasks: the hung-task reports, SysRq w, kernel_diagnostics()
  against a fake kernel log, clock and sleep, diagnostics_markers();
* the crash state of a lab host (run files, records, the taint baseline, the phases) in a fake tree.

The kernel log samples are in tests/unit/data/kernels/<suite>/ (what is in each: README.md there):
the shape of each line as Debian's 5.10 (bullseye), 6.1 (bookworm) and 6.12 (trixie) kernels print it,
addresses and register values made up. The hung-task samples follow kernel/hung_task.c
check_hung_task(), kernel/sched/core.c sched_show_task() and drivers/tty/sysrq.c: "INFO: task
COMM:PID blocked for more than N seconds.", the Tainted line, the "echo 0" hint; "task:%-15.15s
state:%c" then " stack:%5lu pid:%5d ppid:%6d flags:0x%08lx" on 5.10 (padded on the left), "
stack:%-5lu pid:%-5d ppid:%-6d flags:..." on 6.1, with tgid added on 6.12; " <TASK>" / " </TASK>"
around the frames from 5.16 on. Once the kernel has oopsed (taint D) its hung-task detector reports
nothing (kernel/hung_task.c check_hung_uninterruptible_tasks(): "If the system crashed already then
all bets are off"; measured on Debian 5.10): the hung-task samples are what it prints on a kernel that
has NOT oopsed, and test the parser and the waiting path.

Nothing here reads this machine's kernel log, loads a module or crashes a kernel: the trees are under
tmp_path, the log, clock, sleep and kill are fakes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils import (
    chardev_kernel_log,
    chardev_proc,
    chardev_record,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    NOT_IN_D,
    KernelLogEvidence,
    kernel_diagnostics,
    parse_hung_task_reports,
    parse_kernel_log,
    parse_kmsg_records,
    parse_sysrq_blocked,
    read_kernel_log_lines,
    read_kmsg,
    strip_log_prefix,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_outcomes import (
    compare,
    diagnostics_markers,
    expected_outcome,
    observed_from,
    parse_kernel_release,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    TaskEvidence,
    gather_tasks,
    parse_cmdline,
    parse_proc_stat,
    parse_stack,
    parse_wchan,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_record import (
    crash_state,
    filesystem_type,
    module_instance,
    parse_record,
    parse_taint_baseline,
    pidfiles_for,
    run_files,
    same_instance,
    taint_baseline_entry,
    write_json,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    TAINT_LAB,
    decode_taint,
    parse_oops_count,
    parse_tainted,
    taint_letters,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    RUN_DIR,
    TAINT_BASELINE_PATH,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import ModuleFailure
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    BOOT_ID,
    OTHER_BOOT_ID,
    TAINT_AFTER_CRASH,
    TAINT_E,
    TAINT_O,
    TAINT_P,
    FakeHost,
    FakeKernel,
    failing_writes,
    kernel_lines,
    kernel_text,
    kmsg_records,
)

# --- kernel log samples ---------------------------------------------------------------------------------

RECURSIVE_FAULT_LOG = [
    "chardev: unregistered",
    "Fixing recursive fault but reboot is needed!",
]
OOPS_LOG_6_1 = kernel_lines("bookworm", "log-oops-excerpt.txt")
DMESG_RECURSIVE = kernel_text("bullseye", "dmesg-recursive-fault.txt")

# Debian 11, read mode: first fault in vfs_read, second (recursive) one in filp_close while exiting.
DMESG_5_10 = kernel_text("bullseye", "dmesg-read-crash.txt")
# Debian 12, splice mode, as /dev/kmsg records (prio,seq,usec,flags;text plus dictionary lines).
KMSG_6_1 = kmsg_records("bookworm", "kmsg-splice-crash.txt")
# The 2016 seed's kernel (3.x/4.x on x86) and arm64 print the older headline.
DMESG_OLD = kernel_text("before-5.1", "dmesg-oops-headline.txt")
# Debian 13 (6.12) prints the task's uid before its pid ("CPU: 0 UID: 0 PID: ..."); a comm may hold
# spaces; an untainted kernel says "Not tainted".
DMESG_6_12 = kernel_text("trixie", "dmesg-oops-tasks.txt")
# /proc/<pid>/stack of the splice-crash pipe reader on 5.10 (addresses hidden as <0>).
PROC_STACK_READER_5_10 = kernel_text("bullseye", "proc-stack-splice-reader.txt")

# The hung-task reports of a kernel that has not oopsed, SysRq w dumps, and the crash itself (compact).
HUNG_6_1_READER = kernel_lines("bookworm", "dmesg-hung-task-reader.txt")
SYSRQ_6_1 = kernel_lines("bookworm", "dmesg-sysrq-w-splice.txt")
HUNG_5_10_VICTIM = kernel_lines("bullseye", "dmesg-hung-task-victim.txt")
HUNG_5_10_READER = kernel_lines("bullseye", "dmesg-hung-task-reader.txt")
SYSRQ_5_10 = kernel_lines("bullseye", "dmesg-sysrq-w-splice.txt")
HUNG_6_12_READER = kernel_lines("trixie", "dmesg-r-hung-task-reader.txt")
OOPS_6_1 = kernel_lines("bookworm", "dmesg-splice-crash-compact.txt")
OOPS_5_10 = kernel_lines("bullseye", "dmesg-crash-compact.txt")

# The stacks the hung-task reports and SysRq dumps above show, as the parsers return them.
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

VICTIM_STACK_5_10 = ["__schedule", "schedule", "do_exit", "make_task_dead", "rewind_stack_and_make_dead"]

READER_STACK_5_10 = [
    "__schedule",
    "schedule",
    "schedule_preempt_disabled",
    "__mutex_lock.constprop.0",
    "pipe_read",
    "new_sync_read",
    "vfs_read",
    "ksys_read",
    "do_syscall_64",
    "entry_SYSCALL_64_after_hwframe",
]

READER_STACK_6_12 = [
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

# O, E: the lab's module loaded, no oops: the hung-task detector still checks
TAINT_NO_OOPS = TAINT_O | TAINT_E


# --- expected outcome ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("5.10.0-35-amd64", (5, 10, 0)),
        ("6.1.0-56-amd64", (6, 1, 0)),
        ("6.12.57+deb13-amd64", (6, 12, 57)),
        ("5.16.20", (5, 16, 20)),
        ("5.17", (5, 17, 0)),
        ("5.17.0-rc1", (5, 17, 0)),
    ],
)
def test_parse_kernel_release(release: str, version: tuple[int, int, int]) -> None:
    assert parse_kernel_release(release) == version


@pytest.mark.parametrize("release", ["", "amd64", "six.one", "6-1"])
def test_parse_kernel_release_refuses_garbage(release: str) -> None:
    with pytest.raises(ValueError, match="cannot parse kernel release"):
        parse_kernel_release(release)


@pytest.mark.parametrize(
    ("release", "victim"),
    [
        ("5.10.0-35-amd64", "D"),
        ("5.16.20-1-amd64", "D"),
        ("5.16.0", "D"),
        ("5.17.0", "X"),
        ("5.17.0-1-amd64", "X"),
        ("6.1.0-56-amd64", "X"),
        ("6.12.57+deb13-amd64", "X"),
        ("4.9.0-19-amd64", "D"),
    ],
)
@pytest.mark.parametrize("mode", ["read", "splice"])
def test_expected_victim_state(release: str, victim: str, mode: str) -> None:
    expected = expected_outcome(release, mode)
    assert expected["tasks"]["victim"]["state"] == victim
    assert expected["tasks"]["victim"]["unkillable"] is True
    assert expected["mode"] == mode
    assert expected["kernel_release"] == release
    assert expected["markers"] == {
        "oops": True,
        "oops_of_victim": True,
        "recursive_fault": True,
        "last_unloaded_chardev": True,
        "taint_die": True,
    }
    if mode == "read":
        assert set(expected["tasks"]) == {"victim"}
    else:
        reader = expected["tasks"]["reader"]
        assert reader["state"] == "D"
        assert "pipe_read" in reader["wchan_patterns"]


def test_expected_outcome_is_json_and_explains() -> None:
    expected = expected_outcome("6.1.0-56-amd64", "splice")
    assert json.loads(json.dumps(expected)) == expected
    assert "EXIT_DEAD" in expected["tasks"]["victim"]["why"]
    assert "TASK_UNINTERRUPTIBLE" in expected_outcome("5.10.0-35-amd64", "read")["tasks"]["victim"]["why"]
    assert "mutex" in expected["tasks"]["reader"]["why"]


def test_expected_outcome_refuses_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        expected_outcome("6.1.0-56-amd64", "write")


# --- /proc parsers ------------------------------------------------------------------------------------


def test_parse_proc_stat_plain() -> None:
    text = "845 (chardev-victim) X 1 844 844 0 -1 4194560 312 0 0 0 3 1 0 0 20 0 1 0 30112 0 0\n"
    parsed = parse_proc_stat(text)
    assert (parsed.pid, parsed.comm, parsed.state, parsed.ppid) == (845, "chardev-victim", "X", 1)
    assert parsed.starttime == 30112  # field 22


def test_parse_proc_stat_starttime_of_this_process() -> None:
    """Field 22 as the kernel writes it: the same value chardev_victim.py records in its PID files."""
    text = Path("/proc/self/stat").read_text()
    parsed = parse_proc_stat(text)
    assert parsed.starttime == int(text.rpartition(")")[2].split()[19])
    assert parsed.starttime is not None and parsed.starttime > 0


def test_parse_proc_stat_comm_with_spaces_and_parens() -> None:
    parsed = parse_proc_stat("846 (a) b (c)) D 845 844 844 0 -1 1077936192 90 0 0 0 0 0 0 0 20 0 1 0\n")
    assert parsed.comm == "a) b (c)"
    assert parsed.state == "D"
    assert parsed.ppid == 845
    assert parsed.starttime is None  # the line stops before field 22


@pytest.mark.parametrize("text", ["", "garbage", "12 (x)", "(x) S 1"])
def test_parse_proc_stat_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_proc_stat(text)


@pytest.mark.parametrize(
    ("text", "wchan"),
    [
        ("pipe_read", "pipe_read"),
        ("pipe_read\n", "pipe_read"),
        ("0", None),
        ("", None),
        ("do_exit", "do_exit"),
    ],
)
def test_parse_wchan(text: str, wchan: str | None) -> None:
    assert parse_wchan(text) == wchan


def test_parse_stack() -> None:
    assert parse_stack(PROC_STACK_READER_5_10) == [
        "pipe_read",
        "new_sync_read",
        "vfs_read",
        "ksys_read",
        "do_syscall_64",
        "entry_SYSCALL_64_after_hwframe",
    ]
    # real addresses (kptr_restrict 0), no prefix, and lines that are not frames
    assert parse_stack("[<ffffffffa1b2c3d4>] pipe_read+0x47/0x460\nmutex_lock+0x1/0x2\n\nnot a frame\n") == [
        "pipe_read",
        "mutex_lock",
    ]
    assert parse_stack("") == []


def test_parse_cmdline() -> None:
    raw = b"python3\x00/usr/local/lib/chardev-lab/chardev_victim.py\x00splice\x00--device\x00/dev/chardev\x00"
    assert parse_cmdline(raw) == [
        "python3",
        "/usr/local/lib/chardev-lab/chardev_victim.py",
        "splice",
        "--device",
        "/dev/chardev",
    ]
    assert parse_cmdline(b"") == []
    assert parse_cmdline("a b\x00c") == ["a b", "c"]


# --- kernel log ---------------------------------------------------------------------------------------


def test_parse_kernel_log_5_10() -> None:
    log = parse_kernel_log(DMESG_5_10)
    assert log.oops is True
    assert log.oops_headlines == 2
    assert log.recursive_fault is True
    assert log.last_unloaded_chardev is True
    assert log.oops_lines[0] == "BUG: unable to handle page fault for address: ffffffffc06e5200"
    assert log.oops_lines[4] == "Oops: 0000 [#1] SMP NOPTI"
    assert len(log.oops_lines) == 20
    assert not any(line.startswith("[") for line in log.oops_lines)
    # both oopses (the fault and the recursive one while exiting) happened in the victim's task
    assert log.oops_tasks == [(812, "chardev-victim"), (812, "chardev-victim")]


def test_parse_kernel_log_6_1_from_kmsg_records() -> None:
    lines = parse_kmsg_records(KMSG_6_1)
    assert "SUBSYSTEM=none" not in "".join(lines)
    assert lines[0] == "chardev: unregistered"
    assert " do_splice+0x5f9/0x780" in lines
    log = parse_kernel_log(lines, max_lines=5)
    assert log.oops and log.recursive_fault and log.last_unloaded_chardev
    assert log.oops_headlines == 2
    assert log.oops_lines == [
        "BUG: unable to handle page fault for address: ffffffffc0a2e2c0",
        "#PF: supervisor read access in kernel mode",
        "#PF: error_code(0x0000) - not-present page",
        "PGD 1e810067 P4D 1e810067 PUD 1e812067 PMD 3a6f1067 PTE 0",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI",
    ]
    # the second oops has no CPU line in this excerpt: one task, the victim's
    assert log.oops_tasks == [(845, "chardev-victim")]


def test_parse_kernel_log_6_12_oops_tasks() -> None:
    log = parse_kernel_log(DMESG_6_12)
    assert log.oops_headlines == 2
    assert log.recursive_fault is True
    assert log.oops_tasks == [(845, "chardev-victim"), (9001, "my reader")]


def test_parse_kernel_log_task_lines_before_an_oops_are_not_oops_tasks() -> None:
    """A "CPU: ... PID:" line before any oops (a WARN, a hung-task report) names no oops task."""
    text = (
        "[  1.0] CPU: 0 PID: 17 Comm: kworker/0:1 Not tainted 6.1.0-56-amd64 #1\n"
        "[  2.0] chardev: registered with major 247\n"
    )
    log = parse_kernel_log(text)
    assert log.oops is False
    assert log.oops_tasks == []


def test_parse_kernel_log_old_headline() -> None:
    log = parse_kernel_log(DMESG_OLD)
    assert log.oops is True
    assert log.oops_lines[0].startswith("BUG: unable to handle kernel paging request at")
    assert log.recursive_fault is False
    assert log.last_unloaded_chardev is False


def test_parse_kernel_log_clean_boot() -> None:
    log = parse_kernel_log(
        "[    0.000000] Linux version 6.1.0-56-amd64\n[    1.2] virtio_blk virtio1: [vda]\n"
    )
    assert log == KernelLogEvidence()


def test_strip_log_prefix() -> None:
    assert strip_log_prefix("[  260.112233] BUG: x") == "BUG: x"
    assert strip_log_prefix("<1>[    1.000000] BUG: x") == "BUG: x"
    assert strip_log_prefix("no prefix [1.0] here") == "no prefix [1.0] here"


def test_read_kmsg_reads_records_until_end(tmp_path: Path) -> None:
    fake = tmp_path / "kmsg"
    fake.write_text(KMSG_6_1[1])
    assert read_kmsg(str(fake)) == [KMSG_6_1[1]]
    with pytest.raises(OSError):
        read_kmsg(str(tmp_path / "absent"))


# --- taint and oops_count -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "letters"),
    [(0, ""), (TAINT_AFTER_CRASH, "DOE"), (12288, "OE"), (4097, "PO"), (512 | 128, "DW"), (1 << 18, "N")],
)
def test_taint_letters(value: int, letters: str) -> None:
    assert taint_letters(value) == letters


def test_decode_taint() -> None:
    decoded = decode_taint(TAINT_AFTER_CRASH)
    assert [(d["bit"], d["value"], d["letter"]) for d in decoded] == [
        (7, 128, "D"),
        (12, 4096, "O"),
        (13, 8192, "E"),
    ]
    assert "OOPS" in decoded[0]["meaning"]
    assert decode_taint(0) == []
    assert decode_taint(1 << 30)[0]["letter"] == "?"


def test_parse_tainted_and_oops_count() -> None:
    assert parse_tainted("12416\n") == TAINT_AFTER_CRASH
    assert parse_oops_count("2\n") == 2
    assert parse_oops_count(None) is None
    assert parse_oops_count("") is None


# --- compare ------------------------------------------------------------------------------------------


def observed_ok(victim_state: str = "X", reader: bool = True) -> dict[str, Any]:
    tasks: dict[str, Any] = {
        "victim": {"pid": 845, "state": victim_state, "wchan": None, "killed_but_alive": True, "error": None},
    }
    if reader:
        tasks["reader"] = {"pid": 846, "state": "D", "wchan": "pipe_read", "killed_but_alive": True}
    return {
        "tasks": tasks,
        "oops": True,
        "oops_of_victim": True,
        "recursive_fault": True,
        "last_unloaded_chardev": True,
        "taint_die": True,
    }


def test_compare_as_expected() -> None:
    assert compare(expected_outcome("6.1.0-56-amd64", "splice"), observed_ok()) == []
    assert compare(expected_outcome("5.10.0-35-amd64", "read"), observed_ok("D", reader=False)) == []
    # the kill test not run (None) is not judged; a mutex wait is accepted as the reader's wchan
    observed = observed_ok()
    observed["tasks"]["victim"]["killed_but_alive"] = None
    observed["tasks"]["reader"]["wchan"] = "__mutex_lock.constprop.0"
    assert compare(expected_outcome("6.12.57+deb13-amd64", "splice"), observed) == []


def test_compare_reads_the_stack_when_wchan_is_empty() -> None:
    """5.10 on x86 with ORC says wchan 0 for every sleeper (measured: the splice reader); the stack
    says where it waits."""
    expected = expected_outcome("5.10.0-46-amd64", "splice")
    observed = observed_ok("D")
    observed["tasks"]["reader"]["wchan"] = None
    observed["tasks"]["reader"]["stack"] = parse_stack(PROC_STACK_READER_5_10)
    assert compare(expected, observed) == []
    observed["tasks"]["reader"]["stack"] = ["do_nanosleep", "hrtimer_nanosleep"]
    assert compare(expected, observed) == [
        "reader: pid 846 waits in nothing (wchan 0, stack do_nanosleep < hrtimer_nanosleep), "
        "expected one of pipe_read, mutex, lock"
    ]
    observed["tasks"]["reader"]["stack"] = []
    assert compare(expected, observed) == [
        "reader: pid 846 waits in nothing (wchan 0), expected one of pipe_read, mutex, lock"
    ]
    # wchan, when the kernel gives one, is what counts
    observed["tasks"]["reader"].update(wchan="do_nanosleep", stack=parse_stack(PROC_STACK_READER_5_10))
    assert len(compare(expected, observed)) == 1


def test_compare_lists_every_difference() -> None:
    observed = observed_ok("D")
    observed["tasks"]["reader"].update(state="S", wchan="pipe_wait", killed_but_alive=False)
    observed["recursive_fault"] = False
    observed["taint_die"] = False
    mismatches = compare(expected_outcome("6.1.0-56-amd64", "splice"), observed)
    assert len(mismatches) == 6
    assert mismatches[0].startswith("victim: pid 845 is in state D, expected X")
    assert mismatches[1].startswith("reader: pid 846 is in state S, expected D")
    assert mismatches[2] == "reader: pid 846 waits in pipe_wait, expected one of pipe_read, mutex, lock"
    assert mismatches[3] == "reader: pid 846 went away after SIGKILL, expected it to be unkillable"
    assert "Fixing recursive fault" in mismatches[4]
    assert "taint flag D" in mismatches[5]


def test_compare_missing_tasks() -> None:
    observed = observed_ok()
    observed["tasks"]["victim"] = {"pid": None, "state": None, "error": "cannot read pidfile /run/v.pid"}
    observed["tasks"]["reader"]["state"] = None
    mismatches = compare(expected_outcome("6.1.0-56-amd64", "splice"), observed)
    assert mismatches[0] == "victim: no pid (cannot read pidfile /run/v.pid)"
    assert mismatches[1].startswith("reader: pid 846 is not in /proc, expected state D")
    del observed["tasks"]["reader"]
    assert "reader: not observed" in compare(expected_outcome("6.1.0-56-amd64", "splice"), observed)[1]


def test_compare_reports_why_a_task_is_not_the_victim() -> None:
    """A pid reused by another process: the mismatch says so (gather_tasks' error), not "not in /proc"."""
    observed = observed_ok()
    why = "pid 845 is another process now (sshd, started at tick 99; the victim started at tick 30112)"
    observed["tasks"]["victim"].update(state=None, killed_but_alive=None, error=why)
    (mismatch,) = compare(expected_outcome("6.1.0-56-amd64", "splice"), observed)
    assert mismatch.startswith(f"victim: {why}, expected state X (")


def test_compare_oops_of_another_task() -> None:
    """The oops happened, but in another task than the victim: the crash is not the lesson's."""
    observed = observed_ok()
    observed["oops_of_victim"] = False
    assert compare(expected_outcome("6.1.0-56-amd64", "splice"), observed) == [
        "missing: an oops in the victim's own task (PID: <victim> in the oops)"
    ]


def test_compare_does_not_judge_extra_roles() -> None:
    observed = observed_ok(reader=True)
    observed["tasks"]["reader"]["state"] = "S"
    assert compare(expected_outcome("6.1.0-56-amd64", "read"), observed) == []


def test_observed_from() -> None:
    task = TaskEvidence(role="victim", pidfile="/run/v.pid", pid=845, state="X", killed_but_alive=True)
    log = KernelLogEvidence(
        oops=True, recursive_fault=True, last_unloaded_chardev=True, oops_tasks=[(845, "chardev-victim")]
    )
    observed = observed_from([task], log, TAINT_AFTER_CRASH)
    assert observed["tasks"]["victim"]["state"] == "X"
    assert observed["taint_die"] is True
    assert observed["oops_of_victim"] is True
    assert observed["oops_tasks"] == [{"pid": 845, "comm": "chardev-victim"}]
    assert observed_from([task], log, None)["taint_die"] is False
    assert observed_from([task], log, 4096)["taint_die"] is False


def test_observed_from_oops_of_victim() -> None:
    victim = TaskEvidence(role="victim", pidfile="/run/v.pid", pid=845)
    reader = TaskEvidence(role="reader", pidfile="/run/r.pid", pid=846)
    other = KernelLogEvidence(oops=True, oops_tasks=[(846, "chardev-reader"), (17, "kworker/0:1")])
    assert observed_from([victim, reader], other, None)["oops_of_victim"] is False  # the reader's oops
    both = KernelLogEvidence(oops=True, oops_tasks=[(17, "kworker/0:1"), (845, "chardev-victim")])
    assert observed_from([reader, victim], both, None)["oops_of_victim"] is True
    assert observed_from([reader], both, None)["oops_of_victim"] is False  # no victim observed
    no_pid = TaskEvidence(role="victim", pidfile="/run/v.pid", error="cannot read pidfile")
    assert observed_from([no_pid], both, None)["oops_of_victim"] is False
    # the evidence module's samples: a 5.10 oops in the victim's task
    log = parse_kernel_log(DMESG_5_10)
    victim_5_10 = TaskEvidence(role="victim", pidfile="/run/v.pid", pid=812, state="D")
    assert observed_from([victim_5_10], log, TAINT_AFTER_CRASH)["oops_of_victim"] is True


# --- parse_hung_task_reports ----------------------------------------------------------------------------


def test_hung_task_report_6_1() -> None:
    (report,) = parse_hung_task_reports(OOPS_6_1 + HUNG_6_1_READER)
    assert (report["comm"], report["pid"], report["seconds"]) == ("chardev-reader", 523, 10)
    assert report["stack"] == READER_STACK_6_1
    # timestamps removed, the report ends at </TASK>
    assert report["lines"][0] == "INFO: task chardev-reader:523 blocked for more than 10 seconds."
    assert report["lines"][3].startswith("task:chardev-reader  state:D stack:0     pid:523")
    assert report["lines"][-1] == " </TASK>"
    assert len(report["lines"]) == len(HUNG_6_1_READER)


def test_hung_task_reports_5_10_two_tasks_without_task_markers() -> None:
    victim, reader = parse_hung_task_reports(OOPS_5_10 + HUNG_5_10_VICTIM + HUNG_5_10_READER)
    assert (victim["comm"], victim["pid"], victim["seconds"]) == ("chardev-victim", 812, 120)
    assert victim["stack"] == VICTIM_STACK_5_10
    # the victim's report stops where the reader's begins
    assert victim["lines"][-1] == " rewind_stack_and_make_dead+0x17/0x20"
    assert len(victim["lines"]) == len(HUNG_5_10_VICTIM)
    assert (reader["comm"], reader["pid"], reader["seconds"]) == ("chardev-reader", 813, 120)
    assert reader["stack"] == READER_STACK_5_10


def test_hung_task_report_6_12_with_priorities() -> None:
    (report,) = parse_hung_task_reports(HUNG_6_12_READER)
    assert (report["comm"], report["pid"], report["seconds"]) == ("chardev-reader", 523, 10)
    assert report["stack"] == READER_STACK_6_12
    assert report["lines"][0] == "INFO: task chardev-reader:523 blocked for more than 10 seconds."
    assert not any(line.startswith(("<", "[")) for line in report["lines"])


def test_hung_task_report_from_kmsg_records() -> None:
    """/dev/kmsg records carry neither timestamp nor priority in the text; the same report results."""
    records = [
        f"{3 if index < 3 else 6},{900 + index},{250123456 + index},-;"
        f"{chardev_kernel_log.strip_log_prefix(line)}\n"
        for index, line in enumerate(HUNG_6_1_READER)
    ]
    (report,) = parse_hung_task_reports(chardev_kernel_log.parse_kmsg_records(records))
    assert (report["pid"], report["stack"]) == (523, READER_STACK_6_1)


def test_hung_task_report_comm_with_colon() -> None:
    """The comm may hold ':' (kworker/u8:2): the pid is the number before " blocked"."""
    lines = [
        "INFO: task kworker/u8:2:57 blocked for more than 241 seconds.",
        "task:kworker/u8:2    state:D stack:0     pid:57    ppid:2      flags:0x00004000",
        "Workqueue: events_unbound flush_to_ldisc",
        "Call Trace:",
        " <TASK>",
        " __schedule+0x351/0xa20",
        " </TASK>",
    ]
    (report,) = parse_hung_task_reports(lines)
    assert (report["comm"], report["pid"], report["seconds"], report["stack"]) == (
        "kworker/u8:2",
        57,
        241,
        ["__schedule"],
    )


def test_hung_task_reports_none() -> None:
    assert parse_hung_task_reports(OOPS_6_1) == []
    assert parse_hung_task_reports([]) == []


def test_hung_task_report_5_10_stops_at_sysrq_dump() -> None:
    """5.10 has no </TASK>: a report directly followed by a SysRq w dump ends at its marker."""
    (report,) = parse_hung_task_reports(HUNG_5_10_VICTIM + SYSRQ_5_10)
    assert report["stack"] == VICTIM_STACK_5_10
    assert len(report["lines"]) == len(HUNG_5_10_VICTIM)


def test_hung_task_report_6_1_stops_at_task_end() -> None:
    """After </TASK> the following lines (here a later oops) are not part of the report."""
    (report,) = parse_hung_task_reports(HUNG_6_1_READER + OOPS_6_1)
    assert report["lines"][-1] == " </TASK>"
    assert report["stack"] == READER_STACK_6_1


def test_hung_task_report_5_10_stops_at_oops_headline() -> None:
    oops = [
        "[  390.000001] BUG: unable to handle page fault for address: ffffffffc06e5300",
        "[  390.000002] #PF: supervisor read access in kernel mode",
        "[  390.000003] Oops: 0000 [#3] SMP NOPTI",
        "[  390.000004] Call Trace:",
        "[  390.000005]  ksys_ioctl+0x87/0xc0",
        "[  390.000006]  __x64_sys_ioctl+0x16/0x20",
    ]
    (report,) = parse_hung_task_reports(HUNG_5_10_VICTIM + oops)
    assert report["stack"] == VICTIM_STACK_5_10
    assert not any("BUG: unable to handle" in line for line in report["lines"])


# --- parse_sysrq_blocked and _task_dumps ----------------------------------------------------------------


def test_sysrq_blocked_5_10_two_tasks() -> None:
    dump = parse_sysrq_blocked(OOPS_5_10 + HUNG_5_10_VICTIM + HUNG_5_10_READER + SYSRQ_5_10)
    assert dump is not None
    assert [(t["comm"], t["state"], t["pid"]) for t in dump["tasks"]] == [
        ("chardev-victim", "D", 812),
        ("chardev-reader", "D", 813),
    ]
    victim, reader = dump["tasks"]
    assert victim["stack"] == VICTIM_STACK_5_10
    # the unreliable "? __switch_to_asm" frame is kept, by its name
    assert reader["stack"] == [
        "__schedule",
        "__switch_to_asm",
        *READER_STACK_5_10[1:],
    ]
    assert dump["lines"][0] == "sysrq: Show Blocked State"
    assert len(dump["lines"]) == len(SYSRQ_5_10)


def test_sysrq_blocked_6_1_unreliable_frame() -> None:
    dump = parse_sysrq_blocked(OOPS_6_1 + HUNG_6_1_READER + SYSRQ_6_1)
    assert dump is not None
    (task,) = dump["tasks"]
    assert (task["comm"], task["state"], task["pid"]) == ("chardev-reader", "D", 523)
    assert task["stack"][:6] == [
        "__schedule",
        "schedule",
        "schedule_preempt_disabled",
        "__mutex_lock.constprop.0",
        "pipe_read",  # " ? pipe_read+0x4c/0x450"
        "pipe_read",
    ]
    assert task["stack"][-1] == "entry_SYSCALL_64_after_hwframe"
    assert "RIP: 0033:0x7f1c2b31d19d" in dump["lines"]


def test_sysrq_blocked_takes_the_last_dump() -> None:
    """A first dump taken before the reader blocked shows only the victim; the last one shows both."""
    early = SYSRQ_5_10[:8]  # marker + the victim's block
    assert early[-1].endswith("rewind_stack_and_make_dead+0x17/0x20")
    between = ["[  395.000000] chardev-lab: a student looked at the log"]
    dump = parse_sysrq_blocked(early + between + SYSRQ_5_10)
    assert dump is not None
    assert [t["pid"] for t in dump["tasks"]] == [812, 813]
    assert dump["lines"] == [chardev_kernel_log.strip_log_prefix(line) for line in SYSRQ_5_10]
    first_only = parse_sysrq_blocked(early + between)
    assert first_only is not None
    assert [t["pid"] for t in first_only["tasks"]] == [812]


@pytest.mark.parametrize(
    "following",
    [
        pytest.param(HUNG_5_10_READER, id="dmesg-hung-task-report"),
        pytest.param(OOPS_5_10, id="oops-headline"),
    ],
)
def test_sysrq_blocked_stops_at_the_next_report_or_oops(following: list[str]) -> None:
    victim_dump = SYSRQ_5_10[:8]
    dump = parse_sysrq_blocked(victim_dump + following)
    assert dump is not None
    assert len(dump["lines"]) == len(victim_dump)
    (task,) = dump["tasks"]
    assert task["stack"] == VICTIM_STACK_5_10


def test_sysrq_blocked_none() -> None:
    assert parse_sysrq_blocked(OOPS_6_1 + HUNG_6_1_READER) is None
    assert parse_sysrq_blocked([]) is None


def test_sysrq_blocked_is_bounded() -> None:
    dump = parse_sysrq_blocked(SYSRQ_5_10 + [" schedule+0x46/0xb0"] * 200, max_lines=40)
    assert dump is not None
    assert len(dump["lines"]) == 40


@pytest.mark.parametrize(
    ("line", "comm", "state", "pid"),
    [
        # 5.10: " stack:%5lu pid:%5d ppid:%6d"
        (
            "task:chardev-victim  state:D stack:    0 pid:  812 ppid:     1 flags:0x00004004",
            "chardev-victim",
            "D",
            812,
        ),
        # 6.1: " stack:%-5lu pid:%-5d ppid:%-6d"
        (
            "task:chardev-reader  state:D stack:0     pid:523   ppid:1      flags:0x00000002",
            "chardev-reader",
            "D",
            523,
        ),
        # 6.12: tgid added
        (
            "task:chardev-reader  state:D stack:0     pid:523   tgid:523   ppid:1      flags:0x00000002",
            "chardev-reader",
            "D",
            523,
        ),
        # later kernels add task_flags
        (
            "task:chardev-reader  state:D stack:0     pid:523   tgid:523   ppid:1      task_flags:0x400000 "
            "flags:0x00004002",
            "chardev-reader",
            "D",
            523,
        ),
        # a 15-character comm leaves one space before "state:"
        (
            "task:chardev-victim1 state:D stack:0     pid:90210 ppid:1      flags:0x00000000",
            "chardev-victim1",
            "D",
            90210,
        ),
        # a running task
        (
            "task:kworker/0:1    state:R  running task     stack:0     pid:17    ppid:2      "
            "flags:0x00004000",
            "kworker/0:1",
            "R",
            17,
        ),
        # with the log prefix still there: _task_dumps strips only white space, parse_* strip the rest
        (
            "  task:chardev-reader  state:D stack:0     pid:523   ppid:1      flags:0x00000002",
            "chardev-reader",
            "D",
            523,
        ),
    ],
)
def test_task_dumps_task_line(line: str, comm: str, state: str, pid: int) -> None:
    (dump,) = chardev_kernel_log._task_dumps([line, "Call Trace:", " __schedule+0x351/0xa20"])
    assert (dump["comm"], dump["state"], dump["pid"], dump["stack"]) == (comm, state, pid, ["__schedule"])


def test_task_dumps_frames_and_bounds() -> None:
    lines = [
        " stray_frame+0x1/0x2",  # before any task line: nobody's
        "task:chardev-reader  state:D stack:0     pid:523   ppid:1      flags:0x00000002",
        "Call Trace:",
        " <TASK>",
        " ? pipe_read+0x4c/0x450",
        " chardev_read+0x1c/0x40 [chardev]",
        "RIP: 0010:__schedule+0x351/0xa20",  # a register line, not a frame
        " 0xffffffffc06e5200",  # an address outside any symbol (the unloaded module)
        *[f" frame_{index}+0x10/0x20" for index in range(30)],
        " </TASK>",
    ]
    (dump,) = chardev_kernel_log._task_dumps(lines)
    assert dump["stack"][:3] == ["pipe_read", "chardev_read", "frame_0"]
    assert len(dump["stack"]) == 16
    (short,) = chardev_kernel_log._task_dumps(lines, max_frames=2)
    assert short["stack"] == ["pipe_read", "chardev_read"]
    assert chardev_kernel_log._task_dumps(["Call Trace:", " __schedule+0x351/0xa20"]) == []


# --- gathering from a fake /proc ----------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    """A /proc tree under tmp_path, PID files in its run/, a fake clock and a fake kill."""
    return FakeHost(tmp_path, run_dir="/run")


def gather(fake: FakeHost, pidfiles: dict[str, str], **kwargs: Any) -> list[TaskEvidence]:
    return gather_tasks(
        pidfiles, root=str(fake.root), kill=fake.kill, sleep=fake.sleep, clock=fake.clock, **kwargs
    )


def test_gather_tasks_stuck_tasks_survive_sigkill(fake: FakeHost) -> None:
    fake.task(845, "chardev-victim", "X")
    fake.task(846, "chardev (reader)", "D", "pipe_read", b"python3\x00chardev_victim.py\x00splice\x00")
    pidfiles = {
        "victim": fake.pidfile("victim.pid", fake.entry(845)),
        "reader": fake.pidfile("reader.pid", fake.entry(846).strip()),  # no newline: also read
    }
    victim, reader = gather(fake, pidfiles, kill_wait=2.0, poll_interval=0.1)
    assert fake.kills == [(845, signal.SIGKILL), (846, signal.SIGKILL)]
    assert (victim.pid, victim.state, victim.wchan, victim.cmdline) == (845, "X", None, [])
    assert (reader.comm, reader.state, reader.wchan) == ("chardev (reader)", "D", "pipe_read")
    assert reader.cmdline == ["python3", "chardev_victim.py", "splice"]
    for task in (victim, reader):
        assert task.identity == "starttime"  # the reader's comm does not matter with a start time
        assert task.kill_sent is True
        assert task.killed_but_alive is True
        assert task.error is None
    assert victim.state_after_kill == "X"
    assert reader.state_after_kill == "D"
    assert 2.0 <= fake.now <= 2.2  # bounded wait


def test_gather_tasks_killable_task_goes_away(fake: FakeHost) -> None:
    fake.task(900, "python3", "D")
    fake.killable.add(900)
    (task,) = gather(fake, {"victim": fake.pidfile("v.pid", fake.entry(900))})
    assert fake.kills == [(900, signal.SIGKILL)]
    assert task.killed_but_alive is False
    assert task.state_after_kill is None
    assert fake.now == 0.0  # seen gone at the first look, no waiting


def test_gather_tasks_never_kills_a_task_that_is_not_stuck(fake: FakeHost) -> None:
    fake.task(901, "chardev-victim", "S", "hrtimer_nanosleep")
    (task,) = gather(fake, {"victim": fake.pidfile("v.pid", fake.entry(901))})
    assert task.identity == "starttime"
    assert fake.kills == []
    assert task.kill_sent is False
    assert task.killed_but_alive is None
    assert task.state == "S"


def test_gather_tasks_without_kill_test(fake: FakeHost) -> None:
    fake.task(845, "chardev-victim", "X")
    (task,) = gather(fake, {"victim": fake.pidfile("v.pid", fake.entry(845))}, kill_test=False)
    assert fake.kills == []
    assert task.killed_but_alive is None
    assert task.state == "X"


def test_gather_tasks_reads_the_kernel_stack(fake: FakeHost) -> None:
    fake.task(1552, "python3", "D", stack=None)
    fake.task(1553, "python3", "D", "0", stack=PROC_STACK_READER_5_10)
    pidfiles = {
        "victim": fake.pidfile("v.pid", fake.entry(1552)),
        "reader": fake.pidfile("r.pid", fake.entry(1553)),
    }
    victim, reader = gather(fake, pidfiles, kill_test=False)
    assert (victim.wchan, victim.stack) == (None, [])
    assert reader.wchan is None
    assert reader.stack[:2] == ["pipe_read", "new_sync_read"]


def test_gather_tasks_missing_pidfile_and_process(fake: FakeHost) -> None:
    pidfiles = {
        "victim": str(fake.root / "run" / "absent.pid"),
        "reader": fake.pidfile("reader.pid", "4242"),
        "other": fake.pidfile("other.pid", "garbage"),
        "init": fake.pidfile("init.pid", "1"),
    }
    victim, reader, other, init = gather(fake, pidfiles)
    assert victim.pid is None and "cannot read pidfile" in (victim.error or "")
    assert reader.pid == 4242 and reader.state is None and reader.error == "pid 4242 is not in /proc"
    assert other.pid is None and other.error
    assert init.pid is None and init.error
    assert fake.kills == []


def test_gather_tasks_kill_permission_error(fake: FakeHost) -> None:
    fake.task(845, "chardev-victim", "X")

    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    (task,) = gather_tasks(
        {"victim": fake.pidfile("v.pid", fake.entry(845))}, root=str(fake.root), kill=refuse
    )
    assert task.kill_sent is False
    assert task.killed_but_alive is None
    assert task.error == "SIGKILL to pid 845 failed: EPERM"


def test_gather_tasks_old_pidfile_known_by_comm(fake: FakeHost) -> None:
    """A PID file of an older victim (pid only) is tied to its task by the command name the victim sets."""
    fake.task(845, "chardev-victim", "X")
    fake.task(846, "chardev-reader", "D", "pipe_read")
    pidfiles = {"victim": fake.pidfile("victim.pid", "845\n"), "reader": fake.pidfile("reader.pid", "846")}
    victim, reader = gather(fake, pidfiles, kill_wait=0.2)
    assert (victim.identity, reader.identity) == ("comm", "comm")
    assert (victim.error, reader.error) == (None, None)
    assert fake.kills == [(845, signal.SIGKILL), (846, signal.SIGKILL)]


@pytest.mark.parametrize("state", ["D", "X", "S"])
def test_gather_tasks_reused_pid_is_not_the_victim(fake: FakeHost, state: str) -> None:
    """The victim's pid now belongs to another process (other start time): not reported, never killed."""
    fake.task(845, "chardev-victim", state, "pipe_read", b"python3\x00chardev_victim.py\x00", starttime=99999)
    fake.task(846, "chardev-reader", state, "pipe_read", starttime=88888)
    pidfiles = {
        "victim": fake.pidfile("victim.pid", "845 30845\n"),
        "reader": fake.pidfile("reader.pid", "846 30846"),
    }
    victim, reader = gather(fake, pidfiles, kill_wait=0.2)
    assert fake.kills == []
    for task, started in ((victim, 30845), (reader, 30846)):
        assert task.identity is None
        assert task.pid in (845, 846)  # the pid of the PID file, so that the oops can still be matched
        assert (task.state, task.comm, task.wchan, task.cmdline, task.stack) == (None, None, None, [], [])
        assert task.kill_sent is False and task.killed_but_alive is None
        assert "is another process now" in (task.error or "")
        assert f"started at tick {started}" in (task.error or "")
    assert "started at tick 99999" in (victim.error or "")


@pytest.mark.parametrize(
    ("role", "comm"), [("victim", "sshd"), ("victim", "chardev-reader"), ("reader", "chardev-victim")]
)
def test_gather_tasks_old_pidfile_of_another_command_is_not_killed(
    fake: FakeHost, role: str, comm: str
) -> None:
    """An old PID file (no start time) whose pid now runs another command: not reported, never killed."""
    fake.task(845, comm, "D")
    (task,) = gather(fake, {role: fake.pidfile(f"{role}.pid", "845\n")}, kill_wait=0.2)
    assert fake.kills == []
    assert task.identity is None and task.state is None
    assert task.error == (
        f"pid 845 is {comm!r}, not the {role} ({chardev_proc.ROLE_COMMS[role]!r}): the pid was reused"
    )


def test_gather_tasks_reused_pid_mismatch_through_compare(fake: FakeHost) -> None:
    fake.task(845, "bash", "S", starttime=5)
    (task,) = gather(fake, {"victim": fake.pidfile("victim.pid", "845 30845\n")})
    observed = observed_from([task], parse_kernel_log(parse_kmsg_records(KMSG_6_1)), TAINT_AFTER_CRASH)
    mismatches = compare(expected_outcome("6.1.0-56-amd64", "read"), observed)
    assert mismatches == [
        "victim: pid 845 is another process now (bash, started at tick 5; the victim started at tick 30845), "
        "expected state X (" + expected_outcome("6.1.0-56-amd64", "read")["tasks"]["victim"]["why"] + ")"
    ]
    assert observed["oops_of_victim"] is True  # the oops was the victim's: only the pid was reused since
    assert fake.kills == []


# --- kernel_diagnostics ---------------------------------------------------------------------------------


STUCK_6_1 = [
    {"role": "victim", "pid": 522, "state": "X"},
    {"role": "reader", "pid": 523, "state": "D"},
]
STUCK_5_10 = [
    {"role": "victim", "pid": 812, "state": "D"},
    {"role": "reader", "pid": 813, "state": "D"},
]


# After the oops: the lab's crashed kernels (taint D). The detector is silent for good: nothing is waited for.


def test_diagnostics_6_1_after_the_oops(tmp_path: Path) -> None:
    """6.1 splice mode as the crash leaves it: taint D, the victim in X, the reader in D. No report is
    waited for (wait is 30 s, the fake clock never moves); SysRq w shows the reader."""
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    result = kernel.diagnose(STUCK_6_1, wait=30.0)
    hung, sysrq = result["hung_task"], result["sysrq_w"]
    assert hung["timeout_secs"] == 10
    assert hung["silenced"].startswith("the kernel has oopsed (taint D)")
    assert "all bets are off" in hung["silenced"]
    assert hung["reported"] == {"reader": False}
    assert hung["reports"] == []
    # the victim is in X: not judged
    assert hung["not_applicable"] == {"victim": NOT_IN_D + " (pid 522 is in X)"}
    assert kernel.sleeps == [] and kernel.now == 0.0
    assert kernel.reads == 2  # the first look and the SysRq dump
    assert kernel.trigger.read_text() == "w\n"
    assert sysrq["done"] is True and sysrq["error"] is None
    assert sysrq["shown"] == {"reader": True}
    assert [(t["comm"], t["pid"], t["state"]) for t in sysrq["tasks"]] == [("chardev-reader", 523, "D")]
    assert sysrq["lines"][0] == "sysrq: Show Blocked State"
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": True}
    json.dumps(result)  # a module return value


def test_diagnostics_5_10_after_the_oops(tmp_path: Path) -> None:
    """5.10 splice mode: victim and reader both in D after the oops. Neither is reported (as measured on
    a Debian 5.10 VM), however long wait is; SysRq w shows both."""
    kernel = FakeKernel(tmp_path, OOPS_5_10, sysrq_dump=SYSRQ_5_10, timeout="120\n")
    result = kernel.diagnose(STUCK_5_10, wait=300.0)
    hung = result["hung_task"]
    assert hung["timeout_secs"] == 120
    assert hung["silenced"]
    assert hung["reported"] == {"victim": False, "reader": False}
    assert hung["reports"] == [] and hung["not_applicable"] == {}
    assert kernel.sleeps == [] and kernel.now == 0.0
    assert result["sysrq_w"]["shown"] == {"victim": True, "reader": True}
    assert [t["stack"][2] for t in result["sysrq_w"]["tasks"]] == ["do_exit", "schedule"]
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": True}


def test_diagnostics_no_wait_after_the_oops_even_with_a_report(tmp_path: Path) -> None:
    """On an oopsed kernel nothing is waited for, whatever wait says, and a report of a watched task
    found anyway (no real kernel printed one) is returned and makes hung_task_silent false."""
    kernel = FakeKernel(tmp_path, OOPS_6_1 + HUNG_6_1_READER, sysrq_dump=SYSRQ_6_1)
    result = kernel.diagnose(STUCK_6_1, wait=30.0)
    hung = result["hung_task"]
    assert kernel.now == 0.0 and kernel.sleeps == []
    assert kernel.reads == 2
    assert hung["silenced"]
    assert hung["reported"] == {"reader": True}
    assert [(r["pid"], r["stack"]) for r in hung["reports"]] == [(523, READER_STACK_6_1)]
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": False}


def test_diagnostics_after_the_oops_a_late_report_is_not_waited_for(tmp_path: Path) -> None:
    """A report that would come at the second read of the log: the first look is the only one."""
    kernel = FakeKernel(tmp_path, OOPS_6_1, scheduled={2: HUNG_6_1_READER}, sysrq_dump=SYSRQ_6_1)
    result = kernel.diagnose(STUCK_6_1, wait=30.0)
    assert kernel.sleeps == [] and kernel.now == 0.0
    assert result["hung_task"]["reported"] == {"reader": False}
    assert result["hung_task"]["reports"] == []
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": True}


def test_diagnostics_after_the_oops_reports_of_other_tasks(tmp_path: Path) -> None:
    """A report of a task not watched (here the 5.10 victim's pid) breaks no silence about the watched."""
    kernel = FakeKernel(tmp_path, OOPS_6_1 + HUNG_5_10_VICTIM, sysrq_dump=SYSRQ_6_1)
    result = kernel.diagnose(STUCK_6_1, wait=30.0)
    assert result["hung_task"]["reports"] == []
    assert result["hung_task"]["reported"] == {"reader": False}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": True}


@pytest.mark.parametrize(
    ("tainted", "oopsed"),
    [
        ("128\n", True),
        (f"{TAINT_AFTER_CRASH}\n", True),
        ("4294967295\n", True),
        ("0\n", False),
        (f"{TAINT_NO_OOPS}\n", False),
        ("127\n", False),  # every bit below D
        ("256\n", False),  # the bit above D
        ("not a number\n", False),
        (None, False),  # no tainted file
    ],
)
def test_diagnostics_taint_bit_7_decides(tmp_path: Path, tainted: str | None, oopsed: bool) -> None:
    """Only taint D (bit 7, 128) silences the detector; otherwise the reports are waited for."""
    kernel = FakeKernel(tmp_path, sysrq_dump=SYSRQ_6_1, tainted=None)
    if tainted is not None:
        (tmp_path / "proc/sys/kernel/tainted").write_text(tainted)
    result = kernel.diagnose(STUCK_6_1, wait=5.0)
    assert bool(result["hung_task"]["silenced"]) is oopsed
    assert (result["hung_task"]["silenced"] is None) is not oopsed
    assert kernel.sleeps == ([] if oopsed else [1.0] * 5)
    assert result["hung_task"]["reported"] == {"reader": False}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": oopsed}


def test_diagnostics_x_tasks_only(tmp_path: Path) -> None:
    """6.1 read mode: the victim is in X, nothing in D: no wait, no SysRq write, markers true (the
    detector is silenced by the oops all the same)."""
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    result = kernel.diagnose([{"role": "victim", "pid": 522, "state": "X"}], wait=30.0)
    assert kernel.sleeps == []
    assert kernel.reads == 1
    assert kernel.trigger.read_text() == ""  # never written
    assert result["hung_task"]["silenced"]
    assert result["hung_task"]["reported"] == {}
    assert result["hung_task"]["not_applicable"] == {"victim": NOT_IN_D + " (pid 522 is in X)"}
    assert result["sysrq_w"] == {"done": False, "tasks": [], "lines": [], "shown": {}, "error": None}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": True}


def test_diagnostics_no_task_in_d(tmp_path: Path) -> None:
    """Gone or not stuck tasks are not applicable either; with nothing in D nothing is waited for."""
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    stuck = [
        {"role": "victim", "pid": 522, "state": None},
        {"role": "reader", "pid": 523, "state": "S"},
    ]
    result = kernel.diagnose(stuck)
    assert kernel.sleeps == [] and kernel.trigger.read_text() == ""
    assert result["hung_task"]["not_applicable"] == {
        "victim": NOT_IN_D + " (pid 522 is in no state)",
        "reader": NOT_IN_D + " (pid 523 is in S)",
    }
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": True}
    assert (
        kernel_diagnostics([], kernel.read_lines, root=str(tmp_path), wait=30.0, sleep=kernel.sleep)[
            "hung_task"
        ]["reported"]
        == {}
    )


@pytest.mark.parametrize("tainted", [TAINT_NO_OOPS, TAINT_AFTER_CRASH], ids=["no-oops", "oopsed"])
@pytest.mark.parametrize("timeout", ["0\n", None], ids=["detector-off", "no-detector"])
def test_diagnostics_without_hung_task_detector(tmp_path: Path, timeout: str | None, tainted: int) -> None:
    """hung_task_timeout_secs 0 (off) or absent (no CONFIG_DETECT_HUNG_TASK): no wait, not reported, with
    or without an oops; silenced says so only after an oops."""
    kernel = FakeKernel(tmp_path, sysrq_dump=SYSRQ_6_1, timeout=timeout, tainted=tainted)
    result = kernel.diagnose(STUCK_6_1, wait=30.0)
    oopsed = tainted == TAINT_AFTER_CRASH
    assert result["hung_task"]["timeout_secs"] == (0 if timeout else None)
    assert bool(result["hung_task"]["silenced"]) is oopsed
    assert result["hung_task"]["reported"] == {"reader": False}
    assert 1.0 not in kernel.sleeps
    assert result["sysrq_w"]["shown"] == {"reader": True}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": oopsed}


# A kernel that did not oops (taint O and E only): the detector still checks, so its reports of the tasks
# in D are waited for, polling the log every second, at most wait seconds.


def test_diagnostics_6_1_report_after_a_few_polls(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, scheduled={4: HUNG_6_1_READER}, sysrq_dump=SYSRQ_6_1, tainted=TAINT_NO_OOPS)
    result = kernel.diagnose(STUCK_6_1)
    hung, sysrq = result["hung_task"], result["sysrq_w"]
    assert hung["timeout_secs"] == 10
    assert hung["silenced"] is None
    assert hung["reported"] == {"reader": True}
    assert [(r["comm"], r["pid"], r["seconds"]) for r in hung["reports"]] == [("chardev-reader", 523, 10)]
    assert hung["reports"][0]["stack"] == READER_STACK_6_1
    # the victim is in X: not judged, and not waited for
    assert hung["not_applicable"] == {"victim": NOT_IN_D + " (pid 522 is in X)"}
    # polled every second until the 4th read showed the report; the SysRq dump was there at once
    assert kernel.sleeps == [1.0, 1.0, 1.0]
    assert kernel.trigger.read_text() == "w\n"
    assert sysrq["done"] is True and sysrq["error"] is None
    assert sysrq["shown"] == {"reader": True}
    # reported, so not silent: a crashed kernel's expectation would not hold
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": False}
    json.dumps(result)


def test_diagnostics_5_10_waits_for_both_tasks(tmp_path: Path) -> None:
    kernel = FakeKernel(
        tmp_path,
        scheduled={2: HUNG_5_10_VICTIM, 6: HUNG_5_10_READER},
        sysrq_dump=SYSRQ_5_10,
        timeout="120\n",
        tainted=TAINT_NO_OOPS,
    )
    result = kernel.diagnose(STUCK_5_10, wait=300.0)
    assert result["hung_task"]["timeout_secs"] == 120
    assert result["hung_task"]["silenced"] is None
    assert result["hung_task"]["reported"] == {"victim": True, "reader": True}
    assert result["hung_task"]["not_applicable"] == {}
    assert [r["pid"] for r in result["hung_task"]["reports"]] == [812, 813]
    assert kernel.sleeps == [1.0] * 5  # not done at the victim's report: the reader's came at read 6
    assert result["sysrq_w"]["shown"] == {"victim": True, "reader": True}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": False}


def test_diagnostics_6_12_dmesg_r_lines(tmp_path: Path) -> None:
    kernel = FakeKernel(
        tmp_path, scheduled={1: HUNG_6_12_READER}, sysrq_dump=SYSRQ_6_1, tainted=TAINT_NO_OOPS
    )
    result = kernel.diagnose(STUCK_6_1)
    assert result["hung_task"]["reported"] == {"reader": True}
    assert result["hung_task"]["reports"][0]["stack"] == READER_STACK_6_12
    assert kernel.sleeps == []  # reported at the first look: no wait, and the dump came at once


def test_diagnostics_timeout_expires(tmp_path: Path) -> None:
    """No report within wait: reported false after at most wait seconds; SysRq w is still taken. Not
    silenced either: the detector may yet report, it just has not."""
    kernel = FakeKernel(tmp_path, sysrq_dump=SYSRQ_6_1, tainted=TAINT_NO_OOPS)
    result = kernel.diagnose(STUCK_6_1, wait=30.0)
    assert result["hung_task"]["silenced"] is None
    assert result["hung_task"]["reported"] == {"reader": False}
    assert result["hung_task"]["reports"] == []
    assert kernel.sleeps == [1.0] * 30
    assert kernel.now == 30.0
    assert kernel.reads == 31 + 1  # the first look, one per second, and one for the SysRq dump
    assert result["sysrq_w"]["shown"] == {"reader": True}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": True, "hung_task_silent": False}


def test_diagnostics_only_reports_of_watched_tasks(tmp_path: Path) -> None:
    """Reports of other tasks (here the 5.10 victim's pid, not watched) do not count."""
    kernel = FakeKernel(tmp_path, HUNG_5_10_VICTIM, sysrq_dump=SYSRQ_6_1, tainted=TAINT_NO_OOPS)
    result = kernel.diagnose(STUCK_6_1, wait=3.0)
    assert result["hung_task"]["reports"] == []
    assert result["hung_task"]["reported"] == {"reader": False}
    assert kernel.now == 3.0


# SysRq w (the same with or without an oops; here after one).


def test_diagnostics_sysrq_trigger_unwritable(tmp_path: Path) -> None:
    """A sysrq-trigger that cannot be written (a directory here: the tests may run as root)."""
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    kernel.trigger.unlink()
    kernel.trigger.mkdir()
    result = kernel.diagnose(STUCK_6_1)
    sysrq = result["sysrq_w"]
    assert sysrq["done"] is False
    assert sysrq["error"] == "cannot write proc/sysrq-trigger: Is a directory"
    assert sysrq["tasks"] == [] and sysrq["lines"] == []
    assert sysrq["shown"] == {"reader": False}
    assert result["hung_task"]["reported"] == {"reader": False}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": False, "hung_task_silent": True}


def test_diagnostics_sysrq_dump_lags(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1, dump_lag=2)
    result = kernel.diagnose(STUCK_6_1)
    assert kernel.sleeps == [0.5, 0.5]  # the dump's short wait only: no hung-task wait after the oops
    assert result["sysrq_w"]["shown"] == {"reader": True}


def test_diagnostics_sysrq_dump_never_comes(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=None)
    result = kernel.diagnose(STUCK_6_1)
    assert kernel.trigger.read_text() == "w\n"
    assert kernel.sleeps == [0.5] * 5  # bounded
    assert result["sysrq_w"]["done"] is True
    assert result["sysrq_w"]["shown"] == {"reader": False}
    assert diagnostics_markers(result) == {"sysrq_w_blocked": False, "hung_task_silent": True}


def test_diagnostics_sysrq_dump_without_the_task(tmp_path: Path) -> None:
    """A dump that does not show the watched task (another task in D): shown false, tasks kept."""
    other = [line.replace("chardev-reader", "jbd2/vda1-8    ").replace("523", "211") for line in SYSRQ_6_1]
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=other)
    result = kernel.diagnose(STUCK_6_1)
    assert [t["pid"] for t in result["sysrq_w"]["tasks"]] == [211]
    assert result["sysrq_w"]["shown"] == {"reader": False}


def test_diagnostics_sysrq_off(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, OOPS_6_1, sysrq_dump=SYSRQ_6_1)
    result = kernel.diagnose(STUCK_6_1, sysrq=False)
    assert kernel.trigger.read_text() == ""
    assert kernel.sleeps == []
    assert result["sysrq_w"]["done"] is False
    assert result["sysrq_w"]["error"] == "not asked"
    assert result["hung_task"]["reported"] == {"reader": False}
    assert result["hung_task"]["silenced"]


# --- diagnostics_markers and expected_outcome -----------------------------------------------------------

SILENCED = "the kernel has oopsed (taint D), and from then on its hung-task detector checks nothing"


@pytest.mark.parametrize(
    ("diagnostics", "markers"),
    [
        pytest.param(None, (True, False), id="none"),
        pytest.param({}, (True, False), id="empty"),
        pytest.param({"hung_task": None, "sysrq_w": None}, (True, False), id="nulls"),
        pytest.param(
            {"hung_task": {"silenced": SILENCED, "reported": {}}, "sysrq_w": {"shown": {}}},
            (True, True),
            id="oopsed-nothing-in-d",
        ),
        pytest.param(
            {
                "hung_task": {"silenced": SILENCED, "reported": {"reader": False}},
                "sysrq_w": {"shown": {"reader": True}},
            },
            (True, True),
            id="oopsed-as-expected",
        ),
        pytest.param(
            {
                "hung_task": {"silenced": SILENCED, "reported": {"victim": False, "reader": True}},
                "sysrq_w": {"shown": {"victim": True, "reader": True}},
            },
            (True, False),
            id="oopsed-but-a-report",
        ),
        pytest.param(
            {
                "hung_task": {"silenced": SILENCED, "reported": {"victim": False, "reader": False}},
                "sysrq_w": {"shown": {"victim": True, "reader": False}},
            },
            (False, True),
            id="oopsed-not-all-shown",
        ),
        pytest.param(
            {
                "hung_task": {"silenced": None, "reported": {"reader": False}},
                "sysrq_w": {"shown": {"reader": True}},
            },
            (True, False),
            id="no-oops-no-report",
        ),
        pytest.param(
            {
                "hung_task": {"silenced": None, "reported": {"reader": True}},
                "sysrq_w": {"shown": {"reader": True}},
            },
            (True, False),
            id="no-oops-reported",
        ),
        pytest.param(
            {"hung_task": {"reported": {"reader": False}}, "sysrq_w": {"shown": {"reader": True}}},
            (True, False),
            id="without-silenced",
        ),
    ],
)
def test_diagnostics_markers(diagnostics: dict[str, Any] | None, markers: tuple[bool, bool]) -> None:
    assert diagnostics_markers(diagnostics) == dict(
        zip(("sysrq_w_blocked", "hung_task_silent"), markers, strict=True)
    )


BASE_MARKERS = {"oops", "oops_of_victim", "recursive_fault", "last_unloaded_chardev", "taint_die"}


@pytest.mark.parametrize("release", ["5.10.0-35-amd64", "6.1.0-56-amd64", "6.12.57+deb13-amd64"])
@pytest.mark.parametrize("mode", ["read", "splice"])
def test_expected_outcome_diagnostics_markers(release: str, mode: str) -> None:
    plain = expected_outcome(release, mode)
    assert set(plain["markers"]) == BASE_MARKERS
    assert expected_outcome(release, mode, diagnostics=False) == plain
    diagnosed = expected_outcome(release, mode, diagnostics=True)
    assert diagnosed["markers"] == {**plain["markers"], "sysrq_w_blocked": True, "hung_task_silent": True}
    assert diagnosed["tasks"] == plain["tasks"]


def test_compare_with_diagnostics_markers() -> None:
    expected = expected_outcome("6.1.0-56-amd64", "read", diagnostics=True)
    observed: dict[str, Any] = {
        "tasks": {"victim": {"pid": 522, "state": "X", "wchan": None, "killed_but_alive": True}},
        **dict.fromkeys(BASE_MARKERS, True),
        "sysrq_w_blocked": True,
        "hung_task_silent": True,
    }
    assert compare(expected, observed) == []
    observed.update(sysrq_w_blocked=False, hung_task_silent=False)
    assert compare(expected, observed) == [
        "missing: each task in D in the SysRq w dump (sysrq: Show Blocked State)",
        "missing: the hung-task detector silent after the oops (no 'blocked for more than')",
    ]
    # the old marker counts for nothing
    del observed["hung_task_silent"]
    observed.update(sysrq_w_blocked=True, hung_task_report=True)
    assert compare(expected, observed) == [
        "missing: the hung-task detector silent after the oops (no 'blocked for more than')"
    ]


# --- the crash state of a lab host ---------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """/proc, /sys, /run/chardev-lab and /var/lib/chardev-lab of a booted lab host below tmp_path/root."""
    return FakeHost.booted(tmp_path / "root")


def crash_state_of(host: FakeHost, log_lines: list[str] | None = None) -> dict[str, Any]:
    return crash_state(str(host.root), RUN_DIR, log_lines, TAINT_BASELINE_PATH)


def mark(host: FakeHost, **fields: Any) -> dict[str, Any]:
    """The mark operation=mark writes before the rmmod: this boot, and the load of chardev loaded now."""
    record = {
        "state": "unloading",
        "mode": "read",
        "marked_at": "t0",
        "boot_id": BOOT_ID,
        "module": module_instance(str(host.root)),
        **fields,
    }
    host.record(record)
    return record


def victim(host: FakeHost, reader: bool = False) -> None:
    """The victim (and its pipe reader) alive, waiting for the trigger, named by their PID files."""
    host.task(812, "chardev-victim", "S", starttime=4242)
    host.pidfile("victim.pid", "812 4242\n")
    if reader:
        host.task(813, "chardev-reader", "S", starttime=4243)
        host.pidfile("reader.pid", "813 4243\n")


#: A lab host's mounts: the root on ext4, /run on tmpfs.
MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 22 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:2 - tmpfs tmpfs rw,size=200772k,mode=755
"""
#: The same host with /run not a tmpfs (a directory of the root filesystem).
MOUNTINFO_NO_TMPFS = "\n".join(line for line in MOUNTINFO.splitlines() if " /run " not in line) + "\n"


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
    state = crash_state_of(host)
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
    state = crash_state_of(host, ["chardev: registered with major 247"])
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
    state = crash_state_of(host, OOPS_LOG_6_1)
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
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"]) == (True, "done")
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (crashed)"]


def test_recover_taint_d_without_record(host: FakeHost) -> None:
    host.tainted(TAINT_AFTER_CRASH)
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["reasons"] == ["taint flag D (oops)"]


def test_recover_unloading_record_and_oops_count(host: FakeHost) -> None:
    """The run was interrupted after the crash: the record still says "unloading"."""
    host.record({"state": "unloading", "mode": "splice", "marked_at": "t0"})
    host.tainted(0)
    host.oops_count(2)
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (unloading)", "oops_count 2"]
    assert state["record"]["mode"] == "splice"


def test_recover_recursive_fault_in_the_log_only(host: FakeHost) -> None:
    """No record, no taint file, no oops count: the kernel log alone says the kernel is damaged."""
    state = crash_state_of(host, RECURSIVE_FAULT_LOG)
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["reasons"] == ["recursive fault in the kernel log"]
    assert state["recursive_fault"] is True
    # the same host without the log lines is fresh
    assert crash_state_of(host)["phase"] == "fresh"


@pytest.mark.parametrize(
    ("text", "why"), [("{half a record", "not JSON"), ('["crashed"]', "not a JSON object")]
)
def test_recover_broken_record(host: FakeHost, text: str, why: str) -> None:
    """A broken record counts as a crash (the safe side) that is not completely recorded."""
    host.record(text)
    host.tainted(0)
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"]) == (True, "recover")
    assert state["record"] == {}
    assert (state["record_error"] or "").startswith(why)
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (unreadable)"]


def test_armed_module_removed_under_a_live_victim(host: FakeHost) -> None:
    host.record({"state": "unloading", "mode": "read", "marked_at": "t0"})
    host.tainted(TAINT_O | TAINT_E)
    host.task(812, "chardev-victim", "S", starttime=4242)
    host.pidfile("victim.pid", "812 4242\n")
    state = crash_state_of(host, ["chardev: unregistered"])
    assert state["module_loaded"] is False
    assert (state["crashed"], state["phase"]) == (False, "armed")
    assert state["reasons"] == ["crash record /run/chardev-lab/crashed.json (unloading)"]
    assert [(t["role"], t["pid"], t["state"], t["identity"]) for t in state["leftovers"]] == [
        ("victim", 812, "S", "starttime")
    ]


def test_leftover_live_victim_module_loaded(host: FakeHost) -> None:
    """Interrupted between the mark and the rmmod: the load the victim opened is still in the kernel."""
    host.module("crash")
    host.tainted(TAINT_O | TAINT_E)
    victim(host, reader=True)
    marked = mark(host, mode="splice")
    assert marked["module"] == {
        "sysfs_ino": host.path("/sys/module/chardev").stat().st_ino,
        "text": "0xffffffffc0a63000",
    }
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"]) == (False, "leftover")
    assert state["victim_module"] == state["module_instance"] == marked["module"]
    assert [(t["role"], t["pid"]) for t in state["leftovers"]] == [("victim", 812), ("reader", 813)]


def test_armed_when_chardev_was_loaded_again_after_the_rmmod(host: FakeHost) -> None:
    """The victim holds the file of the load its mark names; that load was removed and chardev loaded
    again (make lab, or by hand): the victim's file has no code behind it, so it is armed (never
    signalled), not a leftover of a loaded module."""
    host.module("crash")
    victim(host)
    mark(host)
    host.rmmod()
    assert crash_state_of(host)["phase"] == "armed"
    host.module("safe", sections={".text": "0xffffffffc0b71000", ".rodata": "0xffffffffc0b73000"})
    state = crash_state_of(host)
    assert state["module_loaded"] is True
    assert (state["crashed"], state["phase"]) == (False, "armed")
    assert state["module_instance"]["text"] == "0xffffffffc0b71000"
    assert state["victim_module"]["text"] == "0xffffffffc0a63000"


def test_armed_when_the_new_load_reuses_the_address(host: FakeHost) -> None:
    """A new load may get the freed address again: the sysfs directory's inode tells the loads apart."""
    host.module("crash")
    victim(host)
    marked = mark(host)
    host.record({**marked, "module": {**marked["module"], "sysfs_ino": marked["module"]["sysfs_ino"] + 1}})
    state = crash_state_of(host)
    assert state["module_instance"]["text"] == state["victim_module"]["text"]
    assert state["phase"] == "armed"


def test_a_live_victim_without_mark_or_layout_is_armed(host: FakeHost) -> None:
    """Nothing says which load of chardev the victim opened: it is never taken for a leftover to stop."""
    host.module_loaded()
    victim(host)
    state = crash_state_of(host)
    assert (state["victim_module"], state["phase"]) == (None, "armed")
    # a mark of an older role (no module in it) says nothing either
    host.record({"state": "unloading", "mode": "read", "marked_at": "t0"})
    assert crash_state_of(host)["phase"] == "armed"
    # nor one that found no chardev loaded, whatever the layout says
    host.module("crash")
    host.write(
        f"{RUN_DIR}/layout.json",
        json.dumps({"boot_id": BOOT_ID, "sections": {".text": "0xffffffffc0a63000"}}),
    )
    host.record({"state": "unloading", "mode": "read", "marked_at": "t0", "module": None})
    assert crash_state_of(host)["phase"] == "armed"
    host.record({"state": "unloading", "mode": "read", "marked_at": "t0"})
    assert crash_state_of(host)["phase"] == "leftover"  # the older mark: the layout tells


@pytest.mark.parametrize(
    ("boot_id", "text", "phase"),
    [
        (BOOT_ID, "0xffffffffc0a63000", "leftover"),  # the load prepare recorded: the victim's
        (BOOT_ID, "0xffffffffc0b71000", "armed"),  # chardev loaded again since
        (OTHER_BOOT_ID, "0xffffffffc0a63000", "armed"),  # a layout of another boot tells nothing
    ],
)
def test_before_the_mark_the_layout_names_the_victims_load(
    host: FakeHost, boot_id: str, text: str, phase: str
) -> None:
    """Interrupted between the victim's start and the mark: the layout operation=prepare recorded just
    before the victim started names the load it opened."""
    host.module("crash")
    victim(host)
    host.write(
        f"{RUN_DIR}/layout.json",
        json.dumps({"module": "chardev", "boot_id": boot_id, "sections": {".text": text}}),
    )
    assert crash_state_of(host)["phase"] == phase


def test_reused_victim_pid_is_not_a_leftover(host: FakeHost) -> None:
    """The victim's pid now belongs to another process (other start time): nothing is left over."""
    host.module_loaded()
    host.tainted(0)
    host.task(812, "chardev-victim", "S", starttime=9999)
    host.pidfile("victim.pid", "812 4242\n")
    state = crash_state_of(host)
    assert (state["phase"], state["leftovers"]) == ("fresh", [])
    host.module_loaded(False)
    assert crash_state_of(host)["phase"] == "fresh"  # nor armed


def test_old_pidfile_of_another_command_is_not_a_leftover(host: FakeHost) -> None:
    host.module_loaded()
    mark(host)
    host.task(812, "sshd", "S", starttime=9999)
    host.pidfile("victim.pid", "812\n")  # no start time: the command name decides
    assert crash_state_of(host)["phase"] == "fresh"
    host.task(812, "chardev-victim", "S", starttime=9999)  # overwrite: now it is the victim
    state = crash_state_of(host)
    assert state["phase"] == "leftover"
    assert state["leftovers"][0]["identity"] == "comm"


def test_stuck_victim_without_crash_markers_is_not_alive(host: FakeHost) -> None:
    """A victim already in D or X is not "alive": not armed, not a leftover to stop."""
    host.task(812, "chardev-victim", "D", starttime=4242)
    host.pidfile("victim.pid", "812 4242\n")
    state = crash_state_of(host)
    assert state["phase"] == "fresh"
    assert [t["state"] for t in state["leftovers"]] == ["D"]


# --- crash_state: the record's boot ------------------------------------------------------------------


def test_a_record_of_another_boot_is_stale(host: FakeHost) -> None:
    """A run directory that survives a reboot keeps the record of a crash in an earlier boot: it no
    longer marks the host crashed; the kernel's own markers judge this boot."""
    host.write("/proc/self/mountinfo", MOUNTINFO_NO_TMPFS)
    record = {"state": "crashed", "mode": "read", "crashed_at": "t1", "boot_id": OTHER_BOOT_ID}
    host.record(record)
    host.tainted(TAINT_O | TAINT_E)
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"], state["reasons"]) == (False, "fresh", [])
    assert (state["record"], state["stale_record"]) == (None, record)
    assert state["record_stale"] == f"written in another boot ({OTHER_BOOT_ID}; this boot is {BOOT_ID})"
    assert state["run_dir_volatile"] is False
    # the kernel's word still wins
    host.tainted(TAINT_AFTER_CRASH)
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"], state["reasons"]) == (True, "recover", ["taint flag D (oops)"])
    # a mark of another boot is no leftover's, and names no load of chardev for its pidfiles
    host.tainted(0)
    host.module("crash")
    victim(host)
    mark(host, boot_id=OTHER_BOOT_ID)
    state = crash_state_of(host)
    assert (state["record"], state["victim_module"], state["phase"]) == (None, None, "armed")


def test_a_record_of_this_boot_counts(host: FakeHost) -> None:
    host.write("/proc/self/mountinfo", MOUNTINFO_NO_TMPFS)
    host.record({"state": "crashed", "mode": "read", "boot_id": BOOT_ID})
    state = crash_state_of(host)
    assert (state["crashed"], state["phase"], state["record_stale"]) == (True, "done", None)


@pytest.mark.parametrize("text", ['{"state": "crashed", "mode": "read"}', "{half a record"])
@pytest.mark.parametrize(
    ("mountinfo", "counts"), [(MOUNTINFO, True), (MOUNTINFO_NO_TMPFS, False), (None, True)]
)
def test_a_record_without_boot_id_counts_on_tmpfs_only(
    host: FakeHost, text: str, mountinfo: str | None, counts: bool
) -> None:
    """Older records, and broken ones, name no boot: on a tmpfs (or where that cannot be told, as before)
    they can only be of this boot; elsewhere they may be of any earlier one."""
    if mountinfo is not None:
        host.write("/proc/self/mountinfo", mountinfo)
    host.record(text)
    state = crash_state_of(host)
    assert state["crashed"] is counts
    assert state["run_dir_volatile"] is {MOUNTINFO: True, MOUNTINFO_NO_TMPFS: False, None: None}[mountinfo]
    if not counts:
        assert state["phase"] == "fresh"
        assert "not a tmpfs" in state["record_stale"]


def test_filesystem_type() -> None:
    assert filesystem_type("/run/chardev-lab", MOUNTINFO) == "tmpfs"
    assert filesystem_type("/run", MOUNTINFO) == "tmpfs"
    assert filesystem_type("/running/x", MOUNTINFO) == "ext4"  # not below /run
    assert filesystem_type("/var/lib/chardev-lab", MOUNTINFO) == "ext4"
    assert filesystem_type("/run/chardev-lab", MOUNTINFO_NO_TMPFS) == "ext4"
    # a later mount over the same point wins; escaped spaces in mount points
    over = MOUNTINFO + "40 25 0:40 / /run rw - ext4 /dev/vdb rw\n41 22 0:41 / /my\\040dir rw - tmpfs t rw\n"
    assert filesystem_type("/run/chardev-lab", over) == "ext4"
    assert filesystem_type("/my dir/run", over) == "tmpfs"
    assert filesystem_type("/run", None) is None
    assert filesystem_type("/run", "garbage\n") is None


def test_module_instance_and_same_instance(host: FakeHost) -> None:
    assert module_instance(str(host.root)) is None
    host.module_loaded()
    bare = module_instance(str(host.root))
    assert bare == {"sysfs_ino": host.path("/sys/module/chardev").stat().st_ino, "text": None}
    host.module("crash")
    loaded = module_instance(str(host.root))
    assert loaded is not None and loaded["text"] == "0xffffffffc0a63000"
    assert same_instance(loaded, loaded)
    assert same_instance({"text": "0xffffffffc0a63000"}, loaded)  # a layout: the address only
    assert not same_instance({**loaded, "sysfs_ino": loaded["sysfs_ino"] + 1}, loaded)
    assert not same_instance({"text": "0xffffffffc0b71000"}, loaded)
    assert not same_instance(loaded, None)  # not loaded
    assert not same_instance(None, loaded)  # not known
    assert not same_instance({"text": None}, {"sysfs_ino": 5, "text": None})  # nothing to compare


# --- write_json: what a failed write says ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (errno.ENOSPC, "free some space on that filesystem"),
        (errno.EACCES, "check the owner, mode and attributes"),
    ],
)
def test_write_json_says_what_failed_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, advice: str
) -> None:
    """A full run directory, or one root may not write (an immutable attribute, a read-only bind): a
    message, never a traceback, and no half-written file left."""
    path = tmp_path / "run" / "crashed.json"
    failing_writes(monkeypatch, chardev_record, str(path), error)
    with pytest.raises(ModuleFailure) as failed:
        write_json(str(path), {"state": "crashed"}, "the crash record")
    assert failed.value.msg.startswith(f"writing the crash record {path} failed: {os.strerror(error)} (")
    assert advice in failed.value.msg
    assert list(path.parent.iterdir()) == []


# --- crash_state: taint before the lab ----------------------------------------------------------------


def test_new_taint_without_baseline_is_all_of_it(host: FakeHost) -> None:
    host.tainted(TAINT_P | TAINT_O | TAINT_E)
    state = crash_state_of(host)
    assert state["taint_baseline"] is None
    assert state["new_taint"] == TAINT_P | TAINT_O | TAINT_E


def test_new_taint_with_baseline(host: FakeHost) -> None:
    baseline = {"boot_id": BOOT_ID, "tainted": TAINT_P, "recorded_at": "t0"}
    host.baseline(baseline)
    host.tainted(TAINT_P)
    state = crash_state_of(host)
    assert (state["taint_baseline"], state["new_taint"]) == (baseline, 0)
    host.tainted(TAINT_P | TAINT_O | TAINT_E)
    assert crash_state_of(host)["new_taint"] == TAINT_O | TAINT_E


def test_new_taint_with_a_broken_baseline(host: FakeHost) -> None:
    host.baseline("{not json")
    host.tainted(TAINT_P)
    state = crash_state_of(host)
    assert (state["taint_baseline"], state["new_taint"]) == (None, TAINT_P)


# --- bugs these tests found, fixed -----------------------------------------------------------------------


def test_an_oops_in_the_log_is_a_reason(host: FakeHost) -> None:
    state = crash_state_of(host, OOPS_LOG_6_1[:3])  # an oops headline, no recursive fault, no taint file
    assert state["crashed"] is True
    assert state["reasons"] != []
