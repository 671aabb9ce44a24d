#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: gather and judge the evidence of the chardev unload-while-open crash."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_crash_evidence
short_description: Gather and judge the evidence of the chardev unload-while-open crash
description:
  - Reads the state, wait channel and command line of the victim process (and, in C(splice) mode, of the
    pipe reader) from C(/proc), using the PID files the victim program wrote.
  - Reads the kernel log (C(/dev/kmsg) without blocking, else C(dmesg) with a timeout), the taint value in
    C(/proc/sys/kernel/tainted) and C(/sys/kernel/oops_count) when the kernel has it.
  - Compares all of it with the expected outcome for the running kernel (victim in C(D) before 5.17, in
    C(X) from 5.17; pipe reader in C(D) on every version) and lists the differences.
  - With O(kill_test), sends SIGKILL to every watched task in state C(D) or C(X) and reports, after a
    bounded wait, whether it is still there. That is the only thing it changes, and it never reports
    C(changed).
  - It does not fail because the outcome differs from the expectation; it returns RV(as_expected) and
    the list of RV(mismatches) so that the role decides.
author:
  - chardev-lab contributors (@chardev-lab)
options:
  run_dir:
    description:
      - The crash role's run directory on the target, where the victim program wrote its PID files
        (C(victim.pid), and C(reader.pid) in C(splice) mode).
      - A PID file holds the pid and the task's start time; a task whose start time differs (the pid was
        reused) is not taken for the victim, so it is never signalled.
    type: path
    default: /run/chardev-lab
  mode:
    description:
      - How the victim used the file after the module was removed.
      - V(read) calls read() on the device; V(splice) splices the device into a pipe that a second process
        (the reader) reads.
    type: str
    choices: [read, splice]
    required: true
  kill_test:
    description:
      - Send SIGKILL to each watched task that is in state C(D) or C(X) and check that it survives.
      - Tasks in any other state are never signalled.
      - Skipped in check mode (the result says so in RV(msg)).
    type: bool
    default: true
  kill_wait:
    description:
      - Seconds to wait (polling C(/proc)) for a killed task to disappear before calling it unkillable.
    type: float
    default: 2.0
  kernel_release:
    description:
      - Kernel release to take the expected outcome for, for example V(6.1.0-56-amd64).
      - Defaults to the running kernel (C(uname -r) of the managed node).
    type: str
  settle:
    description:
      - Seconds to wait (polling C(/proc) every second) until every judged task is in state C(D) or
        C(X) before the evidence is taken; the crash takes a moment to show after the trigger.
      - 0 takes the evidence at once.
    type: float
    default: 0
  kernel_diagnostics:
    description:
      - "Also gather the kernel's own diagnostics of the watched tasks that are in state C(D): a SysRq C(w)
        dump (C(sysrq: Show Blocked State)), expected to show each of them (marker C(sysrq_w_blocked)), and
        the hung-task detector's reports (C(INFO: task NAME:PID blocked for more than N seconds)). Once the
        kernel has oopsed (taint C(D)) that detector checks nothing any more (kernel/hung_task.c), so no
        report is expected (marker C(hung_task_silent)) and none is waited for; on a kernel that did not
        oops, reports are waited for at most O(hung_task_wait) seconds. Tasks in C(X) are listed as not
        applicable. Writing C(w) to C(/proc/sysrq-trigger) only prints to the kernel log."
      - Skipped in check mode.
    type: bool
    default: false
  hung_task_wait:
    description:
      - Seconds to wait for the hung-task detector's reports with O(kernel_diagnostics), on a kernel that
        has not oopsed (after an oops nothing is waited for, the detector being silent). It reports a task
        blocked for C(kernel.hung_task_timeout_secs) within about twice that time.
    type: float
    default: 30
  log_lines:
    description:
      - Maximum number of kernel log lines returned in RV(oops_lines), from the first oops headline on.
    type: int
    default: 20
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: partial
    details:
      - It only reads, except the SIGKILL of O(kill_test). Check mode skips that kill test
        (RV(kill_test_done) is false and RV(msg) says so) and O(kernel_diagnostics), so the result
        lacks what they would find; the rest of the evidence is gathered as in a real run.
      - It reports C(changed=false) in every mode.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Run it as root; reading C(/dev/kmsg) and signalling the victim need it.
  - It reads only C(/proc) files of the stuck tasks, never their pipes or standard streams, and every
    wait is bounded.
seealso:
  - name: Tainted kernels
    description: Meaning of the taint letters.
    link: https://docs.kernel.org/admin-guide/tainted-kernels.html
"""

EXAMPLES = r"""
- name: Gather the crash evidence
  chardev_lab.lab.chardev_crash_evidence:
    run_dir: /run/chardev-lab
    mode: splice
  register: __chardev_crash_evidence

