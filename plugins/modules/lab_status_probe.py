#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read a lab host's chardev state in one round trip (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_status_probe
short_description: Read a lab host's kernel, chardev module, device node and crash state
description:
  - Reads, in one call and without changing anything, what the lab's status report shows for a host
    (the C(lab_status) role and C(playbooks/status.yml)).
  - The running kernel's release (C(/proc/sys/kernel/osrelease)) and whether its headers are installed
    (C(/lib/modules/<release>/build) exists).
  - Whether the chardev module is loaded (C(/sys/module/chardev)) and which variant
    (C(/sys/module/chardev/version) reads C(1.0-<variant>)).
  - Whether O(device) is a character device whose major equals chardev's major in C(/proc/devices).
  - The crash state, read by the same code as the C(chardev_crash) role's own
    M(chardev_lab.lab.chardev_crash_state). The host counts as crashed when the crash record that the
    role leaves in O(crash_run_dir) says so, or, whatever the record says, when the kernel carries the
    taint flag C(D) (128, an oops), C(/sys/kernel/oops_count) is above 0, or the kernel log since boot
    holds an oops or a recursive fault.
  - The stuck tasks. These are every task in state C(X), and every task in state C(D) whose command
    name starts with one of O(stuck_comm_prefixes). For each one it returns the pid, state, command name
    and wait channel.
  - The taint value and its letters, and whether a reboot is required (crashed, or
    C(/run/reboot-required) exists).
  - It never blocks. Only C(/proc/<pid>/stat) and C(/proc/<pid>/wchan) of other tasks are read. These
    files do not wait on the task, even a stuck one. A task's standard streams and pipes are never read.
    Python 3.9 or newer on the managed node, standard library only.
author:
  - chardev-lab contributors (@chardev-lab)
options:
  device:
    description:
      - The chardev device node to check.
    type: path
    default: /dev/chardev
  crash_run_dir:
    description:
      - The C(chardev_crash) role's run directory, where it keeps its crash record C(crashed.json) (on
        tmpfs, so a reboot removes it).
    type: path
    default: /run/chardev-lab
  stuck_comm_prefixes:
    description:
      - A task in state C(D) is reported as stuck when its command name starts with one of these.
      - A task in state C(X) is always reported.
    type: list
    elements: str
    default: [chardev, python, cat]
  max_tasks:
    description:
      - At most this many stuck tasks are returned. RV(stuck_count) still counts all of them.
    type: int
    default: 50
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The module only reads, so check mode changes nothing in what it does.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Run it as root to read every task's wait channel; without root some wait channels read as null.
seealso:
  - module: chardev_lab.lab.chardev_crash_evidence
    description: Gathers and judges the full crash evidence, including the kernel log.
  - name: Tainted kernels
    description: Meaning of the taint letters.
    link: https://docs.kernel.org/admin-guide/tainted-kernels.html
"""

EXAMPLES = r"""
- name: Probe the lab host
  chardev_lab.lab.lab_status_probe:
  register: lab_status_probe_result
  ignore_unreachable: true

- name: Probe a host whose device node lives elsewhere, looking for more stuck tasks
  chardev_lab.lab.lab_status_probe:
    device: /dev/chardev0
    stuck_comm_prefixes: [chardev, python, cat, dd]
    max_tasks: 100
"""

RETURN = r"""
kernel:
  description: The running kernel's release.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
headers:
  description: Whether C(/lib/modules/<release>/build) exists (a dangling link counts as missing).
  returned: always
  type: bool
  sample: true
module_loaded:
  description: Whether C(/sys/module/chardev) exists.
  returned: always
  type: bool
  sample: true
module_version:
  description: The text of C(/sys/module/chardev/version); null when the module is not loaded.
  returned: always
  type: str
  sample: 1.0-safe
variant:
  description:
    - The loaded variant, V(safe), V(classic) or V(crash); V(unknown) for a version in another form;
      null when the module is not loaded.
  returned: always
  type: str
  sample: safe
major:
  description: chardev's major number in C(/proc/devices); null when it is not registered.
  returned: always
  type: int
  sample: 240
node_ok:
  description: Whether O(device) is a character device with chardev's major.
  returned: always
  type: bool
  sample: true
node:
  description: What O(device) is, in words.
  returned: always
  type: str
  sample: "character device 240:0"
crashed:
  description:
    - Whether the crash record says so, or the kernel's own markers do (taint flag D,
      C(/sys/kernel/oops_count) above 0, an oops or a recursive fault in the kernel log).
  returned: always
  type: bool
  sample: false
crash_reasons:
  description: The markers that make RV(crashed) true; empty when not crashed.
  returned: always
  type: list
  elements: str
  sample: ["crash record /run/chardev-lab/crashed.json (crashed)", "taint flag D (oops)", "oops_count 2"]
