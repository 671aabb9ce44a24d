#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: unload the chardev module, unless a process holds its device open on a host that did
not opt in to the crash."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_unload
short_description: Unload the chardev module, refusing while its device is held open
description:
  - Unloads the chardev teaching module (C(modprobe -r chardev)) when it is loaded.
  - Unloading it while a process holds its device open is the lab's crash with the crash variant,
    which does not pin itself (its C(/sys/module/chardev/refcnt) stays 0 while the file is open); the
    next use of the open file calls into the freed module and oopses the kernel.
  - So the module first looks for the holders in C(/proc/<pid>/fd), never in the reference count. A
    holder is a process with an fd whose link is O(device) (or O(device) removed, C(<device> (deleted))),
    or any character device node with the major the driver registered in C(/proc/devices) (a node made
    elsewhere reaches the same driver).
  - With a holder, or an fd directory that could not be read, the module fails and unloads nothing,
    unless O(allow_held) is true (the host opted in to the crash, C(chardev_crash_allowed)); then it
    warns and unloads.
  - The safe and classic variants pin themselves while their file is open, so C(modprobe -r) refuses
    them anyway (Module chardev is in use); the module fails with that message.
version_added: "1.0.0"
author:
  - chardev-lab contributors (@chardev-lab)
options:
  device:
    description:
      - The device node of the module (the chardev role's C(chardev_device)).
    type: path
    default: /dev/chardev
  allow_held:
    description:
      - Unload even while a process holds the device open (a crash with the crash variant). Only for a
        host that opted in to the crash.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The holders are looked for and a refusal fails as in a real run; nothing is unloaded.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - "Reading every process's C(/proc/<pid>/fd) and unloading a module need root: use C(become: true)."
seealso:
  - module: community.general.modprobe
  - module: chardev_lab.lab.chardev_node
"""

EXAMPLES = r"""
- name: Unload the chardev module (refused while its device is open, unless the host opted in)
  chardev_lab.lab.chardev_unload:
    device: /dev/chardev
    allow_held: "{{ chardev_crash_allowed | bool }}"
  become: true
"""

RETURN = r"""
unloaded:
  description: Whether the module was unloaded (false in check mode, and when it was not loaded).
  returned: always
  type: bool
  sample: true
loaded:
  description: Whether the module was loaded before the task.
  returned: always
  type: bool
  sample: true
holders:
  description: The processes that held the device open.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: The process id.
      returned: always
      type: int
      sample: 1633
    comm:
      description: Its command name, or V(null) when it could not be read.
      returned: always
      type: str
      sample: python3
    fd:
      description: The open file descriptor.
      returned: always
      type: int
      sample: 3
    target:
      description: What the descriptor's link in C(/proc/<pid>/fd) names.
      returned: always
      type: str
      sample: /dev/chardev
  sample: [{"pid": 1633, "comm": "python3", "fd": 3, "target": "/dev/chardev"}]
unreadable:
  description: The C(/proc/<pid>/fd) directories that could not be read.
  returned: always
  type: list
  elements: str
  sample: []
refcnt:
  description: The module's reference count (C(/sys/module/chardev/refcnt)), or V(null).
  returned: always
  type: int
  sample: 0
major:
  description: The major the driver registered in C(/proc/devices), or V(null).
  returned: always
  type: int
  sample: 240
"""

# Ansible wants DOCUMENTATION, EXAMPLES and RETURN before the imports (ansible-test's
# "import-before-documentation").
from collections.abc import Mapping
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    ProcDevicesError,
    device_holders,
    parse_proc_devices,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import PROC_DEVICES, SYSFS_MODULES
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import (
    ModuleFailure,
    System,
    execute,
)

MODULE = "chardev"
ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "device": {"type": "path", "default": "/dev/chardev"},
    "allow_held": {"type": "bool", "default": False},
}


def registered_major(system: System) -> int | None:
    """The major the driver registered, or None (not registered, or /proc/devices unreadable)."""
    text = system.read_text(PROC_DEVICES)
    if text is None:
        return None
    try:
        majors = parse_proc_devices(text).char_majors(MODULE)
    except ProcDevicesError:
        return None
    return majors[0] if majors else None


def refcount(system: System) -> int | None:
    text = (system.read_text(f"{SYSFS_MODULES}/{MODULE}/refcnt") or "").strip()
    return int(text) if text.isdigit() else None


def describe(holders: list[dict[str, Any]], unreadable: list[str]) -> str:
    parts = [f"pid {h['pid']} ({h['comm'] or '?'}, fd {h['fd']} -> {h['target']})" for h in holders]
    if unreadable:
        parts.append(f"and a holder cannot be ruled out ({'; '.join(unreadable)} could not be read)")
    return ", ".join(parts)


def run(params: Mapping[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    device = params["device"]
    result: dict[str, Any] = {
        "changed": False,
        "unloaded": False,
        "loaded": system.isdir(f"{SYSFS_MODULES}/{MODULE}"),
        "holders": [],
        "unreadable": [],
        "refcnt": None,
        "major": None,
    }
    if not result["loaded"]:
        return result
    result["major"] = registered_major(system)
    result["refcnt"] = refcount(system)
    holders = device_holders(system.root, device, result["major"])
    result["holders"] = list(holders.found)
    result["unreadable"] = list(holders.unreadable)
    if holders.found or holders.unreadable:
        held = describe(result["holders"], result["unreadable"])
        if not params["allow_held"]:
            raise ModuleFailure(
                f"Refusing to unload {MODULE} while {device} is held open: {held}. With the crash variant"
                " (no reference count: refcnt stays 0 while the file is open) the unload would leave that"
                " file calling into freed memory: the crash, on a host that did not opt in"
                " (chardev_crash_allowed is false). Nothing was unloaded. Close the file (end those"
                " processes), then run again; or opt the host in to the crash in the inventory.",
                **result,
            )
        system.warn(
            f"unloading {MODULE} while {device} is held open ({held}): the host opted in to the crash"
        )
    result["changed"] = True
    if check_mode:
        return result
    modprobe = system.which("modprobe") or "modprobe"
    rc, out, err = system.run([modprobe, "-r", MODULE])
    if rc != 0:
        result["changed"] = False
        raise ModuleFailure(
            f"modprobe -r {MODULE} failed (exit status {rc}): {(err or out).strip() or 'no output'}."
            " A module in use (the safe and classic variants pin themselves while their file is open)"
            " cannot be unloaded: close the file, then run again.",
            **result,
        )
    result["unloaded"] = True
    return result


def make_module() -> AnsibleModule:
    return AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)


def main(system: System | None = None) -> None:
    execute(make_module(), run, system)


if __name__ == "__main__":
    main()