- name: Report what differs from the expected outcome
  ansible.builtin.assert:
    that: __chardev_crash_evidence.as_expected
    fail_msg: "{{ __chardev_crash_evidence.mismatches }}"

- name: Look only, without the kill test
  chardev_lab.lab.chardev_crash_evidence:
    mode: read
    kill_test: false
"""

RETURN = r"""
tasks:
  description:
    - One entry for each watched task, read from its PID file in O(run_dir), the victim's (C(victim.pid))
      and, with O(mode=splice), the pipe reader's (C(reader.pid)).
    - C(state) is the state letter from C(/proc/<pid>/stat), null when the pid is not in C(/proc).
    - C(wchan) is where the task sleeps (C(/proc/<pid>/wchan)), null when the kernel says C(0), as x86
      kernels before 5.16 with the ORC unwinder (Debian 11's among them) do for every task.
    - C(stack) lists the function names of C(/proc/<pid>/stack), innermost first; it shows where the
      task waits when C(wchan) cannot, and is empty for a task whose stack is gone (state X).
    - C(killed_but_alive) is true when the task was still there after SIGKILL and the wait, false
      when it went away, null when no kill test was made for it.
  returned: always
  type: list
  elements: dict
  sample:
    - role: victim
      pidfile: /run/chardev-lab/victim.pid
      pid: 812
      comm: chardev-victim
      state: X
      wchan: null
      stack: []
      cmdline: []
      identity: starttime
      kill_sent: true
      killed_but_alive: true
      state_after_kill: X
      error: null
    - role: reader
      pidfile: /run/chardev-lab/reader.pid
      pid: 813
      comm: chardev-reader
      state: D
      wchan: pipe_read
      stack: [pipe_read, new_sync_read, vfs_read, ksys_read, do_syscall_64]
      cmdline: [python3, /usr/local/lib/chardev-lab/chardev_victim.py, splice]
      identity: starttime
      kill_sent: true
      killed_but_alive: true
      state_after_kill: D
      error: null
oops:
  description: "Whether the kernel log holds an oops headline (C(BUG: unable to handle ...))."
  returned: always
  type: bool
  sample: true
oops_headlines:
  description: How many oops headlines the kernel log holds (the recursive fault usually adds one).
  returned: always
  type: int
  sample: 2
oops_lines:
  description: Kernel log lines from the first oops headline on, timestamps removed, at most O(log_lines).
  returned: always
  type: list
  elements: str
  sample:
    - "BUG: unable to handle page fault for address: ffffffffc0a2e2c0"
    - "#PF: supervisor read access in kernel mode"
    - "Oops: 0000 [#1] PREEMPT SMP NOPTI"
oops_tasks:
  description:
    - The task each oops happened in (C(PID:) and C(Comm:) of the oops), in log order; the crash is the
      victim's when its pid is among them.
  returned: always
  type: list
  elements: dict
  sample: [{pid: 812, comm: chardev-victim}, {pid: 812, comm: chardev-victim}]
recursive_fault:
  description: Whether the kernel log holds C(Fixing recursive fault but reboot is needed!).
  returned: always
  type: bool
  sample: true
last_unloaded_chardev:
  description: "Whether a C(Modules linked in) line ends with C([last unloaded: chardev)."
  returned: always
  type: bool
  sample: true
kernel_log_source:
  description: Where the kernel log came from (V(/dev/kmsg), V(dmesg)), or V(none) when neither worked.
  returned: always
  type: str
  sample: /dev/kmsg
tainted:
  description: The value of C(/proc/sys/kernel/tainted); null when it cannot be read.
  returned: always
  type: int
  sample: 12416
taint_flags:
  description: The letters of the set taint bits, lowest bit first (D oops, O out-of-tree, E unsigned).
  returned: always
  type: str
  sample: DOE
taint_decoded:
  description: Each set taint bit with its letter and meaning.
  returned: always
  type: list
  elements: dict
  sample:
    - {bit: 7, value: 128, letter: D, meaning: "kernel died recently, i.e. there was an OOPS or BUG"}
oops_count:
  description: The value of C(/sys/kernel/oops_count); null on kernels without that file.
  returned: always
  type: int
  sample: 2
kernel_release:
  description: The kernel release the expectation was taken for.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
expected:
  description: The expected outcome for this kernel and mode (per role state, wchan patterns, markers).
  returned: always
  type: dict
  sample:
    kernel_release: 6.1.0-56-amd64
    kernel_version: [6, 1, 0]
    mode: splice
    tasks:
      victim: {state: X, wchan_patterns: [], unkillable: true, why: "..."}
      reader: {state: D, wchan_patterns: [pipe_read, mutex, lock], unkillable: true, why: "..."}
    markers:
      {oops: true, oops_of_victim: true, recursive_fault: true, last_unloaded_chardev: true, taint_die: true}
observed:
  description: What was seen, in the shape that the expectation is compared with.
  returned: always
  type: dict
  sample:
    tasks:
      victim:
        {pid: 812, state: X, wchan: null, stack: [], killed_but_alive: true, state_after_kill: X, error: null}
    oops: true
    oops_of_victim: true
    oops_tasks: [{pid: 812, comm: chardev-victim}]
    recursive_fault: true
    last_unloaded_chardev: true
    taint_die: true
mismatches:
  description: Human-readable differences between expected and observed; empty when as expected.
  returned: always
  type: list
  elements: str
  sample: ["victim: pid 812 is in state S, expected X (...)"]
as_expected:
  description: True when RV(mismatches) is empty.
  returned: always
  type: bool
  sample: true
kill_test_done:
  description: Whether SIGKILL was sent (false with O(kill_test=false) and in check mode).
  returned: always
  type: bool
  sample: true
faults:
  description:
    - Every oops in the kernel log, parsed (headline, faulting address, access, RIP, task) and explained
      against the module's layout recorded before the unload (C(layout.json) in O(run_dir)) and the kernel's
      BTF (C(/sys/kernel/btf/vmlinux)); C(text) says it in one sentence, C(symbol), C(offset), C(struct),
      C(member) name the memory. Unknown fields are null, never guessed.
  returned: always
  type: list
  elements: dict
  sample:
    - role: primary
      headline: "BUG: unable to handle page fault for address: ffffffffc0a651b0"
      address: "0xffffffffc0a651b0"
      rip: vfs_read+0x8a/0x2f0
      pid: 1633
      comm: chardev-victim
      symbol: chardev_fops
      offset: 16
      section: .rodata
      struct: file_operations
      member: read
      text: "the kernel read chardev_fops+0x10, the .read pointer of the module's struct file_operations, in
        memory freed when chardev was unloaded"
explanation:
  description: The first entry of RV(faults) (the victim's own fault), null without an oops.
  returned: always
  type: dict
  sample: {symbol: chardev_fops, offset: 16, member: read, text: "the kernel read chardev_fops+0x10, ..."}
btf_problem:
  description: Why the kernel's BTF could not be read (no member is named then), null when it was.
  returned: always
  type: str
  sample: null
hung_task:
  description:
    - With O(kernel_diagnostics), the hung-task detector's word; null without it.
    - C(silenced) says why the detector reports nothing (the kernel oopsed), null when it still checks;
      C(reported) maps each role in C(D) to whether the kernel reported it; C(not_applicable) says why a
      role is not judged (not in C(D)); C(reports) holds each report's comm, pid, seconds, stack functions
      and log lines.
  returned: always
  type: dict
  sample:
    timeout_secs: 10
    silenced: "the kernel has oopsed (taint D), and from then on its hung-task detector checks nothing ..."
    reported: {reader: false}
    not_applicable: {victim: "not in D: ... (pid 812 is in X)"}
    reports: []
sysrq_w:
  description:
    - With O(kernel_diagnostics), the SysRq C(w) dump (tasks in C(D) and their stacks); null without it.
  returned: always
  type: dict
  sample:
    done: true
    shown: {reader: true}
    tasks: [{comm: chardev-reader, pid: 813, state: D, stack: [__schedule, schedule, pipe_read]}]
    lines: ["sysrq: Show Blocked State"]
    error: null
msg:
  description: A one-line summary, saying when check mode skipped the kill test.
  returned: always
  type: str
  sample: "crash evidence as expected for 6.1.0-56-amd64 (splice)"
"""

import os
import subprocess  # noqa: F401  # pylint: disable=unused-import  # tests patch subprocess.run through it
import time
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_fault import BTF_PATH, explain_log
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    kernel_diagnostics,
    parse_kernel_log,
    read_kernel_log_lines,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_outcomes import (
    compare,
    diagnostics_markers,
    expected_outcome,
    observed_from,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    MODES,
    gather_tasks,
    read_optional,
    task_to_dict,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_record import (
    pidfiles_for,
    run_files,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    decode_taint,
    parse_oops_count,
    parse_tainted,
    taint_letters,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import RUN_DIR
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

KMSG_PATH = "/dev/kmsg"
#: How SIGKILL is sent; tests replace it.
SEND_SIGNAL: Callable[[int, int], None] = os.kill
DMESG_TIMEOUT = 15
#: Clock and sleep of the settle wait; tests replace them.
CLOCK: Callable[[], float] = time.monotonic
SLEEP: Callable[[float], None] = time.sleep


def read_kernel_log() -> tuple[list[str], str]:
    """Kernel log lines and their source: /dev/kmsg (non-blocking), else dmesg (bounded), else none."""
    return read_kernel_log_lines(KMSG_PATH, DMESG_TIMEOUT)


def wait_until_stuck(pidfiles: dict[str, str], judged: set[str], settle: float, system: System) -> None:
    """Poll (bounded by settle seconds) until every judged role's task is stuck in D or X."""
    deadline = CLOCK() + settle
    while CLOCK() < deadline:
        tasks = gather_tasks(pidfiles, root=system.root, kill_test=False)
        if all(t.state in ("D", "X") for t in tasks if t.role in judged):
            return
        SLEEP(1.0)


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """The module's work, without AnsibleModule: returns the result dict."""
    release = params.get("kernel_release") or os.uname().release
    diagnose = bool(params.get("kernel_diagnostics")) and not check_mode
    expected = expected_outcome(release, params["mode"], diagnostics=diagnose)
    kill_test = bool(params["kill_test"]) and not check_mode
    pidfiles = pidfiles_for(params["mode"], params["run_dir"])
    wait_until_stuck(pidfiles, set(expected["tasks"]), float(params.get("settle") or 0), system)
    tasks = gather_tasks(
        pidfiles,
        root=system.root,
        kill_test=kill_test,
        kill_wait=float(params["kill_wait"]),
        kill=SEND_SIGNAL,
    )
    diagnostics = None
    if diagnose:
        diagnostics = kernel_diagnostics(
            [{"role": task.role, "pid": task.pid, "state": task.state} for task in tasks],
            lambda: read_kernel_log()[0],
            root=system.root,
            wait=float(params.get("hung_task_wait") or 0),
            clock=CLOCK,
            sleep=SLEEP,
        )
    lines, source = read_kernel_log()
    log = parse_kernel_log(lines, max_lines=params["log_lines"])
    tainted_text = read_optional(system.path("/proc/sys/kernel/tainted"))
    tainted = parse_tainted(tainted_text) if tainted_text and tainted_text.strip().isdigit() else None
    layout_text = read_optional(system.path(run_files(params["run_dir"])["layout"]))
    boot_id = (read_optional(system.path("/proc/sys/kernel/random/boot_id")) or "").strip() or None
    btf_path = system.path(BTF_PATH)
    explained = explain_log(lines, layout_text, boot_id=boot_id, btf_path=btf_path)
    observed = observed_from(tasks, log, tainted)
    if diagnostics is not None:
        observed.update(diagnostics_markers(diagnostics))
    mismatches = compare(expected, observed)
    if mismatches:
        msg = f"crash evidence differs from the expectation for {release} ({params['mode']}): " + "; ".join(
            mismatches
        )
    else:
        msg = f"crash evidence as expected for {release} ({params['mode']})"
    if params["kill_test"] and check_mode:
        msg += "; check mode: SIGKILL not sent, unkillability not tested"
    return {
        "changed": False,
        "tasks": [task_to_dict(task) for task in tasks],
        "oops": log.oops,
        "oops_headlines": log.oops_headlines,
        "oops_lines": log.oops_lines,
        "oops_tasks": observed["oops_tasks"],
        "recursive_fault": log.recursive_fault,
        "last_unloaded_chardev": log.last_unloaded_chardev,
        "kernel_log_source": source,
        "tainted": tainted,
        "taint_flags": taint_letters(tainted) if tainted is not None else "",
        "taint_decoded": decode_taint(tainted) if tainted is not None else [],
        "oops_count": parse_oops_count(read_optional(system.path("/sys/kernel/oops_count"))),
        "kernel_release": release,
        "expected": expected,
        "observed": observed,
        "mismatches": mismatches,
        "as_expected": not mismatches,
        "kill_test_done": kill_test,
        "faults": explained["faults"],
        "explanation": explained["primary"],
        "btf_problem": explained["btf"],
        "hung_task": (diagnostics or {}).get("hung_task"),
        "sysrq_w": (diagnostics or {}).get("sysrq_w"),
        "msg": msg,
    }


def make_module() -> AnsibleModule:
    """The AnsibleModule with this module's argument spec."""
    return AnsibleModule(
        argument_spec={
            "run_dir": {"type": "path", "default": RUN_DIR},
            "mode": {"type": "str", "choices": list(MODES), "required": True},
            "kill_test": {"type": "bool", "default": True},
            "kill_wait": {"type": "float", "default": 2.0},
            "kernel_release": {"type": "str"},
            "log_lines": {"type": "int", "default": 20},
            "settle": {"type": "float", "default": 0},
            "kernel_diagnostics": {"type": "bool", "default": False},
            "hung_task_wait": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )


def main(system: System | None = None) -> None:
    module = make_module()
    try:
        result = run(module.params, module.check_mode, System(module) if system is None else system)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
