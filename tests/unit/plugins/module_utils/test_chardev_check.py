"""Unit tests for plugins/module_utils/chardev_check.py: the check of a crash made by anyone (scan_tasks,
tie, judge).

Everything runs against a fake tree under tmp_path (/proc, /sys, /run, /var) or on lines of a kernel log
(tests/unit/data/kernels/<suite>/: the shape of the lines Debian's 5.10 and 6.1 kernels print for the
article's crash), so this machine's /proc and /dev/kmsg are never read and no process is signalled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_check import (
    VERDICTS,
    judge,
    scan_tasks,
    tie,
)
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    BOOT_ID,
    KTHREAD_FLAGS,
    OTHER_BOOT_ID,
    PF_EXITING,
    TAINT_AFTER_CRASH,
    TAINT_D,
    TAINT_LAB,
    USER_FLAGS,
    FakeHost,
    kernel_lines,
    kernel_text,
)

TAINTED_LAB = TAINT_LAB  # chardev loaded: out of tree, unsigned
TAINTED_CRASHED = TAINT_AFTER_CRASH  # 12416

# Debian 6.1, the article's read by hand: the read oops in vfs_read, the recursive one in filp_close.
LOG_6_1_READ = kernel_lines("bookworm", "dmesg-read-by-hand.txt")
# The same on 6.1 with splice(): the victim faults in splice, the pipe's reader waits in pipe_read.
LOG_6_1_SPLICE = [line.replace("vfs_read+0x8a/0x2f0", "do_splice_to+0x7a/0xb0") for line in LOG_6_1_READ]
# Debian 5.10, with syslog priorities in front of the timestamps.
LOG_5_10_READ = kernel_lines("bullseye", "dmesg-r-read-by-hand.txt")
# What the kernel adds about the 5.10 victim in D: a SysRq w dump, when asked. No hung-task report: once
# the kernel has oopsed (taint D) its detector checks nothing (kernel/hung_task.c: "If the system crashed
# already then all bets are off"; measured on Debian 5.10). HUNG_5_10 is the report it would print: only
# ever in a log that is not as expected.
HUNG_5_10 = kernel_lines("bullseye", "dmesg-r-hung-task-by-hand.txt")
SYSRQ_5_10 = kernel_lines("bullseye", "dmesg-r-sysrq-w-by-hand.txt")
UNRELATED_OOPS = kernel_lines("bookworm", "log-unrelated-oops.txt")
# /proc/<pid>/stack of the victim and the pipe reader.
STACK_5_10_VICTIM = kernel_text("bullseye", "proc-stack-victim.txt")
STACK_5_10_READER = kernel_text("bullseye", "proc-stack-splice-reader-mutex.txt")
STACK_6_1_READER = kernel_text("bookworm", "proc-stack-splice-reader.txt")


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost.booted(tmp_path / "root")


# ---------------------------------------------------------------------------------------------------------
# scan_tasks
# ---------------------------------------------------------------------------------------------------------


def test_scan_tasks_finds_stuck_user_tasks_and_holders(host: FakeHost) -> None:
    host.task(1, "systemd", "S", cmdline=["/sbin/init"], wchan="ep_poll", fds={3: "anon_inode:[eventpoll]"})
    host.task(2, "kthreadd", "S", ppid=0, flags=KTHREAD_FLAGS)
    # kernel threads (PF_KTHREAD): never a victim, in D or in X
    host.task(45, "kworker/u4:2", "D", wchan="worker_thread", ppid=2, flags=KTHREAD_FLAGS)
    host.task(77, "kworker/0:3", "X", ppid=2, flags=KTHREAD_FLAGS)
    host.task(845, "python3", "X", flags=USER_FLAGS | PF_EXITING)  # 6.1's victim: no cmdline, no stack
    host.task(
        846,
        "python3",
        "D",
        cmdline=["python3", "reader.py"],
        wchan="pipe_read",
        stack=STACK_6_1_READER,
        ppid=801,
    )
    host.shell(1633)
    host.task(1700, "cat", "S", cmdline=["cat", "/dev/chardev"], fds={0: "/dev/pts/2", 3: "/dev/chardev"})
    host.task(1701, "bash", "S", cmdline=["-bash"], fds={0: "/dev/null", 255: "/dev/pts/2"})
    host.write("/proc/self/stat", "not a pid")  # not a pid directory: ignored
    host.write("/proc/1702/cmdline", "gone\0")  # its stat vanished (it exited meanwhile)
    host.task(1703, "sshd", "S", cmdline=["sshd"]).joinpath("fd").mkdir(mode=0)  # fd/ unreadable to non-root

    stuck, holders = scan_tasks(str(host.root))

    assert stuck == [
        {"pid": 845, "comm": "python3", "state": "X", "wchan": None, "stack": [], "cmdline": []},
        {
            "pid": 846,
            "comm": "python3",
            "state": "D",
            "wchan": "pipe_read",
            "stack": [
                "pipe_read",
                "vfs_read",
                "ksys_read",
                "do_syscall_64",
                "entry_SYSCALL_64_after_hwframe",
            ],
            "cmdline": ["python3", "reader.py"],
        },
    ]
    assert holders == [
        {"pid": 1633, "comm": "python3", "state": "S", "fd": 3},
        {"pid": 1700, "comm": "cat", "state": "S", "fd": 3},
    ]


def test_scan_tasks_another_device_and_no_proc(host: FakeHost, tmp_path: Path) -> None:
    host.shell(1633)
    host.task(1700, "cat", "S", cmdline=["cat"], fds={4: "/dev/chardev2", 5: "/dev/chardev"})
    assert scan_tasks(str(host.root), "/dev/chardev2")[1] == [
        {"pid": 1700, "comm": "cat", "state": "S", "fd": 4}
    ]
    # one entry per holder, even with the device open twice
    host.task(1800, "python3", "S", cmdline=["python3"], fds={3: "/dev/chardev", 4: "/dev/chardev"})
    assert [h["pid"] for h in scan_tasks(str(host.root))[1]] == [1633, 1700, 1800]
    assert scan_tasks(str(tmp_path / "nowhere")) == ([], [])


def test_scan_tasks_5_10_reader_with_wchan_0(host: FakeHost) -> None:
    host.task(846, "python3", "D", cmdline=["python3"], wchan="0", stack=STACK_5_10_READER)
    (task,) = scan_tasks(str(host.root))[0]
    assert task["wchan"] is None
    assert task["stack"][:2] == ["__mutex_lock.constprop.0", "pipe_read"]


def test_scan_tasks_keeps_the_5_10_victim_whose_mm_is_gone(host: FakeHost) -> None:
    host.task(45, "kworker/u4:2", "D", wchan="worker_thread", ppid=2, flags=KTHREAD_FLAGS)
    host.task(
        845, "python3", "D", cmdline=(), stack=STACK_5_10_VICTIM, ppid=801, flags=USER_FLAGS | PF_EXITING
    )
    stuck, _holders = scan_tasks(str(host.root))
    assert [task["pid"] for task in stuck] == [845]


# ---------------------------------------------------------------------------------------------------------
# tie
# ---------------------------------------------------------------------------------------------------------


def stuck_task(
    pid: int, state: str, comm: str = "python3", wchan: str | None = None, stack: Any = ()
) -> dict:
    return {"pid": pid, "comm": comm, "state": state, "wchan": wchan, "stack": list(stack), "cmdline": []}


def test_tie_read_splice_and_nothing() -> None:
    victim = stuck_task(1633, "X")
    reader = stuck_task(1640, "D", wchan="pipe_read")
    assert tie([victim], [(1633, "python3"), (1633, "python3")]) == {
        "victim": victim,
        "reader": None,
        "mode": "read",
    }
    assert tie([reader, victim], [(1633, "python3")]) == {
        "victim": victim,
        "reader": reader,
        "mode": "splice",
    }
    # 5.10: wchan 0, the stack shows the pipe's mutex
    reader_5_10 = stuck_task(1640, "D", stack=["__mutex_lock.constprop.0", "pipe_read", "vfs_read"])
    assert tie([victim, reader_5_10], [(1633, "python3")])["reader"] is reader_5_10
    # a stuck task the oops did not happen in is not the victim
    assert tie([victim], [(78, "kworker/3:1")]) == {"victim": None, "reader": None, "mode": "read"}
    assert tie([], []) == {"victim": None, "reader": None, "mode": "read"}


def test_tie_the_victim_is_never_its_own_reader() -> None:
    """A 5.10 victim in D whose stack names a lock is the victim, not the reader."""
    victim = stuck_task(845, "D", stack=["mutex_lock", "do_exit"])
    assert tie([victim], [(845, "python3")]) == {"victim": victim, "reader": None, "mode": "read"}
    # an X task never reads: it is dead
    dead = stuck_task(900, "X", wchan="pipe_read")
    assert tie([dead], [(845, "python3")])["reader"] is None


def test_tie_takes_the_first_oops_whose_task_is_stuck() -> None:
    first, second = stuck_task(1633, "X"), stuck_task(1700, "X", comm="cat")
    assert tie([second, first], [(78, "kworker"), (1633, "python3"), (1700, "cat")])["victim"] is first


# ---------------------------------------------------------------------------------------------------------
# judge: crashed
# ---------------------------------------------------------------------------------------------------------


def judged(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "kernel_release": "6.1.0-56-amd64",
        "log_lines": [],
        "tainted": TAINTED_LAB,
        "module_loaded": False,
        "variant": None,
        "stuck": [],
        "holders": [],
        "boot_id": BOOT_ID,
        "lesson_boot_id": BOOT_ID,
    }
    args.update(kwargs)
    result = judge(**args)
    assert result["verdict"] in VERDICTS
    assert result["summary"] and result["hint"]
    return result


def test_judge_5_10_read_victim_in_d() -> None:
    victim = stuck_task(845, "D", stack=["do_exit.cold", "rewind_stack_do_exit"])
    result = judged(
        kernel_release="5.10.0-35-amd64", log_lines=LOG_5_10_READ, tainted=TAINTED_CRASHED, stuck=[victim]
    )
    assert (result["verdict"], result["as_expected"], result["mode"]) == ("crashed", True, "read")
    assert result["mismatches"] == []
    assert result["victim"] == victim and result["reader"] is None
    assert result["oops_tasks"] == [{"pid": 845, "comm": "python3"}, {"pid": 845, "comm": "python3"}]
    assert result["expected"]["tasks"]["victim"]["state"] == "D"
    assert result["observed"]["tasks"] == {
        "victim": {
            "pid": 845,
            "state": "D",
            "wchan": None,
            "stack": ["do_exit.cold", "rewind_stack_do_exit"],
            "killed_but_alive": None,
        }
    }
    assert {key: result["observed"][key] for key in ("oops", "oops_of_victim", "recursive_fault")} == {
        "oops": True,
        "oops_of_victim": True,
        "recursive_fault": True,
    }
    assert result["observed"]["last_unloaded_chardev"] and result["observed"]["taint_die"]
    assert "the oops happened in pid 845 (python3, state D)" in result["summary"]
    assert result["summary"].endswith("; as the kernel predicts")
    assert result["hint"].startswith("reset the machine")


SILENT_MISSING = "missing: the hung-task detector silent after the oops (no 'blocked for more than')"


def test_judge_5_10_read_with_the_kernels_diagnostics() -> None:
    victim = stuck_task(845, "D")
    diagnostics = {
        "hung_task": {
            "timeout_secs": 10,
            "silenced": "the kernel has oopsed (taint D): its hung-task detector checks nothing",
            "reports": [],
            "reported": {"victim": False},
            "not_applicable": {},
        },
        "sysrq_w": {"done": True, "tasks": [], "lines": [], "shown": {"victim": True}, "error": None},
    }
    common = {"kernel_release": "5.10.0-35-amd64", "tainted": TAINTED_CRASHED, "stuck": [victim]}
    result = judged(**common, log_lines=LOG_5_10_READ + SYSRQ_5_10, diagnostics=diagnostics)
    assert (result["verdict"], result["as_expected"]) == ("crashed", True)
    assert result["expected"]["markers"]["hung_task_silent"] is True
    assert result["expected"]["markers"]["sysrq_w_blocked"] is True
    assert "hung_task_report" not in result["expected"]["markers"]
    assert result["observed"]["hung_task_silent"] is True
    assert result["observed"]["sysrq_w_blocked"] is True
    # a report of the victim after all (no oopsed kernel prints one): not as expected
    diagnostics["hung_task"]["reported"] = {"victim": True}
    result = judged(**common, log_lines=LOG_5_10_READ + HUNG_5_10 + SYSRQ_5_10, diagnostics=diagnostics)
    assert result["as_expected"] is False
    assert result["mismatches"] == [SILENT_MISSING]
    # no report, but not silenced either (the detector still checked): not the crashed kernel's silence
    diagnostics["hung_task"].update(silenced=None, reported={"victim": False})
    result = judged(**common, log_lines=LOG_5_10_READ + SYSRQ_5_10, diagnostics=diagnostics)
    assert result["as_expected"] is False
    assert result["mismatches"] == [SILENT_MISSING]
    # and SysRq w not showing the victim
    diagnostics["hung_task"]["silenced"] = "oopsed"
    diagnostics["sysrq_w"]["shown"] = {"victim": False}
    result = judged(**common, log_lines=LOG_5_10_READ, diagnostics=diagnostics)
    assert result["mismatches"] == ["missing: each task in D in the SysRq w dump (sysrq: Show Blocked State)"]


def test_judge_6_1_read_victim_in_x() -> None:
    victim = stuck_task(1633, "X")
    result = judged(log_lines=LOG_6_1_READ, tainted=TAINTED_CRASHED, stuck=[victim])
    assert (result["verdict"], result["as_expected"], result["mode"]) == ("crashed", True, "read")
    assert result["expected"]["tasks"]["victim"]["state"] == "X"
    assert set(result["observed"]["tasks"]) == {"victim"}
    assert "the oops happened in pid 1633 (python3, state X)" in result["summary"]
    assert result["summary"].endswith("; as the kernel predicts")


def test_judge_6_1_splice_victim_x_and_reader_d() -> None:
    victim = stuck_task(1633, "X")
    reader = stuck_task(1640, "D", wchan="pipe_read", stack=["pipe_read", "vfs_read", "ksys_read"])
    bystander = stuck_task(1, "D", comm="systemd", wchan="io_schedule")  # in D, but not on a pipe
    result = judged(
        log_lines=LOG_6_1_SPLICE, tainted=TAINTED_CRASHED, stuck=[bystander, victim, reader], holders=[]
    )
    assert (result["verdict"], result["as_expected"], result["mode"]) == ("crashed", True, "splice")
    assert (result["victim"], result["reader"]) == (victim, reader)
    assert result["observed"]["tasks"]["reader"]["state"] == "D"
    assert result["stuck"] == [bystander, victim, reader]
    assert result["summary"].endswith(
        "the oops happened in pid 1633 (python3, state X); the pipe reader pid 1640 waits in D; "
        "as the kernel predicts"
    )


def test_judge_5_10_splice_reader_found_from_its_stack() -> None:
    victim = stuck_task(845, "D", stack=["do_exit.cold"])
    reader = stuck_task(846, "D", stack=["__mutex_lock.constprop.0", "pipe_read", "vfs_read"])
    result = judged(
        kernel_release="5.10.0-35-amd64",
        log_lines=LOG_5_10_READ,
        tainted=TAINTED_CRASHED,
        stuck=[victim, reader],
    )
    assert (result["verdict"], result["mode"], result["as_expected"]) == ("crashed", "splice", True)


def test_judge_crashed_but_victim_in_the_wrong_state() -> None:
    """A 6.1 kernel whose victim sits in D (as 5.10's would): crashed, NOT as expected."""
    result = judged(log_lines=LOG_6_1_READ, tainted=TAINTED_CRASHED, stuck=[stuck_task(1633, "D")])
    assert (result["verdict"], result["as_expected"]) == ("crashed", False)
    assert len(result["mismatches"]) == 1
    assert result["mismatches"][0].startswith("victim: pid 1633 is in state D, expected X (from 5.17")
    assert "; NOT as expected: victim: pid 1633 is in state D" in result["summary"]


def test_judge_crashed_without_a_stuck_victim() -> None:
    """An oops in a task that is not in /proc (or not stuck), without the chardev markers."""
    result = judged(log_lines=UNRELATED_OOPS, tainted=TAINT_D, stuck=[])
    assert (result["verdict"], result["as_expected"], result["mode"]) == ("crashed", False, "read")
    assert result["victim"] is None
    assert result["observed"]["tasks"]["victim"] == {
        "pid": None,
        "error": "no stuck task that an oops happened in",
    }
    assert result["mismatches"] == [
        "victim: no pid (no stuck task that an oops happened in)",
        "missing: an oops in the victim's own task (PID: <victim> in the oops)",
        'missing: "Fixing recursive fault but reboot is needed!" in the kernel log',
        'missing: "[last unloaded: chardev" in the kernel log',
    ]
    assert "the oops happened in a task that is no longer in /proc" in result["summary"]


def test_judge_crashed_from_the_taint_alone() -> None:
    """The log no longer holds the oops (ring buffer overwritten): taint flag D still says crashed."""
    result = judged(tainted=TAINTED_CRASHED, stuck=[stuck_task(1633, "X")])
    assert (result["verdict"], result["as_expected"]) == ("crashed", False)
    assert result["victim"] is None  # nothing ties the X task to an oops
    assert "missing: an oops headline (BUG: unable to handle ...) in the kernel log" in result["mismatches"]


def test_judge_a_crash_wins_over_everything_else() -> None:
    result = judged(
        log_lines=LOG_6_1_READ,
        tainted=None,
        module_loaded=True,
        variant="safe",
        stuck=[stuck_task(1633, "X")],
        holders=[{"pid": 1700, "comm": "cat", "state": "S", "fd": 3}],
        lesson_boot_id=OTHER_BOOT_ID,
    )
    assert result["verdict"] == "crashed"
    assert result["observed"]["taint_die"] is False
    assert result["mismatches"] == ["missing: taint flag D (128) in /proc/sys/kernel/tainted"]


# ---------------------------------------------------------------------------------------------------------
# judge: no crash
# ---------------------------------------------------------------------------------------------------------

HOLDER = {"pid": 1633, "comm": "python3", "state": "S", "fd": 3}


def assert_no_crash_fields(result: dict[str, Any]) -> None:
    assert result["as_expected"] is None
    assert (result["mode"], result["expected"], result["observed"], result["mismatches"]) == (
        None,
        None,
        None,
        [],
    )


@pytest.mark.parametrize(
    ("variant", "why"),
    [("safe", "that refusal is what the .owner field is for"), ("classic", "try_module_get() call")],
)
@pytest.mark.parametrize("held", [True, False])
def test_judge_not_unloaded_safe_and_classic(variant: str, why: str, held: bool) -> None:
    result = judged(module_loaded=True, variant=variant, holders=[HOLDER] if held else [])
    assert_no_crash_fields(result)
    assert result["verdict"] == "not_unloaded"
    assert result["summary"].startswith(f"no crash: chardev is still loaded, the {variant} variant")
    assert '("Module chardev is in use")' in result["summary"]
    assert why in result["summary"]
    assert result["hint"].startswith(
        'load the crash variant to see the crash: make lab ARGS="--skip-tags crash'
    )
    assert ("(first close the file held by pid 1633 (python3))" in result["hint"]) is held


def test_judge_not_unloaded_crash_variant_with_and_without_a_holder() -> None:
    result = judged(module_loaded=True, variant="crash", holders=[HOLDER])
    assert_no_crash_fields(result)
    assert result["verdict"] == "not_unloaded"
    assert (
        "the crash variant is still loaded and pid 1633 (python3) holds /dev/chardev open"
        in (result["summary"])
    )
    assert result["hint"].startswith("run rmmod chardev in another terminal")
    result = judged(module_loaded=True, variant="crash", holders=[])
    assert result["verdict"] == "not_unloaded"
    assert "the crash variant is still loaded and no process holds /dev/chardev open" in result["summary"]
    assert result["hint"].startswith("open the device in a Python shell first")
    # a module without a version file: the variant is unknown
    result = judged(module_loaded=True, variant=None, holders=[])
    assert "the unknown variant is still loaded" in result["summary"]


def test_judge_not_unloaded_even_in_another_boot() -> None:
    """Loaded again after a restart: not "rebooted", the module is there to unload."""
    assert (
        judged(module_loaded=True, variant="crash", lesson_boot_id=OTHER_BOOT_ID)["verdict"] == "not_unloaded"
    )


def test_judge_not_read() -> None:
    holders = [HOLDER, {"pid": 1700, "comm": "cat", "state": "S", "fd": 3}]
    result = judged(holders=holders, log_lines=["chardev: unregistered"])
    assert_no_crash_fields(result)
    assert result["verdict"] == "not_read"
    assert "while pid 1633 (python3), pid 1700 (cat) holds /dev/chardev open" in result["summary"]
    assert result["hint"].startswith("read from the open file (f.read()")


def test_judge_nothing_held() -> None:
    # the lab got the crash variant ready in this boot
    result = judged()
    assert_no_crash_fields(result)
    assert result["verdict"] == "nothing_held"
    assert result["summary"].startswith(
        "no crash: chardev is not loaded and no process holds /dev/chardev open"
    )
    # or the log says chardev was unloaded (an unrelated warning's module list), whatever the marker
    warning = "Modules linked in: nls_ascii nls_cp437 vfat fat [last unloaded: chardev(OE)]"
    assert judged(log_lines=[warning], lesson_boot_id=None)["verdict"] == "nothing_held"


def test_judge_not_loaded() -> None:
    result = judged(lesson_boot_id=None, log_lines=["chardev: something else"])
    assert_no_crash_fields(result)
    assert result["verdict"] == "not_loaded"
    assert "chardev is not loaded in this boot and nothing says it was" in result["summary"]
    assert "chardev_variant=crash" in result["hint"]


def test_judge_not_loaded_without_any_boot_id() -> None:
    assert judged(boot_id=None, lesson_boot_id=None)["verdict"] == "not_loaded"


def test_judge_rebooted() -> None:
    result = judged(lesson_boot_id=OTHER_BOOT_ID)
    assert_no_crash_fields(result)
    assert result["verdict"] == "rebooted"
    assert "kernel.panic_on_oops=1" in result["summary"]
    assert result["hint"].startswith("check sysctl kernel.panic_on_oops")
    # without the marker, or without a boot id, no restart can be told
    assert judged(lesson_boot_id=None)["verdict"] == "not_loaded"
    assert judged(boot_id=None, lesson_boot_id=OTHER_BOOT_ID)["verdict"] == "not_loaded"