crash_phase:
  description:
    - Where the crash role stands on the host (see M(chardev_lab.lab.chardev_crash_state)), V(fresh) when
      nothing of a crash is there.
  returned: always
  type: str
  sample: done
new_taint:
  description:
    - The taint bits set since the taint recorded before the lab
      (C(/var/lib/chardev-lab/taint-before-lab.json), written by the lab's first run of a boot); all
      of RV(tainted) when none was recorded. A reset host is clean when it is 0, also on a host
      tainted before the lab (a proprietary driver, for example).
  returned: always
  type: int
  sample: 0
taint_baseline:
  description: The recorded taint before the lab (C(boot_id), C(tainted), C(recorded_at)); null without one.
  returned: always
  type: dict
  sample: {boot_id: 0b7c6c3e-1f0e-4d43-9a0e-5b2b1c7e8f90, tainted: 0, recorded_at: "2026-11-26T09:10:00Z"}
crash_record:
  description:
    - The crash record's mode, time and kernel (keys C(mode), C(crashed_at), C(kernel_release),
      C(as_expected)); null when there is no record, C({}) when it cannot be parsed.
  returned: always
  type: dict
  sample:
    mode: read
    crashed_at: "2026-11-26T09:12:03+00:00"
    kernel_release: 6.1.0-56-amd64
    as_expected: true
oops_count:
  description: The value of C(/sys/kernel/oops_count); null on kernels without it (5.10).
  returned: always
  type: int
  sample: 2
