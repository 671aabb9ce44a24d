"""Unit tests for the chardev crash evidence: roles/chardev_crash/{module_utils,library,files}.

The parsers get kernel log excerpts written after the oopses of the Debian 5.10 and 6.1 kernels (the
shape of each line as those kernels print it; addresses and register values are made up). The live
gathering runs against a fake /proc tree under tmp_path with SIGKILL replaced by a fake. The victim
program is tested for its command line and, against /dev/zero (which never crashes), for its
non-crash paths: nothing here loads a module or crashes a kernel.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import chardev_crash
import chardev_crash_evidence
import pytest
from ansible.module_utils.testing import patch_module_args
from chardev_crash import (
    KernelLogEvidence,
    TaskEvidence,
    compare,
    decode_taint,
    expected_outcome,
    gather_tasks,
    observed_from,
    parse_cmdline,
    parse_kernel_log,
    parse_kernel_release,
    parse_kmsg_records,
    parse_oops_count,
    parse_proc_stat,
    parse_stack,
    parse_tainted,
    parse_wchan,
    read_kmsg,
    strip_log_prefix,
    taint_letters,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VICTIM = REPO_ROOT / "roles/chardev_crash/files/chardev_victim.py"
sys.path.insert(0, str(VICTIM.parent))
import chardev_victim  # noqa: E402 - lives in files/, put on sys.path just above

# Debian 11, read mode: first fault in vfs_read, second (recursive) one in filp_close while exiting.
DMESG_5_10 = """\
[  212.345678] chardev: loading out-of-tree module taints kernel.
[  212.345901] chardev: module verification failed: signature and/or required key missing - tainting kernel
[  212.347012] chardev: registered with major 247
[  238.901234] chardev: unregistered
[  260.112233] BUG: unable to handle page fault for address: ffffffffc06e5200
[  260.113001] #PF: supervisor read access in kernel mode
[  260.113560] #PF: error_code(0x0000) - not-present page
[  260.114102] PGD 1a40e067 P4D 1a40e067 PUD 1a410067 PMD 3c1d5067 PTE 0
[  260.114890] Oops: 0000 [#1] SMP NOPTI
[  260.115301] CPU: 1 PID: 812 Comm: chardev-victim Tainted: G           OE     \
5.10.0-35-amd64 #1 Debian 5.10.237-1
[  260.116400] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.14.0-2 04/01/2014
[  260.117500] RIP: 0010:vfs_read+0x8c/0x1a0
[  260.118000] Code: 85 c0 0f 85 a1 00 00 00 48 8b 45 28 48 8b 40 10 <48> 85 c0 74 2a 49 89 d8 48 89 e9
[  260.119000] RSP: 0018:ffffb4c2c03e7ea8 EFLAGS: 00010246
[  260.119500] RAX: ffffffffc06e5200 RBX: 0000000000001000 RCX: 0000000000000000
[  260.120000] RBP: ffff9e4a43a1e400 R08: 0000000000000000 R09: 0000000000000000
[  260.121000] FS:  00007f3b1c9f8740(0000) GS:ffff9e4a7dd00000(0000) knlGS:0000000000000000
[  260.122000] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[  260.123000] CR2: ffffffffc06e5200 CR3: 0000000003b12000 CR4: 00000000000006e0
[  260.125000] Call Trace:
[  260.125300]  ksys_read+0x5f/0xe0
[  260.125700]  do_syscall_64+0x33/0x80
[  260.126100]  entry_SYSCALL_64_after_hwframe+0x61/0xc6
[  260.126600] RIP: 0033:0x7f3b1cb0e1ce
[  260.127000] Modules linked in: nls_ascii nls_cp437 vfat fat virtio_net net_failover failover \
virtio_blk virtio_pci virtio_ring virtio ext4 crc16 mbcache jbd2 [last unloaded: chardev]
[  260.128000] CR2: ffffffffc06e5200
[  260.129500] ---[ end trace 5a1b2c3d4e5f6a7b ]---
[  260.131000] BUG: unable to handle page fault for address: ffffffffc06e5208
[  260.131500] #PF: supervisor read access in kernel mode
[  260.132000] Oops: 0000 [#2] SMP NOPTI
[  260.132500] CPU: 1 PID: 812 Comm: chardev-victim Tainted: G      D    OE     \
5.10.0-35-amd64 #1 Debian 5.10.237-1
[  260.133000] RIP: 0010:filp_close+0x1a/0x70
[  260.134000] Call Trace:
[  260.134200]  put_files_struct+0x6e/0xd0
[  260.134400]  do_exit+0x38b/0xad0
[  260.134600]  rewind_stack_do_exit+0x17/0x20
[  260.135000] Modules linked in: nls_ascii virtio_blk ext4 [last unloaded: chardev]
[  260.136000] ---[ end trace 5a1b2c3d4e5f6a7c ]---
[  260.140000] Fixing recursive fault but reboot is needed!
"""

# Debian 12, splice mode, as /dev/kmsg records (prio,seq,usec,flags;text plus dictionary lines).
KMSG_6_1 = [
    "4,1021,238901234,-;chardev: unregistered\n",
    "1,1022,301204512,-;BUG: unable to handle page fault for address: ffffffffc0a2e2c0\n",
    "1,1023,301205618,-;#PF: supervisor read access in kernel mode\n",
    "1,1024,301206199,-;#PF: error_code(0x0000) - not-present page\n",
    "6,1025,301206760,-;PGD 1e810067 P4D 1e810067 PUD 1e812067 PMD 3a6f1067 PTE 0\n",
    "4,1026,301207468,-;Oops: 0000 [#1] PREEMPT SMP NOPTI\n",
    "4,1027,301207957,-;CPU: 0 PID: 845 Comm: chardev-victim Tainted: G           OE      "
    "6.1.0-56-amd64 #1  Debian 6.1.158-1\n",
    "4,1028,301209181,-;Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1\n",
    "4,1029,301210283,-;RIP: 0010:splice_file_to_pipe+0x5e/0xe0\n",
    "4,1030,301212000,-;Call Trace:\n",
    "4,1031,301212100,-; <TASK>\n",
    "4,1032,301212200,-; do_splice+0x5f9/0x780\n SUBSYSTEM=none\n",
    "4,1033,301212300,-; __do_sys_splice+0xc6/0x130\n",
    "4,1034,301212400,-; do_syscall_64+0x55/0xb0\n",
    "4,1035,301212500,-; </TASK>\n",
    "4,1036,301212600,-;Modules linked in: nls_ascii nls_cp437 vfat fat virtio_net virtio_blk ext4 "
    "[last unloaded: chardev(OE)]\n",
    "4,1037,301212700,-;CR2: ffffffffc0a2e2c0\n",
    "4,1038,301212800,-;---[ end trace 0000000000000000 ]---\n",
    "1,1039,301220000,-;BUG: unable to handle page fault for address: ffffffffc0a2e2b8\n",
    "4,1040,301220500,-;Oops: 0000 [#2] PREEMPT SMP NOPTI\n",
    "4,1041,301221000,-;RIP: 0010:filp_close+0x1e/0x80\n",
    "4,1042,301221500,-;Modules linked in: nls_ascii virtio_blk ext4 [last unloaded: chardev(OE)]\n",
    "1,1043,301222000,-;Fixing recursive fault but reboot is needed!\n",
]

# The 2016 seed's kernel (3.x/4.x on x86) and arm64 print the older headline.
DMESG_OLD = """\
[ 4121.503722] BUG: unable to handle kernel paging request at ffffffffa15ec008
[ 4121.503745] IP: [<ffffffff811fd0e2>] vfs_read+0x62/0x130
[ 4121.503760] Oops: 0000 [#1] PREEMPT SMP
"""

TAINT_AFTER_CRASH = 128 + 4096 + 8192  # D, O, E


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


# /proc/<pid>/stack of the splice-crash pipe reader on 5.10 (addresses hidden as <0>). The function names
# are those the crash role recorded on 5.10.0-46-amd64 (the mutex wait itself is __sched code, which the
# kernel leaves out of the trace); the offsets are illustrative.
READER_STACK_5_10 = """\
[<0>] pipe_read+0x47/0x460
[<0>] new_sync_read+0x119/0x1b0
[<0>] vfs_read+0xf1/0x190
[<0>] ksys_read+0x5f/0xe0
[<0>] do_syscall_64+0x30/0x40
[<0>] entry_SYSCALL_64_after_hwframe+0x61/0xc6
"""


def test_parse_stack() -> None:
    assert parse_stack(READER_STACK_5_10) == [
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


# Debian 13 (6.12) prints the task's uid before its pid ("CPU: 0 UID: 0 PID: ..."); a comm may hold
# spaces; an untainted kernel says "Not tainted".
DMESG_6_12 = """\
[  301.204512] BUG: unable to handle page fault for address: ffffffffc0b1e2c0
[  301.207468] Oops: 0000 [#1] PREEMPT SMP NOPTI
[  301.207957] CPU: 0 UID: 0 PID: 845 Comm: chardev-victim Tainted: G           OE      \
6.12.57+deb13-amd64 #1  Debian 6.12.57-1
[  301.209181] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)
[  301.220000] BUG: unable to handle page fault for address: ffffffffc0b1e2b8
[  301.220500] Oops: 0000 [#2] PREEMPT SMP NOPTI
[  301.220700] CPU: 1 UID: 1000 PID: 9001 Comm: my reader Not tainted 6.12.57+deb13-amd64 #1
[  301.222000] Fixing recursive fault but reboot is needed!
"""


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
    observed["tasks"]["reader"]["stack"] = parse_stack(READER_STACK_5_10)
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
    observed["tasks"]["reader"].update(wchan="do_nanosleep", stack=parse_stack(READER_STACK_5_10))
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


# --- gathering from a fake /proc ----------------------------------------------------------------------


def stat_line(pid: int, comm: str, state: str, starttime: int) -> str:
    """A /proc/<pid>/stat line with every field up to 22 (starttime) and a few after it."""
    return f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {starttime} 0 0\n"


class FakeSystem:
    """A /proc tree under tmp_path, pidfiles, a fake clock and a fake kill."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = 0.0
        self.kills: list[tuple[int, int]] = []
        self.killable: set[int] = set()
        self.starttimes: dict[int, int] = {}

    def task(
        self,
        pid: int,
        comm: str,
        state: str,
        wchan: str = "0",
        cmdline: bytes = b"",
        stack: str | None = "",
        starttime: int | None = None,
    ) -> None:
        """A task in /proc; its start time defaults to one of its own (30000 + pid)."""
        starttime = 30000 + pid if starttime is None else starttime
        self.starttimes[pid] = starttime
        proc = self.root / "proc" / str(pid)
        proc.mkdir(parents=True)
        (proc / "stat").write_text(stat_line(pid, comm, state, starttime))
        (proc / "wchan").write_text(wchan)
        if stack is not None:  # None: no /proc/<pid>/stack (a kernel without CONFIG_STACKTRACE)
            (proc / "stack").write_text(stack)
        (proc / "cmdline").write_bytes(cmdline)

    def pidfile(self, name: str, text: str) -> str:
        path = self.root / "run" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def entry(self, pid: int) -> str:
        """ "PID STARTTIME" of a task, as chardev_victim.py writes it into its PID files."""
        return f"{pid} {self.starttimes[pid]}\n"

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))
        if pid in self.killable:
            for entry in (self.root / "proc" / str(pid)).iterdir():
                entry.unlink()
            (self.root / "proc" / str(pid)).rmdir()

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def gather(self, pidfiles: dict[str, str], **kwargs: Any) -> list[TaskEvidence]:
        return gather_tasks(
            pidfiles, root=str(self.root), kill=self.kill, sleep=self.sleep, clock=self.clock, **kwargs
        )


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


def test_gather_tasks_stuck_tasks_survive_sigkill(fake: FakeSystem) -> None:
    fake.task(845, "chardev-victim", "X")
    fake.task(846, "chardev (reader)", "D", "pipe_read", b"python3\x00chardev_victim.py\x00splice\x00")
    pidfiles = {
        "victim": fake.pidfile("victim.pid", fake.entry(845)),
        "reader": fake.pidfile("reader.pid", fake.entry(846).strip()),  # no newline: also read
    }
    victim, reader = fake.gather(pidfiles, kill_wait=2.0, poll_interval=0.1)
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


def test_gather_tasks_killable_task_goes_away(fake: FakeSystem) -> None:
    fake.task(900, "python3", "D")
    fake.killable.add(900)
    (task,) = fake.gather({"victim": fake.pidfile("v.pid", fake.entry(900))})
    assert fake.kills == [(900, signal.SIGKILL)]
    assert task.killed_but_alive is False
    assert task.state_after_kill is None
    assert fake.now == 0.0  # seen gone at the first look, no waiting


def test_gather_tasks_never_kills_a_task_that_is_not_stuck(fake: FakeSystem) -> None:
    fake.task(901, "chardev-victim", "S", "hrtimer_nanosleep")
    (task,) = fake.gather({"victim": fake.pidfile("v.pid", fake.entry(901))})
    assert task.identity == "starttime"
    assert fake.kills == []
    assert task.kill_sent is False
    assert task.killed_but_alive is None
    assert task.state == "S"


def test_gather_tasks_without_kill_test(fake: FakeSystem) -> None:
    fake.task(845, "chardev-victim", "X")
    (task,) = fake.gather({"victim": fake.pidfile("v.pid", fake.entry(845))}, kill_test=False)
    assert fake.kills == []
    assert task.killed_but_alive is None
    assert task.state == "X"


def test_gather_tasks_reads_the_kernel_stack(fake: FakeSystem) -> None:
    fake.task(1552, "python3", "D", stack=None)
    fake.task(1553, "python3", "D", "0", stack=READER_STACK_5_10)
    pidfiles = {
        "victim": fake.pidfile("v.pid", fake.entry(1552)),
        "reader": fake.pidfile("r.pid", fake.entry(1553)),
    }
    victim, reader = fake.gather(pidfiles, kill_test=False)
    assert (victim.wchan, victim.stack) == (None, [])
    assert reader.wchan is None
    assert reader.stack[:2] == ["pipe_read", "new_sync_read"]


def test_gather_tasks_missing_pidfile_and_process(fake: FakeSystem) -> None:
    pidfiles = {
        "victim": str(fake.root / "run" / "absent.pid"),
        "reader": fake.pidfile("reader.pid", "4242"),
        "other": fake.pidfile("other.pid", "garbage"),
        "init": fake.pidfile("init.pid", "1"),
    }
    victim, reader, other, init = fake.gather(pidfiles)
    assert victim.pid is None and "cannot read pidfile" in (victim.error or "")
    assert reader.pid == 4242 and reader.state is None and reader.error == "pid 4242 is not in /proc"
    assert other.pid is None and other.error
    assert init.pid is None and init.error
    assert fake.kills == []


def test_gather_tasks_kill_permission_error(fake: FakeSystem) -> None:
    fake.task(845, "chardev-victim", "X")

    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    (task,) = gather_tasks(
        {"victim": fake.pidfile("v.pid", fake.entry(845))}, root=str(fake.root), kill=refuse
    )
    assert task.kill_sent is False
    assert task.killed_but_alive is None
    assert task.error == "SIGKILL to pid 845 failed: EPERM"


def test_gather_tasks_old_pidfile_known_by_comm(fake: FakeSystem) -> None:
    """A PID file of an older victim (pid only) is tied to its task by the command name the victim sets."""
    fake.task(845, "chardev-victim", "X")
    fake.task(846, "chardev-reader", "D", "pipe_read")
    pidfiles = {"victim": fake.pidfile("victim.pid", "845\n"), "reader": fake.pidfile("reader.pid", "846")}
    victim, reader = fake.gather(pidfiles, kill_wait=0.2)
    assert (victim.identity, reader.identity) == ("comm", "comm")
    assert (victim.error, reader.error) == (None, None)
    assert fake.kills == [(845, signal.SIGKILL), (846, signal.SIGKILL)]


@pytest.mark.parametrize("state", ["D", "X", "S"])
def test_gather_tasks_reused_pid_is_not_the_victim(fake: FakeSystem, state: str) -> None:
    """The victim's pid now belongs to another process (other start time): not reported, never killed."""
    fake.task(845, "chardev-victim", state, "pipe_read", b"python3\x00chardev_victim.py\x00", starttime=99999)
    fake.task(846, "chardev-reader", state, "pipe_read", starttime=88888)
    pidfiles = {
        "victim": fake.pidfile("victim.pid", "845 30845\n"),
        "reader": fake.pidfile("reader.pid", "846 30846"),
    }
    victim, reader = fake.gather(pidfiles, kill_wait=0.2)
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
    fake: FakeSystem, role: str, comm: str
) -> None:
    """An old PID file (no start time) whose pid now runs another command: not reported, never killed."""
    fake.task(845, comm, "D")
    (task,) = fake.gather({role: fake.pidfile(f"{role}.pid", "845\n")}, kill_wait=0.2)
    assert fake.kills == []
    assert task.identity is None and task.state is None
    assert task.error == (
        f"pid 845 is {comm!r}, not the {role} ({chardev_crash.ROLE_COMMS[role]!r}): the pid was reused"
    )


def test_gather_tasks_reused_pid_mismatch_through_compare(fake: FakeSystem) -> None:
    fake.task(845, "bash", "S", starttime=5)
    (task,) = fake.gather({"victim": fake.pidfile("victim.pid", "845 30845\n")})
    observed = observed_from([task], parse_kernel_log(parse_kmsg_records(KMSG_6_1)), TAINT_AFTER_CRASH)
    mismatches = compare(expected_outcome("6.1.0-56-amd64", "read"), observed)
    assert mismatches == [
        "victim: pid 845 is another process now (bash, started at tick 5; the victim started at tick 30845), "
        "expected state X (" + expected_outcome("6.1.0-56-amd64", "read")["tasks"]["victim"]["why"] + ")"
    ]
    assert observed["oops_of_victim"] is True  # the oops was the victim's: only the pid was reused since
    assert fake.kills == []


# --- the Ansible module end to end --------------------------------------------------------------------


@pytest.fixture
def crashed_6_1(fake: FakeSystem, monkeypatch: pytest.MonkeyPatch) -> FakeSystem:
    """A 6.1 system after the splice crash, as the module sees it."""
    fake.task(845, "chardev-victim", "X")
    fake.task(846, "chardev-reader", "D", "pipe_read", b"python3\x00chardev_victim.py\x00splice\x00")
    fake.pidfile("victim.pid", fake.entry(845))
    fake.pidfile("reader.pid", fake.entry(846))
    (fake.root / "proc/sys/kernel").mkdir(parents=True)
    (fake.root / "proc/sys/kernel/tainted").write_text(f"{TAINT_AFTER_CRASH}\n")
    (fake.root / "sys/kernel").mkdir(parents=True)
    (fake.root / "sys/kernel/oops_count").write_text("2\n")
    monkeypatch.setattr(chardev_crash_evidence, "ROOT", str(fake.root))
    monkeypatch.setattr(chardev_crash_evidence, "SEND_SIGNAL", fake.kill)
    monkeypatch.setattr(
        chardev_crash_evidence, "read_kernel_log", lambda: (parse_kmsg_records(KMSG_6_1), "/dev/kmsg")
    )
    return fake


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        chardev_crash_evidence.main()
    return json.loads(capsys.readouterr().out)


def module_args(fake: FakeSystem, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run_dir": str(fake.root / "run"),
        "mode": "splice",
        "kernel_release": "6.1.0-56-amd64",
        "kill_wait": 0.3,
    }
    args.update(extra)
    return args


def test_module_as_expected(crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(module_args(crashed_6_1), capsys)
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
    crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    """run_dir + mode give the PID files: read mode has no pipe reader, so reader.pid is not looked at."""
    result = run_module(module_args(crashed_6_1, mode="read"), capsys)
    assert [t["role"] for t in result["tasks"]] == ["victim"]
    assert result["tasks"][0]["pidfile"] == str(crashed_6_1.root / "run/victim.pid")
    assert crashed_6_1.kills == [(845, signal.SIGKILL)]
    assert result["as_expected"] is True, result["mismatches"]


def test_module_never_kills_a_reused_pid(crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]) -> None:
    """The victim's and the reader's pids now belong to other processes (other start times)."""
    for pid, comm in ((845, "chardev-victim"), (846, "chardev-reader")):
        (crashed_6_1.root / f"proc/{pid}/stat").write_text(stat_line(pid, comm, "D", 7))
    result = run_module(module_args(crashed_6_1), capsys)
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
    crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An oops whose PID: is not the victim's: reported as a mismatch."""
    records = [
        line.replace("PID: 845 Comm: chardev-victim", "PID: 17 Comm: kworker/0:1") for line in KMSG_6_1
    ]
    monkeypatch.setattr(
        chardev_crash_evidence, "read_kernel_log", lambda: (parse_kmsg_records(records), "/dev/kmsg")
    )
    result = run_module(module_args(crashed_6_1), capsys)
    assert result["oops_tasks"] == [{"pid": 17, "comm": "kworker/0:1"}]
    assert result["observed"]["oops_of_victim"] is False
    assert result["mismatches"] == ["missing: an oops in the victim's own task (PID: <victim> in the oops)"]


def test_module_mismatch_does_not_fail(crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]) -> None:
    (crashed_6_1.root / "sys/kernel/oops_count").unlink()
    result = run_module(module_args(crashed_6_1, kernel_release="5.10.0-35-amd64"), capsys)
    assert "failed" not in result
    assert result["as_expected"] is False
    assert result["mismatches"][0].startswith("victim: pid 845 is in state X, expected D")
    assert result["oops_count"] is None
    assert result["msg"].startswith("crash evidence differs from the expectation for 5.10.0-35-amd64")


