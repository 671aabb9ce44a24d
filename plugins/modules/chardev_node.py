#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: manage the /dev node of a character device driver found in /proc/devices."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_node
short_description: Create, repair or remove the device node of a loaded character device driver
description:
  - Reads the major number that a loaded driver registered (for example with
    C(register_chrdev(0, "chardev", &fops))) from the character devices section of C(/proc/devices),
    and makes sure a character device node with that major and the given minor exists at O(path), with
    the given mode, owner and group.
  - A node left from an earlier load of the module may carry a stale major number. Such a node is
    replaced by a new one.
  - The module never replaces or removes anything that is not a character device. A regular file,
    directory, symbolic link, block device, FIFO or socket at O(path) makes the module fail, and the
    thing is left as it was.
  - Nor a character device of another driver. A node is replaced or removed only when its major is the
    one O(name) registered, or is registered by no driver in C(/proc/devices) (a stale node of an earlier
    load); a node whose major another driver owns (C(/dev/null) is C(mem)'s) makes the module fail with
    the node, its major and that driver, and the node is left as it was. This holds for both states.
  - Symbolic links are not followed.
author:
  - chardev-lab contributors (@chardev-lab)
options:
  path:
    description:
      - Absolute path of the device node.
    type: path
    default: /dev/chardev
  name:
    description:
      - Driver name as listed in the character devices section of C(/proc/devices).
      - Entries with the same name in the block devices section are ignored.
      - With O(state=present), the driver whose major the node gets; with either state, a node found at
        O(path) is replaced or removed only if its major is this driver's or no driver's.
    type: str
    default: chardev
  minor:
    description:
      - Minor number of the node (0 to 1048575).
    type: int
    default: 0
  mode:
    description:
      - Permissions of the node, as an octal string such as V("0644") (quote it in YAML).
      - An integer is taken as the numeric mode itself, so an unquoted YAML V(0644) also works.
      - Symbolic modes (V(u=rw,g=r)) are not supported.
    type: raw
    default: "0644"
  owner:
    description:
      - User name or numeric uid that should own the node.
    type: str
    default: root
  group:
    description:
      - Group name or numeric gid of the node.
    type: str
    default: root
  state:
    description:
      - V(present) creates the node, replaces a node with a stale major or minor, and fixes its mode,
        owner and group.
      - V(absent) removes the node if it is a character device of O(name) or of no registered driver
        (whatever its minor). It fails if something else is at O(path), or a node of another driver. It
        does not need the driver to be loaded.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - RV(actions) lists what would be done, RV(diff) shows the node as it would be; nothing is
        created, changed or removed.
  diff_mode:
    support: full
    details:
      - The node before and after (RV(diff)), in every mode.
  platform:
    platforms: linux
notes:
  - "Creating a device node needs root (or CAP_MKNOD): use C(become: true)."
  - The module reads the major from C(/proc/devices), never from the kernel log.
seealso:
  - module: community.general.modprobe
  - module: ansible.builtin.file
"""

EXAMPLES = r"""
- name: Create /dev/chardev for the loaded chardev module
  chardev_lab.lab.chardev_node:
    path: /dev/chardev
    name: chardev
    mode: "0644"
  become: true

- name: Remove the node after unloading the module
  chardev_lab.lab.chardev_node:
    path: /dev/chardev
    state: absent
  become: true

- name: Report what would change, without changing it
  chardev_lab.lab.chardev_node:
    name: chardev
  check_mode: true
  register: __chardev_node_plan
"""

RETURN = r"""
path:
  description: Path of the node.
  returned: always
  type: str
  sample: /dev/chardev
state:
  description: The requested state.
  returned: always
  type: str
  sample: present
major:
  description:
    - With O(state=present), the major read from C(/proc/devices), which the node has (or would have, in
      check mode).
    - With O(state=absent), the major of the node that was removed, or V(null) if there was none.
  returned: always
  type: int
  sample: 240
minor:
  description:
    - With O(state=present), the minor of the node.
    - With O(state=absent), the minor of the node that was removed, or V(null) if there was none.
  returned: always
  type: int
  sample: 0
mode:
  description:
    - With O(state=present), the node's permissions as a four-digit octal string.
    - With O(state=absent), those of the node that was removed, or V(null).
  returned: always
  type: str
  sample: "0644"
owner:
  description:
    - With O(state=present), the user owning the node (a name, or the uid if it has no name).
    - With O(state=absent), the owner of the node that was removed, or V(null).
  returned: always
  type: str
  sample: root
group:
  description:
    - With O(state=present), the group of the node (a name, or the gid if it has no name).
    - With O(state=absent), the group of the node that was removed, or V(null).
  returned: always
  type: str
  sample: root
actions:
  description: What was done (or would be done, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [remove, mknod, chown, chmod]
diff:
  description:
    - The node before and after the run.
    - The C(kind) of RV(diff.before) and RV(diff.after) is V(absent) when there is no node.
  returned: always
  type: dict
  contains:
    before:
      description: What was at RV(path) before the run.
      returned: always
      type: dict
      sample: {"path": "/dev/chardev", "kind": "char device", "major": 241, "minor": 0, "mode": "0644",
               "owner": "root", "group": "root"}
    after:
      description: What is at RV(path) after the run (or would be, in check mode).
      returned: always
      type: dict
      sample: {"path": "/dev/chardev", "kind": "char device", "major": 240, "minor": 0, "mode": "0644",
               "owner": "root", "group": "root"}
  sample:
    before: {"path": "/dev/chardev", "kind": "absent"}
    after: {"path": "/dev/chardev", "kind": "char device", "major": 240, "minor": 0, "mode": "0644",
            "owner": "root", "group": "root"}
"""

# Ansible wants DOCUMENTATION, EXAMPLES and RETURN before the imports (ansible-test's
# "import-before-documentation"), hence E402 on each import.
import dataclasses
import grp
import os
import pwd
import stat
from collections.abc import Callable
from typing import Any, Protocol

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    ProcDevices,
    ProcDevicesError,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    parse_proc_devices as proc_devices,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import PROC_DEVICES
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

MAX_MAJOR = (1 << 12) - 1  # Linux dev_t: 12-bit major, 20-bit minor
MAX_MINOR = (1 << 20) - 1

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "path": {"type": "path", "default": "/dev/chardev"},
    "name": {"type": "str", "default": "chardev"},
    "minor": {"type": "int", "default": 0},
    "mode": {"type": "raw", "default": "0644"},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
}


class ChardevNodeError(Exception):
    """A condition the module reports with fail_json."""


class StatLike(Protocol):
    """The parts of os.stat_result the module uses (tests pass simple objects)."""

    @property
    def st_mode(self) -> int: ...

    @property
    def st_rdev(self) -> int: ...

    @property
    def st_uid(self) -> int: ...

    @property
    def st_gid(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class Node:
    """What is at the path. kind is "absent", "char device" or another file type."""

    kind: str
    major: int | None = None
    minor: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclasses.dataclass(frozen=True)
class Wanted:
    """The node that state=present asks for."""

    major: int
    minor: int
    mode: int
    uid: int
    gid: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """Steps to take, in this order: remove, mknod, chown, chmod."""

    remove: bool = False
    mknod: bool = False
    chown: bool = False
    chmod: bool = False

    @property
    def actions(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]

    @property
    def changed(self) -> bool:
        return bool(self.actions)


# ---------------------------------------------------------------- pure functions


def parse_proc_devices(text: str) -> ProcDevices:
    """Parse /proc/devices (module_utils/chardev_proc.py); a line it cannot read is a ChardevNodeError."""
    try:
        return proc_devices(text)
    except ProcDevicesError as exc:
        raise ChardevNodeError(str(exc)) from None


def find_char_major(devices: ProcDevices, name: str) -> int:
    """The major registered as a character device under name; block devices are ignored."""
    majors = sorted(set(devices.char_majors(name)))
    if not majors:
        raise ChardevNodeError(f"{name} is not registered in {PROC_DEVICES}: load the module first")
    if len(majors) > 1:
        listed = ", ".join(str(m) for m in majors)
        raise ChardevNodeError(
            f"{name} is registered with several majors in {PROC_DEVICES} ({listed}): cannot choose one"
        )
    return majors[0]


def parse_mode(value: object) -> int:
    """An octal string ("0644", "644") or an int already holding the mode (420 from unquoted YAML 0644)."""
    if isinstance(value, bool):
        raise ChardevNodeError(f"mode must be an octal string such as '0644', got {value!r}")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and value.strip() and all(c in "01234567" for c in value.strip()):
        mode = int(value.strip(), 8)
    else:
        raise ChardevNodeError(f"mode must be an octal string such as '0644', got {value!r}")
    if not 0 <= mode <= 0o7777:
        raise ChardevNodeError(f"mode must be between 0000 and 7777 (octal), got {value!r}")
    return mode


def format_mode(mode: int | None) -> str | None:
    return None if mode is None else f"{mode:04o}"


def describe_kind(st_mode: int) -> str:
    for test, kind in (
        (stat.S_ISCHR, "char device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(st_mode):
            return kind
    return "unknown file type"


def node_from_stat(st: StatLike | None) -> Node:
    """Turn an lstat() result (None when nothing is there) into a Node."""
    if st is None:
        return Node(kind="absent")
    kind = describe_kind(st.st_mode)
    if kind != "char device":
        return Node(kind=kind)
    return Node(
        kind=kind,
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
    )


def char_drivers(devices: ProcDevices, major: int | None) -> list[str]:
    """The drivers that registered a character major in /proc/devices (several share some: 4 is
    /dev/vc/0, tty and ttyS), in file order."""
    return [entry for number, entry in devices.char if number == major]


def refuse_foreign_node(path: str, node: Node, devices: ProcDevices, name: str) -> None:
    """Fail unless the character device at path may be replaced or removed: its major is name's own, or
    no driver's (a stale node of an earlier load). Any other node belongs to a driver the lab does not
    own: a chardev_device of /dev/null would otherwise be removed and made again as chardev's node."""
    if node.kind != "char device":
        return
    owners = char_drivers(devices, node.major)
    if not owners or name in owners:
        return
    raise ChardevNodeError(
        f"{path} is the character device {node.major}:{node.minor} of driver {', '.join(owners)} "
        f"(major {node.major} in {PROC_DEVICES}), not of {name}: refusing to replace or remove it. "
        f"Give the node a path of its own (the chardev role's chardev_device, for example /dev/{name})."
    )


def refuse_message(path: str, node: Node) -> str:
    return (
        f"{path} exists and is a {node.kind}, not a character device: refusing to replace or remove it. "
        "Move it away by hand if it is not needed."
    )


def plan_present(path: str, node: Node, wanted: Wanted) -> Plan:
    """Decide how to reach the wanted node from what is there."""
    if node.kind == "absent":
        return Plan(mknod=True, chown=True, chmod=True)
    if node.kind != "char device":
        raise ChardevNodeError(refuse_message(path, node))
    if (node.major, node.minor) != (wanted.major, wanted.minor):
        # A stale node from an earlier load of the module: the major changes with each load.
        return Plan(remove=True, mknod=True, chown=True, chmod=True)
    return Plan(
        chown=(node.uid, node.gid) != (wanted.uid, wanted.gid),
        chmod=node.mode != wanted.mode,
    )


def plan_absent(path: str, node: Node) -> Plan:
    if node.kind == "absent":
        return Plan()
    if node.kind != "char device":
        raise ChardevNodeError(refuse_message(path, node))
    return Plan(remove=True)


def node_after(node: Node, plan: Plan, wanted: Wanted | None) -> Node:
    """What the path holds once the plan has run."""
    if wanted is None:
        return Node(kind="absent") if plan.remove else node
    return Node(
        kind="char device",
        major=wanted.major,
        minor=wanted.minor,
        mode=wanted.mode,
        uid=wanted.uid,
        gid=wanted.gid,
    )


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe_node(
    path: str,
    node: Node,
    uid_to_name: Callable[[int], str] = user_name,
    gid_to_name: Callable[[int], str] = group_name,
) -> dict[str, Any]:
    """A node as a dict for diff and return values."""
    result: dict[str, Any] = {"path": path, "kind": node.kind}
    if node.kind == "char device":
        result.update(
            major=node.major,
            minor=node.minor,
            mode=format_mode(node.mode),
            owner=None if node.uid is None else uid_to_name(node.uid),
            group=None if node.gid is None else gid_to_name(node.gid),
        )
    return result


def resolve_uid(owner: str) -> int:
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ChardevNodeError(f"owner {owner!r} does not exist on this host") from None


def resolve_gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ChardevNodeError(f"group {group!r} does not exist on this host") from None


# ---------------------------------------------------------------- I/O (replaced in tests)


def read_proc_devices(system: System) -> str:
    try:
        with open(system.path(PROC_DEVICES), encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ChardevNodeError(
            f"cannot read {PROC_DEVICES} ({exc.strerror or exc}): it tells the driver of each major, "
            "without which no node is made, replaced or removed; run on a Linux host with /proc mounted"
        ) from exc


def lstat_node(path: str) -> StatLike | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def make_char_node(path: str, mode: int, major: int, minor: int) -> None:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))


def remove_node(path: str) -> None:
    os.unlink(path)


def apply_plan(path: str, plan: Plan, wanted: Wanted | None) -> None:
    if plan.remove:
        remove_node(path)
    if wanted is None:
        return
    if plan.mknod:
        make_char_node(path, wanted.mode, wanted.major, wanted.minor)
    if plan.chown:  # before chmod: chown may clear set-id bits
        os.chown(path, wanted.uid, wanted.gid, follow_symlinks=False)
    if plan.chmod:  # mknod's mode is filtered by the umask, so always set it
        os.chmod(path, wanted.mode)


# ---------------------------------------------------------------- module glue


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """Everything main() does, without AnsibleModule: returns the result dict or raises ChardevNodeError."""
    path: str = params["path"]
    if not os.path.isabs(path):
        raise ChardevNodeError(f"path must be absolute, got {path!r}")
    minor: int = params["minor"]
    if not 0 <= minor <= MAX_MINOR:
        raise ChardevNodeError(f"minor must be between 0 and {MAX_MINOR}, got {minor}")

    wanted: Wanted | None = None
    devices: ProcDevices | None = None
    if params["state"] == "present":
        mode = parse_mode(params["mode"])
        uid = resolve_uid(params["owner"])
        gid = resolve_gid(params["group"])
        devices = parse_proc_devices(read_proc_devices(system))
        major = find_char_major(devices, params["name"])
        if not 0 < major <= MAX_MAJOR:
            raise ChardevNodeError(f"major {major} read from {PROC_DEVICES} is out of range")
        wanted = Wanted(major=major, minor=minor, mode=mode, uid=uid, gid=gid)

    node = node_from_stat(lstat_node(path))
    plan = plan_present(path, node, wanted) if wanted is not None else plan_absent(path, node)
    if plan.remove:
        if devices is None:
            devices = parse_proc_devices(read_proc_devices(system))
        refuse_foreign_node(path, node, devices, params["name"])
    after = node_after(node, plan, wanted)

    if plan.changed and not check_mode:
        try:
            apply_plan(path, plan, wanted)
        except OSError as exc:
            raise ChardevNodeError(f"could not {' + '.join(plan.actions)} {path}: {exc}") from exc

    before_dict = describe_node(path, node)
    after_dict = describe_node(path, after)
    # For state=absent, report the node that was (or would be) removed.
    reported = after_dict if wanted is not None else before_dict
    return {
        "changed": plan.changed,
        "path": path,
        "state": params["state"],
        "major": reported.get("major"),
        "minor": reported.get("minor"),
        "mode": reported.get("mode"),
        "owner": reported.get("owner"),
        "group": reported.get("group"),
        "actions": plan.actions,
        "diff": {"before": before_dict, "after": after_dict},
    }


class NodeModule(AnsibleModule):
    """AnsibleModule without the automatic file facts.

    AnsibleModule.add_path_info() adds a stat of any returned `path` to the result: it overwrites `state`
    (with "file") and `mode`, `owner` and `group` (with the values on disk, even in check mode) and adds
    uid, gid and size. This module reports those keys itself, so it keeps its own.
    """

    def add_path_info(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs


def make_module() -> AnsibleModule:
    return NodeModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)


def main(system: System | None = None) -> None:
    module = make_module()
    try:
        result = run(module.params, module.check_mode, System(module) if system is None else system)
    except ChardevNodeError as exc:
        module.fail_json(msg=str(exc), path=module.params["path"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
