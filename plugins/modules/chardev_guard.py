#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide on the target whether the lab may change it: never the control node's kernel, a container or a
chroot only when the inventory allows it and never for the crash variant, and never a host whose
inventory name is not a safe path component on the control node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_guard
short_description: Refuse the control node, containers, chroots and unsafe host names before a change
description:
  - Reads, on the target, the facts that tell which kernel a task runs on and how it is isolated, and
    fails with a message citing them when the lab must not change the host (build or load the chardev
    teaching module, install packages, reboot, manage accounts).
  - The control node is recognised by its kernel, not by names that can disagree. The boot id
    (C(/proc/sys/kernel/random/boot_id)) is drawn at each boot and is the same in every namespace,
    chroot and container of one kernel, so a target whose boot id equals O(controller_boot_id) runs
    on the control node's kernel, whatever the connection. A target sharing a machine id
    (C(/etc/machine-id) or C(/var/lib/dbus/machine-id)) with the control node is refused too, and so is
    every connection that runs tasks on the control node by construction (C(local), C(chroot),
    C(community.docker.nsenter)), even when no boot id can be read. None of this can be allowed by
    any option.
  - Containers are detected as C(systemd-detect-virt --container) does it (OpenVZ's C(/proc/vz)
    without C(/proc/bc), C(Microsoft) or C(WSL) in the kernel release, a proot tracer,
    C(/run/host/container-manager), C(/run/systemd/container), C(container=) in the environment of
    pid 1, C(/run/.containerenv), C(/.dockerenv)), and also from the cgroup of pid 1 (docker, kubepods,
    lxc, libpod, crio, containerd), a user namespace other than the initial one
    (C(/proc/self/uid_map)), C(container=) in the module's own environment and a container
    connection (docker, podman, lxc, lxd, incus, kubectl, ...).
  - A chroot is detected as systemd's C(running_in_chroot) does it, by comparing the device and inode
    of C(/proc/1/root) (the root of pid 1) with those of C(/).
  - A container or chroot shares the kernel of the machine it runs on. It is refused unless
    O(allow_container) is true, and always when O(crash) is true.
  - The host's inventory name (O(inventory_hostname)) becomes a file or directory name on the control
    node (its results, its VM directory, its account record). It is refused unless it is one safe path
    component - 1 to 63 letters, digits, C(.), C(_) and C(-), not starting with C(.) or C(-), without
    C(..) - whatever the other options say.
  - Facts that cannot be read fail safe. An unreadable boot id (the target's or the control node's)
    is refused whatever the options; evidence of containment that cannot be read (C(/proc/1/environ)
    or C(/proc/1/root) without root privileges) counts as a possible container.
  - Reads files only and changes nothing.
version_added: "1.0.0"
author:
  - chardev-lab contributors (@chardev-lab)