def test_module_check_mode_sends_no_signal(
    crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(module_args(crashed_6_1, _ansible_check_mode=True), capsys)
    assert crashed_6_1.kills == []
    assert result["kill_test_done"] is False
    assert result["as_expected"] is True
    assert all(t["killed_but_alive"] is None for t in result["tasks"])
    assert "check mode: SIGKILL not sent" in result["msg"]


def test_module_kill_test_off(crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(module_args(crashed_6_1, kill_test=False), capsys)
    assert crashed_6_1.kills == []
    assert result["kill_test_done"] is False
    assert "check mode" not in result["msg"]


def test_module_defaults_to_running_kernel(
    crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    args = module_args(crashed_6_1)
    del args["kernel_release"]
    result = run_module(args, capsys)
    assert result["kernel_release"] == os.uname().release


def test_module_refuses_bad_input(crashed_6_1: FakeSystem, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(module_args(crashed_6_1, kernel_release="linux"), capsys)
    assert result["failed"] is True
    assert "cannot parse kernel release" in result["msg"]
    result = run_module(module_args(crashed_6_1, mode="write"), capsys)
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


def test_module_utils_is_the_same_code_under_both_names() -> None:
    from ansible.module_utils import chardev_crash as via_ansible

    assert Path(via_ansible.__file__).resolve() == Path(chardev_crash.__file__).resolve()


# --- the victim program -------------------------------------------------------------------------------


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
    assert chardev_crash.read_pidfile_entry(str(path)) == (pid, starttime)
    assert chardev_crash.read_pidfile(str(path)) == pid
    live = chardev_crash.read_task_state("/", pid)
    assert live is not None, f"pid {pid} is not running"
    assert live.starttime == starttime
    assert live.comm == comm
    assert chardev_crash.identify(comm.removeprefix("chardev-"), live, starttime) == ("starttime", None)
    return pid


def test_victim_pidfile_entry_is_pid_and_starttime() -> None:
    """pidfile_entry() of this very process: its pid and the start time in /proc/self/stat."""
    entry = chardev_victim.pidfile_entry()
    pid, starttime = (int(field) for field in entry.split())
    assert entry == f"{pid} {starttime}\n"
    assert pid == os.getpid()
    me = chardev_crash.read_task_state("/", os.getpid())
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
    for _ in range(100):
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
