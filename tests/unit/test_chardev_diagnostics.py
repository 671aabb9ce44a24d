"""Unit tests for the kernel's own diagnostics of the stuck tasks (roles/chardev_crash).

Covers parse_hung_task_reports(), parse_sysrq_blocked(), _task_dumps(), kernel_diagnostics(),
diagnostics_markers(), expected_outcome(..., diagnostics=...) and the evidence module's
kernel_diagnostics/hung_task_wait options.

The log samples follow what Debian's x86_64 kernels print (kernel/hung_task.c check_hung_task(),
kernel/sched/core.c sched_show_task(), arch/x86/kernel/dumpstack.c, drivers/tty/sysrq.c):

* "INFO: task COMM:PID blocked for more than N seconds." (N is the time since the last switch, so not
  always the timeout), the Tainted line (Debian adds its package version), the "echo 0" hint;
* sched_show_task(): "task:%-15.15s state:%c" then " stack:%5lu pid:%5d ppid:%6d flags:0x%08lx" on 5.10
  (padded on the left), " stack:%-5lu pid:%-5d ppid:%-6d flags:..." on 6.1 (padded on the right),
  " stack:%-5lu pid:%-5d tgid:%-5d ppid:%-6d flags:..." on 6.12;
* "Call Trace:", " <TASK>" / " </TASK>" around the frames from 5.16 on (Debian 5.10 prints none), frames
  " func+0xOFF/0xSIZE", " ? func+..." for unreliable ones, and the user-mode registers ("RIP: 0033:...");
* "sysrq: Show Blocked State" and one sched_show_task() block for each task in D.

Once the kernel has oopsed (taint D, bit 7 of /proc/sys/kernel/tainted) its hung-task detector reports
nothing (kernel/hung_task.c check_hung_uninterruptible_tasks(): "If the system crashed already then all
bets are off, do not report extra hung tasks"; measured on Debian 5.10): on the lab's crashed kernels
kernel_diagnostics() waits for no report and expects none (marker hung_task_silent), and SysRq w still
shows the tasks in D (marker sysrq_w_blocked). The hung-task report samples below are what the detector
prints on a kernel that has NOT oopsed; they test the parser and the waiting path.

Addresses, offsets and register values are made up. Nothing here reads the real /proc or kernel log or
waits: the tree is under tmp_path, the log, clock and sleep are fakes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import chardev_crash
import chardev_crash_evidence
import pytest
from ansible.module_utils.testing import patch_module_args
from chardev_crash import (
    NOT_IN_D,
    compare,
    diagnostics_markers,
    expected_outcome,
    kernel_diagnostics,
    parse_hung_task_reports,
    parse_sysrq_blocked,
)

# --- kernel log samples ---------------------------------------------------------------------------------

# The hung-task reports: what the detector prints about a task in D on a kernel that has not oopsed (no D
# in the Tainted line). After the lab's oops it prints none of them (see the module docstring).

# Debian 12 (6.1), splice mode: the pipe reader waits for the pipe mutex the dead victim holds.
HUNG_6_1_READER = """\
[  250.123456] INFO: task chardev-reader:523 blocked for more than 10 seconds.
[  250.124001]       Tainted: G           OE      6.1.0-56-amd64 #1 Debian 6.1.153-1
[  250.124512] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  250.125034] task:chardev-reader  state:D stack:0     pid:523   ppid:1      flags:0x00000002
[  250.125600] Call Trace:
[  250.125800]  <TASK>
[  250.126000]  __schedule+0x351/0xa20
[  250.126200]  schedule+0x5d/0xe0
[  250.126400]  schedule_preempt_disabled+0x14/0x30
[  250.126600]  __mutex_lock.constprop.0+0x3b4/0x700
[  250.126800]  pipe_read+0x4c/0x450
[  250.127000]  vfs_read+0x2e8/0x310
[  250.127200]  ksys_read+0x6b/0xf0
[  250.127400]  do_syscall_64+0x55/0xb0
[  250.127600]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[  250.127800] RIP: 0033:0x7f1c2b31d19d
[  250.127900] Code: Unable to access opcode bytes at 0x7f1c2b31d173.
[  250.128000] RSP: 002b:00007ffc5e3b9c38 EFLAGS: 00000246 ORIG_RAX: 0000000000000000
[  250.128200] RAX: ffffffffffffffda RBX: 00007f1c2b1f6740 RCX: 00007f1c2b31d19d
[  250.128400] RDX: 0000000000010000 RSI: 00007f1c2a9ff010 RDI: 0000000000000004
[  250.128600] RBP: 00007f1c2a9ff010 R08: 0000000000000000 R09: 0000000000000000
[  250.128800] R10: 0000000000000000 R11: 0000000000000246 R12: 0000000000010000
[  250.129000] R13: 0000000000000004 R14: 000055d5b0f1a2a0 R15: 0000000000000000
[  250.129200]  </TASK>
""".splitlines()

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

# SysRq w on 6.1: only the reader is in D (the victim is in X); one unreliable frame.
SYSRQ_6_1 = """\
[  301.991201] sysrq: Show Blocked State
[  301.991630] task:chardev-reader  state:D stack:0     pid:523   ppid:1      flags:0x00000002
[  301.992100] Call Trace:
[  301.992300]  <TASK>
[  301.992500]  __schedule+0x351/0xa20
[  301.992700]  schedule+0x5d/0xe0
[  301.992900]  schedule_preempt_disabled+0x14/0x30
[  301.993100]  __mutex_lock.constprop.0+0x3b4/0x700
[  301.993300]  ? pipe_read+0x4c/0x450
[  301.993500]  pipe_read+0x4c/0x450
[  301.993700]  vfs_read+0x2e8/0x310
[  301.993900]  ksys_read+0x6b/0xf0
[  301.994100]  do_syscall_64+0x55/0xb0
[  301.994300]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[  301.994500] RIP: 0033:0x7f1c2b31d19d
[  301.994600] Code: Unable to access opcode bytes at 0x7f1c2b31d173.
[  301.994700] RSP: 002b:00007ffc5e3b9c38 EFLAGS: 00000246 ORIG_RAX: 0000000000000000
[  301.994900] RAX: ffffffffffffffda RBX: 00007f1c2b1f6740 RCX: 00007f1c2b31d19d
[  301.995100] RDX: 0000000000010000 RSI: 00007f1c2a9ff010 RDI: 0000000000000004
[  301.995300] RBP: 00007f1c2a9ff010 R08: 0000000000000000 R09: 0000000000000000
[  301.995500] R10: 0000000000000000 R11: 0000000000000246 R12: 0000000000010000
[  301.995700] R13: 0000000000000004 R14: 000055d5b0f1a2a0 R15: 0000000000000000
[  301.995900]  </TASK>
""".splitlines()

# Debian 11 (5.10), splice mode: victim and reader both in D; padded fields, no <TASK> markers. The
# victim parks in do_exit() after the recursive fault (5.10.y has the make_task_dead() backport). A format
# sample only: this victim is in D because it oopsed, so the silenced detector never reports it.
HUNG_5_10_VICTIM = """\
[  383.102211] INFO: task chardev-victim:812 blocked for more than 120 seconds.
[  383.103007]       Tainted: G      D    OE     5.10.0-35-amd64 #1 Debian 5.10.237-1
[  383.103802] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  383.104650] task:chardev-victim  state:D stack:    0 pid:  812 ppid:     1 flags:0x00004004
[  383.105488] Call Trace:
[  383.105790]  __schedule+0x282/0x870
[  383.106170]  schedule+0x46/0xb0
[  383.106530]  do_exit+0x8d6/0xaf0
[  383.107210]  make_task_dead+0x49/0x50
[  383.107600]  rewind_stack_and_make_dead+0x17/0x20
""".splitlines()

VICTIM_STACK_5_10 = ["__schedule", "schedule", "do_exit", "make_task_dead", "rewind_stack_and_make_dead"]

HUNG_5_10_READER = """\
[  383.108010] INFO: task chardev-reader:813 blocked for more than 120 seconds.
[  383.108800]       Tainted: G           OE     5.10.0-35-amd64 #1 Debian 5.10.237-1
[  383.109600] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  383.110400] task:chardev-reader  state:D stack:    0 pid:  813 ppid:     1 flags:0x00000000
[  383.111200] Call Trace:
[  383.111500]  __schedule+0x282/0x870
[  383.112100]  schedule+0x46/0xb0
[  383.112400]  schedule_preempt_disabled+0xa/0x10
[  383.112700]  __mutex_lock.constprop.0+0x133/0x460
[  383.113000]  pipe_read+0x47/0x460
[  383.113300]  new_sync_read+0x119/0x1b0
[  383.113600]  vfs_read+0xf1/0x190
[  383.113900]  ksys_read+0x5f/0xe0
[  383.114200]  do_syscall_64+0x30/0x40
[  383.114500]  entry_SYSCALL_64_after_hwframe+0x61/0xc6
[  383.114800] RIP: 0033:0x7f2d4c8f71ce
[  383.115100] Code: Unable to access opcode bytes at RIP 0x7f2d4c8f71a4.
[  383.115400] RSP: 002b:00007ffd9b6c2d18 EFLAGS: 00000246 ORIG_RAX: 0000000000000000
[  383.115700] RAX: ffffffffffffffda RBX: 00007f2d4c7e6740 RCX: 00007f2d4c8f71ce
[  383.116000] RDX: 0000000000010000 RSI: 00007f2d4c5d4010 RDI: 0000000000000004
""".splitlines()

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

SYSRQ_5_10 = """\
[  402.551230] sysrq: Show Blocked State
[  402.551712] task:chardev-victim  state:D stack:    0 pid:  812 ppid:     1 flags:0x00004004
[  402.552301] Call Trace:
[  402.552580]  __schedule+0x282/0x870
[  402.552900]  schedule+0x46/0xb0
[  402.553200]  do_exit+0x8d6/0xaf0
[  402.553500]  make_task_dead+0x49/0x50
[  402.553800]  rewind_stack_and_make_dead+0x17/0x20
[  402.554100] task:chardev-reader  state:D stack:    0 pid:  813 ppid:     1 flags:0x00000000
[  402.554400] Call Trace:
[  402.554700]  __schedule+0x282/0x870
[  402.555000]  ? __switch_to_asm+0x3a/0x60
[  402.555300]  schedule+0x46/0xb0
[  402.555600]  schedule_preempt_disabled+0xa/0x10
[  402.555900]  __mutex_lock.constprop.0+0x133/0x460
[  402.556200]  pipe_read+0x47/0x460
[  402.556500]  new_sync_read+0x119/0x1b0
[  402.556800]  vfs_read+0xf1/0x190
[  402.557100]  ksys_read+0x5f/0xe0
[  402.557400]  do_syscall_64+0x30/0x40
[  402.557700]  entry_SYSCALL_64_after_hwframe+0x61/0xc6
[  402.558000] RIP: 0033:0x7f2d4c8f71ce
[  402.558300] Code: Unable to access opcode bytes at RIP 0x7f2d4c8f71a4.
[  402.558600] RSP: 002b:00007ffd9b6c2d18 EFLAGS: 00000246 ORIG_RAX: 0000000000000000
""".splitlines()

# Debian 13 (6.12) as `dmesg -r` prints it: "<N>" syslog priority before the timestamp; tgid added.
HUNG_6_12_READER = """\
<3>[  187.415027] INFO: task chardev-reader:523 blocked for more than 10 seconds.
<3>[  187.415893]       Tainted: G           OE      6.12.57+deb13-amd64 #1 Debian 6.12.57-1
<3>[  187.416702] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
<6>[  187.417561] task:chardev-reader  state:D stack:0     pid:523   tgid:523   ppid:1      flags:0x00000002
<6>[  187.418377] Call Trace:
<6>[  187.418690]  <TASK>
<6>[  187.418994]  __schedule+0x403/0xbf0
<6>[  187.419351]  schedule+0x27/0xf0
<6>[  187.419688]  schedule_preempt_disabled+0x15/0x30
<6>[  187.420085]  __mutex_lock.constprop.0+0x3ec/0x8a0
<6>[  187.420890]  pipe_read+0x3a/0x470
<6>[  187.421260]  vfs_read+0x299/0x370
<6>[  187.421620]  ksys_read+0x6d/0xf0
<6>[  187.421980]  do_syscall_64+0x82/0x190
<6>[  187.422350]  entry_SYSCALL_64_after_hwframe+0x76/0x7e
<6>[  187.422760] RIP: 0033:0x7f6e1d31a21d
<6>[  187.422900] Code: Unable to access opcode bytes at 0x7f6e1d31a1f3.
<6>[  187.423100] RSP: 002b:00007ffe5c1b8f38 EFLAGS: 00000246 ORIG_RAX: 0000000000000000
<6>[  187.423400] RAX: ffffffffffffffda RBX: 00007f6e1d1f4740 RCX: 00007f6e1d31a21d
<6>[  187.423700] RDX: 0000000000010000 RSI: 00007f6e1ca00010 RDI: 0000000000000004
<6>[  187.424000] RBP: 00007f6e1ca00010 R08: 0000000000000000 R09: 0000000000000000
<6>[  187.424300] R10: 0000000000000000 R11: 0000000000000246 R12: 0000000000010000
<6>[  187.424600] R13: 0000000000000004 R14: 0000561f2c3b82a0 R15: 0000000000000000
<6>[  187.424900]  </TASK>
""".splitlines()

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

# The crash itself (compact), as the evidence module needs it: oopses of the victim, recursive fault.
OOPS_6_1 = """\
[  238.901234] chardev: unregistered
[  241.204512] BUG: unable to handle page fault for address: ffffffffc0a2e2c0
[  241.205618] #PF: supervisor read access in kernel mode
[  241.206199] #PF: error_code(0x0000) - not-present page
[  241.207468] Oops: 0000 [#1] PREEMPT SMP NOPTI
[  241.207957] CPU: 0 PID: 522 Comm: chardev-victim Tainted: G           OE      \
6.1.0-56-amd64 #1  Debian 6.1.153-1
[  241.210283] RIP: 0010:splice_file_to_pipe+0x5e/0xe0
[  241.212600] Modules linked in: nls_ascii virtio_blk ext4 [last unloaded: chardev(OE)]
[  241.212800] ---[ end trace 0000000000000000 ]---
[  241.220000] BUG: unable to handle page fault for address: ffffffffc0a2e2b8
[  241.220500] Oops: 0000 [#2] PREEMPT SMP NOPTI
[  241.220700] CPU: 0 PID: 522 Comm: chardev-victim Tainted: G      D    OE      \
6.1.0-56-amd64 #1  Debian 6.1.153-1
[  241.221000] RIP: 0010:filp_close+0x1e/0x80
[  241.221500] Modules linked in: nls_ascii virtio_blk ext4 [last unloaded: chardev(OE)]
[  241.222000] Fixing recursive fault but reboot is needed!
""".splitlines()

OOPS_5_10 = """\
[  260.112233] BUG: unable to handle page fault for address: ffffffffc06e5200
[  260.113001] #PF: supervisor read access in kernel mode
[  260.114890] Oops: 0000 [#1] SMP NOPTI
[  260.115301] CPU: 1 PID: 812 Comm: chardev-victim Tainted: G           OE     \
5.10.0-35-amd64 #1 Debian 5.10.237-1
[  260.117500] RIP: 0010:vfs_read+0x8c/0x1a0
[  260.127000] Modules linked in: nls_ascii virtio_blk ext4 [last unloaded: chardev]
[  260.129500] ---[ end trace 5a1b2c3d4e5f6a7b ]---
[  260.131000] BUG: unable to handle page fault for address: ffffffffc06e5208
[  260.132000] Oops: 0000 [#2] SMP NOPTI
[  260.132500] CPU: 1 PID: 812 Comm: chardev-victim Tainted: G      D    OE     \
5.10.0-35-amd64 #1 Debian 5.10.237-1
[  260.133000] RIP: 0010:filp_close+0x1a/0x70
[  260.135000] Modules linked in: nls_ascii virtio_blk ext4 [last unloaded: chardev]
[  260.140000] Fixing recursive fault but reboot is needed!
""".splitlines()

TAINT_AFTER_CRASH = 128 + 4096 + 8192  # D, O, E
TAINT_NO_OOPS = 4096 + 8192  # O, E: the lab's module loaded, no oops: the hung-task detector still checks


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
        f"{chardev_crash.strip_log_prefix(line)}\n"
        for index, line in enumerate(HUNG_6_1_READER)
    ]
    (report,) = parse_hung_task_reports(chardev_crash.parse_kmsg_records(records))
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
    assert dump["lines"] == [chardev_crash.strip_log_prefix(line) for line in SYSRQ_5_10]
    first_only = parse_sysrq_blocked(early + between)
    assert first_only is not None
    assert [t["pid"] for t in first_only["tasks"]] == [812]


@pytest.mark.parametrize(
    "following",
    [
        pytest.param(HUNG_5_10_READER, id="hung-task-report"),
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
    (dump,) = chardev_crash._task_dumps([line, "Call Trace:", " __schedule+0x351/0xa20"])
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
    (dump,) = chardev_crash._task_dumps(lines)
    assert dump["stack"][:3] == ["pipe_read", "chardev_read", "frame_0"]
    assert len(dump["stack"]) == 16
    (short,) = chardev_crash._task_dumps(lines, max_frames=2)
    assert short["stack"] == ["pipe_read", "chardev_read"]
    assert chardev_crash._task_dumps(["Call Trace:", " __schedule+0x351/0xa20"]) == []


# --- kernel_diagnostics ---------------------------------------------------------------------------------


class FakeKernel:
    """A kernel log that grows as the test says, a /proc tree under tmp_path, a fake clock and sleep.

    scheduled: {n: lines} appends lines at the n-th read of the log (1-based). A "w\\n" written to the
    fake proc/sysrq-trigger appends sysrq_dump to the log dump_lag reads later. tainted: the value of
    proc/sys/kernel/tainted (None: no such file); by default a crashed kernel's (taint D).
    """

    def __init__(
        self,
        root: Path,
        log: list[str] | None = None,
        scheduled: dict[int, list[str]] | None = None,
        sysrq_dump: list[str] | None = None,
        dump_lag: int = 0,
        timeout: str | None = "10\n",
        tainted: int | None = TAINT_AFTER_CRASH,
    ) -> None:
        self.root = root
        self.log = list(log or [])
        self.scheduled = dict(scheduled or {})
        self.sysrq_dump = sysrq_dump
        self.dump_lag = dump_lag
        self.reads = 0
        self.now = 0.0
        self.sleeps: list[float] = []
        (root / "proc/sys/kernel").mkdir(parents=True)
        if timeout is not None:
            (root / chardev_crash.HUNG_TASK_TIMEOUT_FILE).write_text(timeout)
        if tainted is not None:
            (root / "proc/sys/kernel/tainted").write_text(f"{tainted}\n")
        self.trigger = root / chardev_crash.SYSRQ_TRIGGER_FILE
        self.trigger.write_text("")  # a plain file stands for /proc/sysrq-trigger

    def read_lines(self) -> list[str]:
        self.reads += 1
        for at in sorted(self.scheduled):
            if at <= self.reads:
                self.log.extend(self.scheduled.pop(at))
        if self.sysrq_dump is not None and self.trigger.is_file() and self.trigger.read_text() == "w\n":
            if self.dump_lag:
                self.dump_lag -= 1
            else:
                self.log.extend(self.sysrq_dump)
                self.sysrq_dump = None
        return list(self.log)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def diagnose(self, stuck: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("wait", 30.0)
        return kernel_diagnostics(
            stuck, self.read_lines, root=str(self.root), clock=self.clock, sleep=self.sleep, **kwargs
        )


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


# --- the evidence module --------------------------------------------------------------------------------


def stat_line(pid: int, comm: str, state: str, starttime: int) -> str:
    """A /proc/<pid>/stat line with every field up to 22 (starttime) and a few after it."""
    return f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {starttime} 0 0\n"


def crashed_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tasks: list[tuple[str, int, str, str, str]],
    kernel: FakeKernel,
) -> list[tuple[int, int]]:
    """The fake /proc tree with the watched tasks (role, pid, comm, state, wchan) and PID files; the
    module's ROOT, SEND_SIGNAL, CLOCK, SLEEP and read_kernel_log pointed at fakes. Returns the kills."""
    for role, pid, comm, state, wchan in tasks:
        proc = tmp_path / "proc" / str(pid)
        proc.mkdir(parents=True)
        (proc / "stat").write_text(stat_line(pid, comm, state, 30000 + pid))
        (proc / "wchan").write_text(wchan)
        (proc / "stack").write_text("")
        (proc / "cmdline").write_bytes(b"")
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / f"{role}.pid").write_text(f"{pid} {30000 + pid}\n")
    (tmp_path / "proc/sys/kernel/tainted").write_text(f"{TAINT_AFTER_CRASH}\n")
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(chardev_crash_evidence, "ROOT", str(tmp_path))
    monkeypatch.setattr(chardev_crash_evidence, "SEND_SIGNAL", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(chardev_crash_evidence, "CLOCK", kernel.clock)
    monkeypatch.setattr(chardev_crash_evidence, "SLEEP", kernel.sleep)
    monkeypatch.setattr(chardev_crash_evidence, "read_kernel_log", lambda: (kernel.read_lines(), "/dev/kmsg"))
    return kills


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
    result = chardev_crash_evidence.run(params(tmp_path), check_mode=False)
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
    assert [pid for pid, _ in kills] == [522, 523]
    json.dumps(result)


def test_module_run_5_10_with_kernel_diagnostics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path, OOPS_5_10, sysrq_dump=SYSRQ_5_10, timeout="120\n")
    crashed_host(tmp_path, monkeypatch, TASKS_5_10, kernel)
    # wchan is 0 on 5.10 (ORC): the reader's wait shows in /proc/<pid>/stack
    (tmp_path / "proc/813/stack").write_text(
        "[<0>] pipe_read+0x47/0x460\n[<0>] new_sync_read+0x119/0x1b0\n[<0>] vfs_read+0xf1/0x190\n"
    )
    result = chardev_crash_evidence.run(
        params(tmp_path, kernel_release="5.10.0-35-amd64", kill_test=False), check_mode=False
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
    result = chardev_crash_evidence.run(params(tmp_path, hung_task_wait=12), check_mode=False)
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
    result = chardev_crash_evidence.run(params(tmp_path, hung_task_wait=12), check_mode=False)
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
        params(tmp_path, kernel_diagnostics=diagnostics), check_mode=check_mode
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
    with patch_module_args(args), pytest.raises(SystemExit):
        chardev_crash_evidence.main()
    result = json.loads(capsys.readouterr().out)
    assert "failed" not in result, result
    assert result["as_expected"] is True, result["mismatches"]
    assert result["sysrq_w"]["shown"] == {"reader": True}
    assert result["hung_task"]["silenced"] and result["hung_task"]["reported"] == {"reader": False}
    assert kernel.sleeps == []