stuck_tasks:
  description:
    - The stuck tasks, by pid, at most O(max_tasks). C(wchan) is null when the kernel reads C(0), as
      x86 kernels before 5.16 built with the ORC unwinder (Debian 11's) do for every task.
  returned: always
  type: list
  elements: dict
  sample:
    - {pid: 1576, state: X, comm: python3, wchan: null}
    - {pid: 1577, state: D, comm: chardev-reader, wchan: pipe_read}
stuck_count:
  description: How many stuck tasks there are, including the ones left out by O(max_tasks).
  returned: always
  type: int
  sample: 2
tainted:
  description: The value of C(/proc/sys/kernel/tainted); null when it cannot be read.
  returned: always
  type: int
  sample: 12416
taint_letters:
  description: The letters of the set taint bits, lowest bit first; empty when not tainted.
  returned: always
  type: str
  sample: DOE
reboot_required:
  description: True when RV(crashed) is true or C(/run/reboot-required) exists.
  returned: always
  type: bool
  sample: true
check:
  description:
    - The last verdict of C(playbooks/check.yml) in this boot (C(check.json) in the run directory), null
      when it has not run; see M(chardev_lab.lab.chardev_crash_check).
  returned: always
  type: dict
  sample:
    verdict: crashed
    as_expected: true
    summary: "read mode: the oops happened in pid 1633 (python3, state X); as the kernel predicts"
    explanation: "the kernel read chardev_fops+0x10, the .read pointer of the module's struct file_operations"
    checked_at: "2026-11-26T14:00:00+00:00"
"""

import json
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    read_kernel_log_lines,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    parse_proc_devices,
    parse_wchan,
    proc_path,
    read_optional,
    read_task_state,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_record import (
    crash_state,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    taint_letters,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    MODULES_DIR,
    PROC_DEVICES,
    RUN_DIR,
    SYSFS_MODULES,
    TAINT_BASELINE_PATH,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

#: How the device node is looked at; tests replace it (a fake tree cannot hold a character device).
LSTAT: Callable[[str], Any] = os.lstat


def read_kernel_log() -> list[str]:
    """The kernel log since boot (/dev/kmsg, else dmesg); tests replace it."""
    return read_kernel_log_lines()[0]


KERNEL_LOG: Callable[[], list[str]] = read_kernel_log

MODULE_NAME = "chardev"
VARIANTS = ("safe", "classic", "crash")
REBOOT_REQUIRED_FILE = "/run/reboot-required"
#: Keys of the crash record that are returned.
RECORD_KEYS = ("mode", "crashed_at", "kernel_release", "as_expected")


def parse_char_major(text: str, name: str = MODULE_NAME) -> int | None:
    """The major number of the character driver `name` in /proc/devices (its first), or None when it is
    not there or the file cannot be read."""
    try:
        majors = parse_proc_devices(text).char_majors(name)
    except ValueError:
        return None
    return majors[0] if majors else None


def parse_module_version(text: str | None) -> str | None:
    """The variant in /sys/module/chardev/version ("1.0-safe" -> "safe"); "unknown" for another form;
    None when there is no version."""
    if text is None or not text.strip():
        return None
    _head, _sep, variant = text.strip().rpartition("-")
    return variant if variant in VARIANTS else "unknown"


def judge_node(st: Any | None, major: int | None, device: str) -> tuple[bool, str]:
    """Whether a device node (its lstat result, None when absent) is chardev's, and what it is in words."""
    if st is None:
        return False, f"{device} does not exist"
    if not stat.S_ISCHR(st.st_mode):
        return False, f"{device} is not a character device"
    found = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if major is None:
        return False, f"character device {found}, but chardev is not in /proc/devices"
    if os.major(st.st_rdev) != major:
        return False, f"character device {found}, but chardev's major is {major} (a stale node)"
    return True, f"character device {found}"


def is_stuck(state: str, comm: str, prefixes: Sequence[str]) -> bool:
    """X tasks always; D tasks whose command name starts with one of prefixes."""
    return state == "X" or (state == "D" and any(comm.startswith(prefix) for prefix in prefixes))


def find_stuck_tasks(system: System, prefixes: Sequence[str]) -> list[dict[str, Any]]:
    """Every stuck task below root/proc, by pid: {pid, state, comm, wchan}. Reads only stat and wchan."""
    try:
        names: Iterable[str] = os.listdir(system.path("/proc"))
    except OSError:
        return []
    stuck = []
    for pid in sorted(int(name) for name in names if name.isdigit()):
        task = read_task_state(system.root, pid)
        if task is None or not is_stuck(task.state, task.comm, prefixes):
            continue
        wchan = parse_wchan(read_optional(proc_path(system.root, pid, "wchan")) or "")
        stuck.append({"pid": task.pid, "state": task.state, "comm": task.comm, "wchan": wchan})
    return stuck


def record_summary(record: dict[str, Any] | None, error: str | None) -> dict[str, Any] | None:
    """The few keys of the crash record worth showing; None without a record, {} for an unreadable one."""
    if record is None:
        return None
    if error:
        return {}
    return {key: record.get(key) for key in RECORD_KEYS}


def read_check(system: System, run_dir: str) -> dict[str, Any] | None:
    """The last verdict of playbooks/check.yml in this boot (check.json in the run directory), or None."""
    try:
        data = json.loads(read_optional(system.path(os.path.join(run_dir, "check.json"))) or "null")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {key: data.get(key) for key in ("verdict", "as_expected", "summary", "explanation", "checked_at")}


def probe(
    system: System,
    params: dict[str, Any],
    lstat: Callable[[str], Any] = os.lstat,
    kernel_log: Callable[[], list[str]] = read_kernel_log,
) -> dict[str, Any]:
    """Everything the status report needs about the host (the system)."""
    release = (read_optional(system.path("/proc/sys/kernel/osrelease")) or os.uname().release).strip()
    module_dir = system.path(f"{SYSFS_MODULES}/{MODULE_NAME}")
    loaded = os.path.isdir(module_dir)
    version_text = read_optional(os.path.join(module_dir, "version")) if loaded else None
    major = parse_char_major(read_optional(system.path(PROC_DEVICES)) or "")
    device = params["device"]
    try:
        node_stat = lstat(system.path(device))
    except OSError:
        node_stat = None
    node_ok, node = judge_node(node_stat, major, device)
    crash = crash_state(system.root, params["crash_run_dir"], kernel_log(), TAINT_BASELINE_PATH)
    tainted = crash["tainted"]
    stuck = find_stuck_tasks(system, params["stuck_comm_prefixes"])
    return {
        "changed": False,
        "kernel": release,
        "headers": os.path.exists(system.path(f"{MODULES_DIR}/{release}/build")),
        "module_loaded": loaded,
        "module_version": version_text.strip() if version_text else None,
        "variant": parse_module_version(version_text) if loaded else None,
        "major": major,
        "node_ok": node_ok,
        "node": node,
        "crashed": crash["crashed"],
        "crash_reasons": crash["reasons"],
        "crash_phase": crash["phase"],
        "crash_record": record_summary(crash["record"], crash["record_error"]),
        "oops_count": crash["oops_count"],
        "stuck_tasks": stuck[: max(0, int(params["max_tasks"]))],
        "stuck_count": len(stuck),
        "tainted": tainted,
        "taint_letters": taint_letters(tainted) if tainted is not None else "",
        "taint_baseline": crash["taint_baseline"],
        "new_taint": crash["new_taint"],
        "reboot_required": crash["crashed"] or os.path.exists(system.path(REBOOT_REQUIRED_FILE)),
        "check": read_check(system, params["crash_run_dir"]),
    }


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """The module's work, without AnsibleModule; read-only, so check mode is the same."""
    del check_mode
    return probe(system, params, LSTAT, KERNEL_LOG)


def make_module() -> AnsibleModule:
    """The AnsibleModule with this module's argument spec."""
    return AnsibleModule(
        argument_spec={
            "device": {"type": "path", "default": "/dev/chardev"},
            "crash_run_dir": {"type": "path", "default": RUN_DIR},
            "stuck_comm_prefixes": {
                "type": "list",
                "elements": "str",
                "default": ["chardev", "python", "cat"],
            },
            "max_tasks": {"type": "int", "default": 50},
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