options:
  inventory_hostname:
    description:
      - The host's name in the inventory (C(inventory_hostname)), checked as a path component.
    type: str
    required: true
  connection:
    description:
      - The connection plugin that reaches the target (C(ansible_connection)), short or fully
        qualified name.
    type: str
    required: true
  controller_boot_id:
    description:
      - The control node's boot id, read on the control node
        (C(lookup('file', '/proc/sys/kernel/random/boot_id'))).
      - An empty value (the control node's file could not be read) makes the module refuse.
    type: str
    required: true
  controller_machine_ids:
    description:
      - The control node's machine ids (C(/etc/machine-id) and C(/var/lib/dbus/machine-id), read on the
        control node). Empty and malformed entries are ignored.
    type: list
    elements: str
    default: []
  allow_container:
    description:
      - Allow a container or a chroot on a host other than the control node (the module would be loaded
        into that host's kernel). Never allows the control node, and never the crash variant.
    type: bool
    default: false
  crash:
    description:
      - The crash variant is wanted (it oopses the kernel). A container or a chroot is then refused
        whatever O(allow_container) says.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; it runs and decides the same way in check mode.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - "Reading C(/proc/1/environ) and C(/proc/1/root) needs root; without it the target counts as a
    possible container (use C(become: true))."
seealso:
  - name: systemd-detect-virt(1)
    description: The container and chroot detection this module follows.
    link: https://www.freedesktop.org/software/systemd/man/latest/systemd-detect-virt.html
"""

EXAMPLES = r"""
- name: Refuse the control node, a container, a chroot or an unsafe host name
  chardev_lab.lab.chardev_guard:
    inventory_hostname: "{{ inventory_hostname }}"
    connection: "{{ ansible_connection | default('ssh') }}"
    # Lookups run on the control node: these are the control node's own files.
    controller_boot_id: "{{ lookup('file', '/proc/sys/kernel/random/boot_id', errors='ignore') }}"
    controller_machine_ids:
      - "{{ lookup('file', '/etc/machine-id', errors='ignore') }}"
      - "{{ lookup('file', '/var/lib/dbus/machine-id', errors='ignore') }}"
    allow_container: "{{ chardev_allow_container }}"
    crash: "{{ chardev_variant == 'crash' }}"
  register: __chardev_guard

- name: Only read the evidence (the module fails when it refuses; here the result is inspected)
  chardev_lab.lab.chardev_guard:
    inventory_hostname: pc-01.classroom.example.org
    connection: ssh
    controller_boot_id: 23074dcb-6d6b-48ce-a44f-4de67ee446e7
  register: __guard
  ignore_errors: true
"""

RETURN = r"""
allowed:
  description: Whether the module may be loaded on the target (the module fails when it is not).
  returned: always
  type: bool
  sample: true
refusals:
  description: Why the target is refused, one entry per reason; empty when it is allowed.
  returned: always
  type: list
  elements: dict
  contains:
    reason:
      description: V(control_node), V(container), V(chroot), V(host_name) or V(unknown).
      returned: always
      type: str
      sample: control_node
    detected:
      description: What was found, in words.
      returned: always
      type: str
      sample: the control node's own kernel
    evidence:
      description: The facts it was found from.
      returned: always
      type: str
      sample: boot id 23074dcb-6d6b-48ce-a44f-4de67ee446e7 on both the target and the control node
    remedy:
      description: What to do about it.
      returned: always
      type: str
      sample: Nothing allows loading the module into the control node's kernel.
  sample: []
inventory_hostname:
  description: The host name as given.
  returned: always
  type: str
  sample: pc-01.classroom.example.org
connection:
  description: The connection as given.
  returned: always
  type: str
  sample: ssh
connection_kind:
  description:
    - V(controller) for connections that run on the control node (local, chroot, nsenter), V(container)
      for container connections, V(remote) for the others.
  returned: always
  type: str
  sample: remote
boot_id:
  description: The target's boot id, or V(null) when it could not be read.
  returned: always
  type: str
  sample: 9b2f6c1e-3f0a-4c55-9d1e-0a8e2f3b7c41
controller_boot_id:
  description: The control node's boot id as given, or V(null) when it was empty or malformed.
  returned: always
  type: str
  sample: 23074dcb-6d6b-48ce-a44f-4de67ee446e7
machine_ids:
  description: The target's machine ids by file; V(null) for a file that is missing, empty or unreadable.
  returned: always
  type: dict
  sample: {"/etc/machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4", "/var/lib/dbus/machine-id": null}
controller_machine_ids:
  description: The control node's machine ids that were compared (well-formed ones only).
  returned: always
  type: list
  elements: str
  sample: ["0f5e7d0c1b2a49e8a3c6d4b2e1f09876"]
container:
  description:
    - What the container detection found. RV(container.detected) is V(null) when nothing was found but
      some evidence could not be read.
  returned: always
  type: dict
  contains:
    detected:
      description: Whether the target is a container.
      returned: always
      type: bool
      sample: false
    evidence:
      description: Each finding, with the runtime it names and where it was read.
      returned: always
      type: list
      elements: dict
      sample: [{"runtime": "docker", "source": "/.dockerenv exists"}]
  sample: {"detected": false, "evidence": []}
chroot:
  description: Whether the target runs in a chroot (V(null) when it could not be told), and why.
  returned: always
  type: dict
  contains:
    detected:
      description: Whether the root of pid 1 differs from C(/).
      returned: always
      type: bool
      sample: false
    evidence:
      description: The comparison, in words.
      returned: always
      type: str
      sample: /proc/1/root and / are the same directory (device 65024, inode 2)
  sample: {"detected": false, "evidence": "/proc/1/root and / are the same directory (device 65024, inode 2)"}
unreadable:
  description:
    - Files that could not be read and why (missing files that only matter when present are left out).
  returned: always
  type: list
  elements: str
  sample: ["/proc/1/environ: permission denied"]
kernel_release:
  description: The running kernel's release (C(/proc/sys/kernel/osrelease)).
  returned: always
  type: str
  sample: 6.1.0-56-amd64
ansible_facts:
  description: C(kernel), the running kernel's release, as C(setup) reports it (the role builds for it).
  returned: when the host is allowed and its kernel release could be read
  type: dict
  sample: {"kernel": "6.1.0-56-amd64"}
"""

# Ansible wants DOCUMENTATION, EXAMPLES and RETURN before the imports (ansible-test's
# "import-before-documentation"), hence E402 on each import.
import dataclasses
import errno
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import path_component_problem
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "inventory_hostname": {"type": "str", "required": True},
    "connection": {"type": "str", "required": True},
    "controller_boot_id": {"type": "str", "required": True},
    "controller_machine_ids": {"type": "list", "elements": "str", "default": []},
    "allow_container": {"type": "bool", "default": False},
    "crash": {"type": "bool", "default": False},
}

BOOT_ID = "/proc/sys/kernel/random/boot_id"
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
OSRELEASE = "/proc/sys/kernel/osrelease"

# Connections that run tasks on the control node's own kernel, whatever the target's files say.
CONTROLLER_CONNECTIONS = frozenset({"local", "chroot", "nsenter"})
# Connections into a container (short names of ansible.builtin and the collections' plugins).
CONTAINER_CONNECTIONS = frozenset(
    {
        "buildah",
        "docker",
        "docker_api",
        "incus",
        "iocage",
        "jail",
        "kubectl",
        "libvirt_lxc",
        "lxc",
        "lxd",
        "oc",
        "podman",
        "wsl",
        "zone",
    }
)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Path components of pid 1's cgroup that container runtimes create (cgroup v1, or v2 without cgroupns).
CGROUP_RUNTIMES = (
    ("docker", "docker"),
    ("kubepods", "kubernetes"),
    ("lxc", "lxc"),
    ("libpod", "podman"),
    ("crio", "cri-o"),
    ("containerd", "containerd"),
)
IDENTITY_UID_MAP = ["0", "0", "4294967295"]

FLEET_ADVICE = "Run the lab on the local VM fleet instead (make lab): each VM has a kernel of its own."
NEVER = "Nothing allows loading the module into the control node's kernel."


# ---------------------------------------------------------------- reading files under a root


@dataclasses.dataclass(frozen=True)
class Reading:
    """One file read on the target: its text, or why there is none."""

    path: str
    text: str | None
    error: str | None = None

    @property
    def missing(self) -> bool:
        return self.error == "missing"

    def describe_error(self) -> str:
        return f"{self.path}: {self.error}"


def error_text(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))


def read_file(system: System, path: str) -> Reading:
    try:
        data = Path(system.path(path)).read_bytes()
    except OSError as exc:
        return Reading(path, None, error_text(exc))
    return Reading(path, data.decode("utf-8", errors="replace"))


def first_line(reading: Reading) -> str:
    lines = (reading.text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def normalise_boot_id(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    return value if UUID_RE.match(value) else None


def normalise_machine_id(value: str | None) -> str | None:
    """A machine id as systemd writes it; "uninitialized", empty or malformed ids count as none."""
    value = (value or "").strip().lower()
    return value if MACHINE_ID_RE.match(value) else None


# ---------------------------------------------------------------- container and chroot detection


@dataclasses.dataclass(frozen=True)
class Evidence:
    """A finding: the container runtime it names (or "chroot") and where it was read."""

    runtime: str
    source: str

    def as_dict(self) -> dict[str, str]:
        return {"runtime": self.runtime, "source": self.source}


@dataclasses.dataclass(frozen=True)
class Findings:
    """What one or more detectors found, and what they could not read."""

    evidence: tuple[Evidence, ...] = ()
    unreadable: tuple[Reading, ...] = ()

    def __add__(self, other: Findings) -> Findings:
        return Findings(self.evidence + other.evidence, self.unreadable + other.unreadable)


def manager_name(text: str) -> str:
    """The runtime a manager file or container= value names; an empty one is a container all the same."""
    return text.strip() or "unknown runtime"


def detect_openvz(system: System) -> Findings:
    """systemd: /proc/vz exists in OpenVZ containers and on OpenVZ hosts; only hosts have /proc/bc."""
    if Path(system.path("/proc/vz")).exists() and not Path(system.path("/proc/bc")).exists():
        return Findings((Evidence("openvz", "/proc/vz exists without /proc/bc"),))
    return Findings()


def detect_wsl(osrelease: Reading) -> Findings:
    """systemd: WSL's kernels say Microsoft (WSL 1) or WSL (WSL 2) in their release."""
    text = osrelease.text or ""
    if "Microsoft" in text or "WSL" in text:
        return Findings((Evidence("wsl", f"{OSRELEASE} is {text.strip()!r}"),))
    return Findings()


def detect_proot(system: System) -> Findings:
    """systemd: the process is traced by proot (its TracerPid's comm starts with "proot")."""
    status = read_file(system, "/proc/self/status")
    if status.text is None:
        return Findings(unreadable=(status,))
    tracer = next(
        (line.split(":", 1)[1].strip() for line in status.text.splitlines() if line.startswith("TracerPid:")),
        "0",
    )
    if tracer in ("", "0"):
        return Findings()
    comm = read_file(system, f"/proc/{tracer}/comm")
    if comm.text is None:
        return Findings(unreadable=(comm,))
    if comm.text.strip().startswith("proot"):
        return Findings((Evidence("proot", f"traced by process {tracer} ({comm.text.strip()})"),))
    return Findings()


def detect_manager_files(system: System) -> Findings:
    """systemd: the container manager's name in /run/host/container-manager or /run/systemd/container
    (written by nspawn, and by systemd as pid 1 of a container from its container= variable)."""
    found: list[Evidence] = []
    unreadable: list[Reading] = []
    for path in ("/run/host/container-manager", "/run/systemd/container"):
        reading = read_file(system, path)
        if reading.text is not None:
            found.append(Evidence(manager_name(first_line(reading)), f"{path} exists"))
        elif not reading.missing:
            unreadable.append(reading)
    return Findings(tuple(found), tuple(unreadable))


def detect_pid1_environ(system: System) -> Findings:
    """systemd: container=NAME in the environment of pid 1 (needs root to read)."""
    reading = read_file(system, "/proc/1/environ")
    if reading.text is None:
        return Findings(unreadable=(reading,))
    for entry in reading.text.split("\0"):
        if entry.startswith("container="):
            value = entry.split("=", 1)[1]
            if value.strip():
                return Findings((Evidence(manager_name(value), f"{entry} in /proc/1/environ"),))
    return Findings()


def detect_container_files(system: System) -> Findings:
    """systemd: /run/.containerenv (podman) and /.dockerenv (docker)."""
    found = []
    for path, runtime in (("/run/.containerenv", "podman"), ("/.dockerenv", "docker")):
        if Path(system.path(path)).exists():
            found.append(Evidence(runtime, f"{path} exists"))
    return Findings(tuple(found))


def detect_cgroup(system: System) -> Findings:
    """Not in systemd (Ansible's facts use it): a runtime's directory in pid 1's cgroup path."""
    reading = read_file(system, "/proc/1/cgroup")
    if reading.text is None:
        return Findings() if reading.missing else Findings(unreadable=(reading,))
    found: dict[str, Evidence] = {}
    for line in reading.text.splitlines():
        path = line.split(":", 2)[-1]
        for part in path.split("/"):
            for prefix, runtime in CGROUP_RUNTIMES:
                if part.startswith(prefix) and runtime not in found:
                    found[runtime] = Evidence(runtime, f"cgroup {path} of pid 1 (/proc/1/cgroup)")
    return Findings(tuple(found.values()))


def detect_user_namespace(system: System) -> Findings:
    """Not in systemd: outside the initial user namespace the uid map is not the identity of all uids
    (rootless podman, unprivileged LXC). Such a process could not load a module anyway."""
    reading = read_file(system, "/proc/self/uid_map")
    if reading.text is None:
        # No uid_map: a kernel without user namespaces.
        return Findings() if reading.missing else Findings(unreadable=(reading,))
    lines = [line.split() for line in reading.text.splitlines() if line.strip()]
    if lines == [IDENTITY_UID_MAP]:
        return Findings()
    shown = "; ".join(" ".join(line) for line in lines) or "empty"
    return Findings((Evidence("user namespace", f"/proc/self/uid_map is {shown!r}, not '0 0 4294967295'"),))


def detect_environment(environ: Mapping[str, str]) -> Findings:
    """container=NAME in the module's own environment (podman and LXC set it for processes they start)."""
    value = environ.get("container", "")
    if value.strip():
        return Findings((Evidence(manager_name(value), f"container={value} in the module's environment"),))
    return Findings()


def detect_container(system: System, osrelease: Reading, environ: Mapping[str, str]) -> Findings:
    """Every container detector, systemd's first and in its order."""
    return (
        detect_openvz(system)
        + detect_wsl(osrelease)
        + detect_proot(system)
        + detect_manager_files(system)
        + detect_pid1_environ(system)
        + detect_container_files(system)
        + detect_cgroup(system)
        + detect_user_namespace(system)
        + detect_environment(environ)
    )


@dataclasses.dataclass(frozen=True)
class Chroot:
    detected: bool | None
    evidence: str
    unreadable: tuple[Reading, ...] = ()


def detect_chroot(system: System) -> Chroot:
    """systemd's running_in_chroot(): the root directory of pid 1 is not ours (stat follows the
    /proc/1/root link, which needs root privileges)."""
    try:
        pid1_root = os.stat(Path(system.path("/proc/1/root")))
    except OSError as exc:
        reading = Reading("/proc/1/root", None, error_text(exc))
        return Chroot(None, f"/proc/1/root could not be read ({reading.error})", (reading,))
    ours = os.stat(system.root)
    pid1 = (pid1_root.st_dev, pid1_root.st_ino)
    mine = (ours.st_dev, ours.st_ino)
    if pid1 == mine:
        return Chroot(False, f"/proc/1/root and / are the same directory (device {mine[0]}, inode {mine[1]})")
    return Chroot(
        True,
        f"/proc/1/root is device {pid1[0]} inode {pid1[1]}, / is device {mine[0]} inode {mine[1]}",
    )


# ---------------------------------------------------------------- the target's facts


@dataclasses.dataclass(frozen=True)
class TargetFacts:
    boot_id: Reading
    machine_ids: tuple[Reading, ...]
    osrelease: Reading
    container: Findings
    chroot: Chroot

    @property
    def unreadable(self) -> tuple[Reading, ...]:
        """Files that could not be read and matter: the boot id, the kernel release, the detectors'."""
        readings = [r for r in (self.boot_id, self.osrelease) if r.text is None]
        readings += [r for r in self.machine_ids if r.text is None and not r.missing]
        return tuple(readings) + self.container.unreadable + self.chroot.unreadable


def read_target_facts(system: System, environ: Mapping[str, str]) -> TargetFacts:
    osrelease = read_file(system, OSRELEASE)
    return TargetFacts(
        boot_id=read_file(system, BOOT_ID),
        machine_ids=tuple(read_file(system, path) for path in MACHINE_ID_FILES),
        osrelease=osrelease,
        container=detect_container(system, osrelease, environ),
        chroot=detect_chroot(system),
    )


# ---------------------------------------------------------------- the decision


@dataclasses.dataclass(frozen=True)
class Controller:
    """The control node's facts, read on the control node."""

    boot_id: str | None
    machine_ids: tuple[str, ...]

    @classmethod
    def from_params(cls, boot_id: str | None, machine_ids: Iterable[str | None]) -> Controller:
        ids = [normalise_machine_id(value) for value in machine_ids]
        return cls(normalise_boot_id(boot_id), tuple(sorted({i for i in ids if i})))


@dataclasses.dataclass(frozen=True)
class Refusal:
    reason: str  # control_node, container, chroot, host_name, unknown
    detected: str
    evidence: str
    remedy: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Decision:
    refusals: tuple[Refusal, ...]
    warnings: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return not self.refusals


def connection_kind(connection: str) -> str:
    """controller, container or remote, from the plugin's short name (community.general.chroot: chroot)."""
    short = connection.strip().lower().rsplit(".", 1)[-1]
    if short in CONTROLLER_CONNECTIONS:
        return "controller"
    if short in CONTAINER_CONNECTIONS:
        return "container"
    return "remote"


def control_node_refusals(facts: TargetFacts, controller: Controller, connection: str) -> list[Refusal]:
    """The target is (or may be) the control node's kernel. Nothing allows these."""
    refusals: list[Refusal] = []
    if connection_kind(connection) == "controller":
        refusals.append(
            Refusal(
                "control_node",
                "a connection that runs on the control node",
                f"ansible_connection is {connection}",
                NEVER,
            )
        )
    target_boot_id = normalise_boot_id(facts.boot_id.text)
    if target_boot_id is None:
        why = facts.boot_id.error or f"not a boot id: {(facts.boot_id.text or '').strip()!r}"
        refusals.append(
            Refusal(
                "unknown",
                "a kernel that could not be told apart from the control node's",
                f"the target's {BOOT_ID} could not be read ({why})",
                "Mount /proc on the target (a chroot or container without it is refused).",
            )
        )
    if controller.boot_id is None:
        refusals.append(
            Refusal(
                "unknown",
                "a kernel that could not be told apart from the control node's",
                f"the control node's {BOOT_ID} could not be read (the controller_boot_id given is empty"
                " or malformed)",
                "Run Ansible from a Linux control node whose /proc is mounted.",
            )
        )
    same_kernel = target_boot_id is not None and target_boot_id == controller.boot_id
    if same_kernel:
        refusals.append(
            Refusal(
                "control_node",
                "the control node's own kernel",
                f"boot id {target_boot_id} on both the target and the control node; a boot id belongs to"
                " a kernel and is the same in all its chroots, containers and namespaces",
                NEVER,
            )
        )
    shared = sorted(
        f"{reading.path} {value}"
        for reading in facts.machine_ids
        if (value := normalise_machine_id(reading.text)) is not None and value in controller.machine_ids
    )
    if shared:
        refusals.append(
            Refusal(
                "control_node",
                "the control node or a copy of its system",
                f"machine id shared with the control node: {', '.join(shared)}",
                NEVER
                if same_kernel
                else "A machine cloned from the control node's disk needs a machine id of its own "
                "(rm /etc/machine-id && systemd-machine-id-setup, then reboot).",
            )
        )
    return refusals


def containment_refusals(
    facts: TargetFacts, connection: str, allow_container: bool, crash: bool
) -> tuple[list[Refusal], list[str]]:
    """A container or chroot shares the kernel of the machine it runs on; so may one we cannot rule out."""
    refusals: list[Refusal] = []
    warnings: list[str] = []
    found = list(facts.container.evidence)
    if connection_kind(connection) == "container":
        found.append(Evidence(connection.rsplit(".", 1)[-1], f"ansible_connection is {connection}"))
    if facts.chroot.detected:
        found.append(Evidence("chroot", facts.chroot.evidence))
    unknown = facts.container.unreadable + facts.chroot.unreadable

    if crash:
        remedy = "The crash variant is never run in a container or chroot."
    else:
        remedy = (
            "If you accept loading a teaching module into the kernel of the machine that runs it, set"
            " chardev_allow_container: true for this host in the inventory (never honoured for the crash"
            " variant)."
        )
    allowed = allow_container and not crash

    if found:
        runtimes = ", ".join(dict.fromkeys(e.runtime for e in found))
        sources = "; ".join(e.source for e in found)
        reason = "chroot" if all(e.runtime == "chroot" for e in found) else "container"
        detected = f"a {reason} ({runtimes}), which shares the kernel of the machine it runs on"
        if allowed:
            warnings.append(f"{detected}, allowed by chardev_allow_container: {sources}")
        else:
            refusals.append(Refusal(reason, detected, sources, remedy))
    if unknown:
        what = "; ".join(reading.describe_error() for reading in unknown)
        detected = "a host that may be a container or chroot"
        if allowed:
            warnings.append(f"{detected} (could not read {what}), allowed by chardev_allow_container")
        else:
            refusals.append(
                Refusal(
                    "unknown",
                    detected,
                    f"could not read {what}",
                    "The guard reads them as root (become: true; a root without CAP_SYS_PTRACE cannot). "
                    + remedy,
                )
            )
    return refusals, warnings


def host_name_refusals(inventory_hostname: str) -> list[Refusal]:
    """The host's name becomes a path on the control node (<lab_state_dir>/results/<host>.json, ...): a
    name such as ../../x would write outside. Nothing allows it."""
    problem = path_component_problem(inventory_hostname)
    if problem is None:
        return []
    return [
        Refusal(
            "host_name",
            "a host name that is not a safe file name on the control node",
            f"inventory_hostname {inventory_hostname!r}: {problem}",
            "Rename the host in the inventory (1 to 63 letters, digits, '.', '_' and '-', not starting with"
            " '.' or '-', no '..'), and give its address as ansible_host.",
        )
    ]


def decide(
    facts: TargetFacts,
    controller: Controller,
    connection: str,
    allow_container: bool,
    crash: bool,
    inventory_hostname: str,
) -> Decision:
    refusals = host_name_refusals(inventory_hostname) + control_node_refusals(facts, controller, connection)
    more, warnings = containment_refusals(facts, connection, allow_container, crash)
    return Decision(tuple(refusals + more), tuple(warnings))


def failure_message(decision: Decision, crash: bool) -> str:
    """What was detected, from which evidence, and what to do. When the host is the control node, the
    remedies for containers (which could not help) are left out."""
    what = "the crash variant of the chardev module" if crash else "the chardev lab"
    found = "; ".join(f"{r.detected} ({r.evidence})" for r in decision.refusals)
    control_node = [r for r in decision.refusals if r.reason == "control_node"]
    # A bad host name must be fixed whatever the host is: its remedy shows with the control node's.
    if control_node:
        control_node += [r for r in decision.refusals if r.reason == "host_name"]
    remedies = " ".join(dict.fromkeys(r.remedy for r in control_node or decision.refusals))
    return (
        f"The chardev guard refuses this host for {what}. Detected: {found}. {remedies}"
        f" Nothing was changed on the host. {FLEET_ADVICE}"
    )


# ---------------------------------------------------------------- module glue


def run(
    params: Mapping[str, Any],
    check_mode: bool,
    system: System,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Read the target's facts (the system) and decide. check_mode changes nothing: the module only reads.
    The result's "warnings" are containment that allow_container allowed (main() passes them to warn())."""
    del check_mode  # read-only: the same in check mode
    facts = read_target_facts(system, os.environ if environ is None else environ)
    controller = Controller.from_params(params["controller_boot_id"], params["controller_machine_ids"] or [])
    connection = params["connection"]
    decision = decide(
        facts,
        controller,
        connection,
        bool(params["allow_container"]),
        bool(params["crash"]),
        params["inventory_hostname"],
    )
    kernel_release = first_line(facts.osrelease) or None
    container_detected: bool | None = bool(facts.container.evidence) or (
        None if facts.container.unreadable else False
    )
    result: dict[str, Any] = {
        "changed": False,
        "allowed": decision.allowed,
        "refusals": [refusal.as_dict() for refusal in decision.refusals],
        "warnings": list(decision.warnings),
        "inventory_hostname": params["inventory_hostname"],
        "connection": connection,
        "connection_kind": connection_kind(connection),
        "boot_id": normalise_boot_id(facts.boot_id.text),
        "controller_boot_id": controller.boot_id,
        "machine_ids": {reading.path: normalise_machine_id(reading.text) for reading in facts.machine_ids},
        "controller_machine_ids": list(controller.machine_ids),
        "container": {
            "detected": container_detected,
            "evidence": [evidence.as_dict() for evidence in facts.container.evidence],
        },
        "chroot": {"detected": facts.chroot.detected, "evidence": facts.chroot.evidence},
        "unreadable": [reading.describe_error() for reading in facts.unreadable],
        "kernel_release": kernel_release,
    }
    if not decision.allowed:
        result["msg"] = failure_message(decision, bool(params["crash"]))
    elif kernel_release:
        result["ansible_facts"] = {"kernel": kernel_release}
    return result


def make_module() -> AnsibleModule:
    return AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)


def main(system: System | None = None) -> None:
    module = make_module()
    result = run(module.params, module.check_mode, System(module) if system is None else system)
    for warning in result.pop("warnings"):
        module.warn(warning)
    if not result["allowed"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
