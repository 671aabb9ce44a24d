#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start, stop, reset or remove one local QEMU lab VM."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_vm_instance
short_description: Manage one local QEMU VM of the chardev-lab fleet
description:
  - Runs one VM as a daemonized C(qemu-system-x86_64) process booting a cached image's kernel
    directly, on a qcow2 overlay of the read-only base disk, with SSH forwarded on 127.0.0.1 (or
    O(ssh_address)) and its serial console logged to a file. By default the guest can open no
    connection except to its package mirrors (O(isolated)).
  - The VM's SSH host key (generated once, kept across resets) and the fleet's public key reach the
    guest through QEMU C(fw_cfg), so the host key is known before the first boot and host-key
    checking stays on.
  - C(started) waits until the guest's SSH server answers with its banner; a VM that does not boot
    in O(boot_timeout) seconds is stopped and the tail of its console log is shown.
  - A VM whose QEMU process died behind the fleet's back is noticed (its PID file no longer names a
    running QEMU of this VM) and started again.
  - QEMU runs with its seccomp sandbox (C(-sandbox on,obsolete=deny,resourcecontrol=deny)) and with
    C(no_new_privs) set, so that nothing it runs can gain privileges. When the module runs as root and
    O(qemu_user) is set, QEMU opens its files (disks, kernel, PID file, console log, monitor socket) as
    root and then drops to that user (C(-runas)) before the guest runs; the mirror relays it starts run as
    that user too. The VM directory stays root's (mode 0700); the account needs no file of its own.
  - A QEMU of this VM is recognized by its own command line (the C(-drive) of this VM's overlay), in
    its PID file or anywhere in C(/proc), and only such a process is ever signalled; a PID file whose
    PID now belongs to another program is only removed. Stopping is SIGTERM, then SIGKILL after
    O(stop_timeout) seconds; the PID file stays until the process is gone.
  - O(name) must be one safe path component and O(vm_dir) a directory directly inside
    O(state_dir)C(/vms) (symbolic links resolved); V(absent) never follows a symbolic link or crosses a
    mount point.
version_added: "1.0.0"
author:
  - chardev-lab contributors (@chardev-lab)
options:
  name:
    description:
      - Name of the VM (its hostname and the name of its directory). One path component of letters,
        digits, C(.), C(_) and C(-), starting with a letter or digit, at most 63 characters.
    type: str
    required: true
  state:
    description:
      - V(started) boots the VM if it is not running. V(stopped) stops QEMU and keeps the overlay.
      - V(absent) stops it and removes its directory. V(reset) stops it and boots it again on a
        fresh overlay, the state of a new VM (always changes).
    type: str
    choices: [started, stopped, absent, reset]
    default: started
  vm_dir:
    description:
      - Directory of this VM (overlay, PID file, console log, host key). Refused unless it is directly
        inside O(state_dir)C(/vms) once symbolic links are resolved, and is not itself a symbolic link.
    type: path
    required: true
  state_dir:
    description:
      - The fleet's directory. Every VM directory lives in its C(vms) subdirectory; nothing outside it
        is ever created or removed.
    type: path
    required: true
  disk:
    description: Read-only base disk image (raw). Required for V(started) and V(reset).
    type: path
  kernel:
    description: Kernel to boot directly. Required for V(started) and V(reset).
    type: path
  initrd:
    description: Initial ramdisk. Required for V(started) and V(reset).
    type: path
  authorized_key:
    description: Public key (file) that may log in as root. Required for V(started) and V(reset).
    type: path
  ssh_port:
    description: Port on O(ssh_address) forwarded to the guest's port 22.
    type: int
    required: true
  ssh_address:
    description:
      - Address of the control node on which QEMU listens for the forwarded SSH port.
      - The default keeps the VM reachable from this machine only. V(0.0.0.0) or a classroom-network
        address lets students connect from their own computers; anyone who can reach that address can
        then try to log in (password logins are refused, keys only).
    type: str
    default: 127.0.0.1
  isolated:
    description:
      - Cut the guest off from everything but its package mirrors. QEMU's user network runs with
        C(restrict=on), which drops every connection the guest opens (to the control node's loopback
        services through 10.0.2.2, to other VMs' SSH ports, to the internet, DNS); the hosts of the
        image's apt sources are reached through one C(guestfwd) relay each (O(relay), run by QEMU for
        every connection, to that fixed host and port only) and named in the guest's C(/etc/hosts).
      - Incoming SSH (O(ssh_port)) is not affected.
    type: bool
    default: true
  relay:
    description: The relay program QEMU runs for each connection to a mirror. Required when O(isolated).
    type: path
  memory:
    description: Guest memory in MiB.
    type: int
    default: 1024
  cpus:
    description: Number of virtual CPUs.
    type: int
    default: 1
  accel:
    description: QEMU accelerator. Use M(chardev_lab.lab.lab_vm_accel) to find out whether KVM really works.
    type: str
    choices: [kvm, tcg]
    default: tcg
  boot_timeout:
    description: Seconds to wait for the guest's SSH banner.
    type: int
    default: 240
  qemu:
    description: QEMU binary (a name looked up on the PATH, or a path).
    type: str
    default: qemu-system-x86_64
  qemu_user:
    description:
      - Unprivileged account QEMU runs as (C(-runas)) when the module runs as root. The account must
        exist; it needs no home and no shell. It must be able to read O(relay) when O(isolated).
      - One account per VM. An account that a QEMU of another VM runs as (or drops to) is refused, since
        the guest of either, escaped, could then signal or trace the other's QEMU.
      - Empty, V(root) or the account the module already runs as; QEMU then runs as that account, without
        C(-runas) (as root, that is unsandboxed root next to a guest whose kernel is crashed on purpose).
    type: str
    default: ""
  min_free_mb:
    description:
      - Free space (MiB) the VM directory's filesystem must have before an overlay is created or QEMU
        started. The overlay grows with what the guest writes (packages, kernel headers, builds); a
        guest whose disk cannot grow is paused by QEMU and never answers SSH.
    type: int
    default: 1024
  stop_timeout:
    description: Seconds QEMU gets to exit after SIGTERM before SIGKILL.
    type: int
    default: 10
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - RV(actions) lists what would be started, stopped, created or removed; nothing is touched, and
        RV(state) and RV(pid) describe the VM as it is.
  diff_mode:
    support: none
  platform:
    platforms: linux
requirements:
  - qemu-system-x86 (with seccomp support, as Debian and Ubuntu build it), qemu-utils (qemu-img),
    openssh-client (ssh-keygen), e2fsprogs (debugfs) on the control node; Linux 5.3 or later (pidfd).
"""

EXAMPLES = r"""
- name: Boot lab-vm-1 with SSH on 127.0.0.1:2201
  chardev_lab.lab.lab_vm_instance:
    name: lab-vm-1
    vm_dir: /srv/lab/.lab/vms/lab-vm-1
    state_dir: /srv/lab/.lab
    qemu_user: chardev-lab
    disk: "{{ image.disk }}"
    kernel: "{{ image.kernel }}"
    initrd: "{{ image.initrd }}"
    authorized_key: /srv/lab/.lab/id_ed25519.pub
    ssh_port: 2201

- name: Give lab-vm-1 a fresh disk (after a crash)
  chardev_lab.lab.lab_vm_instance:
    name: lab-vm-1
    state: reset
    vm_dir: /srv/lab/.lab/vms/lab-vm-1
    state_dir: /srv/lab/.lab
    qemu_user: chardev-lab
    disk: "{{ image.disk }}"
    kernel: "{{ image.kernel }}"
    initrd: "{{ image.initrd }}"
    authorized_key: /srv/lab/.lab/id_ed25519.pub
    ssh_port: 2201
"""

RETURN = r"""
state:
  description: State of the VM after the task.
  returned: always
  type: str
  sample: running
pid:
  description: PID of the QEMU process, 0 when not running.
  returned: always
  type: int
  sample: 41234
host_key:
  description: The VM's SSH host public key (C(ssh-ed25519 AAAA...)), empty when the VM is absent.
  returned: always
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx... lab-vm-1
console_log:
  description: File that receives the VM's serial console.
  returned: always
  type: str
  sample: /srv/lab/.lab/vms/lab-vm-1/console.log
boot_seconds:
  description: Seconds from starting QEMU to the SSH banner (0 when the VM was not started).
  returned: always
  type: float
  sample: 27.9
qemu_user:
  description: Account the VM's QEMU runs as (empty when the VM is not running).
  returned: always
  type: str
  sample: chardev-lab
actions:
  description: What the task did, in order.
  returned: always
  type: list
  elements: str
  sample: [created overlay, started qemu]
"""

import contextlib
import ctypes
import errno
import io
import itertools
import json
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_net import (
    as_address,
    own_addresses,
    resolve,
    this_machine,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import ModuleFailure, System, execute

OVERLAY = "overlay.qcow2"
PIDFILE = "qemu.pid"
CONSOLE = "console.log"
#: QEMU's QMP monitor (lab_vm_rewind takes and restores the rewind point through it): a Unix socket in
#: the VM's directory, mode 0600, never a TCP port.
QMP_SOCKET = "qmp.sock"
#: Bumped when the QEMU command line changes in a way a running VM must be restarted for.
MACHINE_VERSION = 2
CONFIG = "vm.json"
HOST_KEY = "ssh_host_ed25519_key"
VMS = "vms"
# Where an isolated guest finds its package mirrors: one address per mirror, inside QEMU's user network
# (10.0.2.0/24; .2 is the host, .3 DNS, .15 the guest) and outside its DHCP range (.15-.30).
RELAY_FIRST_IP = 100
# The guest's name for the control node (QEMU's user network): the image's apt sources name it for a
# mirror on the control node's loopback (lab_vm_image rewrites 127.0.0.1 and localhost to it).
GUEST_HOST_ALIAS = "10.0.2.2"
# The guest's apt sources, as mmdebstrap writes them (one-line or deb822 format).
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources")
_APT_URL_RE = re.compile(r"\b(https?)://([A-Za-z0-9.-]+)(?::(\d+))?(?=[/\s]|$)")
# A VM's name is its hostname and the name of its directory: one safe path component.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# QEMU's seccomp filter, installed before QEMU opens anything. What each setting allows and why
# (checked with QEMU 7.2, Debian 12):
# - obsolete=deny, resourcecontrol=deny: nothing here needs old syscalls, CPU affinity or priorities.
# - elevateprivileges=allow: the filter is installed before -daemonize (setsid) and before -runas
#   (setgid, setgroups, setuid) run, and both die of SIGSYS under "deny" or "children". After -runas
#   QEMU has no way back to root (real, effective and saved IDs are the user's, no capabilities), and
#   no_new_privs, set by the module before QEMU starts, stops any program it runs from gaining any.
# - spawn=allow: -daemonize forks after the filter is in place, and an isolated VM's network runs the
#   mirror relay (fork + exec) for each connection the guest opens to a mirror: under "deny" QEMU dies
#   at -daemonize, and apt inside the VM would have no way out.
SANDBOX = "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny"
PR_SET_NO_NEW_PRIVS = 38
MIB = 1024 * 1024
# How long QEMU may take to daemonize (it opens its files and sets up the machine first).
START_TIMEOUT = 120
# How long a SIGKILLed QEMU may take to disappear (it releases its guest memory).
KILL_TIMEOUT = 5.0


class VmError(Exception):
    pass


class Forward(NamedTuple):
    """One way out of an isolated VM: the guest's guest_ip:port reaches host:port on the outside."""

    guest_ip: str
    host: str
    port: int


def advice(exc: OSError) -> str:
    """What to do about an OS error, by its errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that filesystem (df -h shows it), then run again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "check the owner and mode of that path and of its directories (ls -ld)"
    if exc.errno == errno.EROFS:
        return "that filesystem is mounted read-only: remount it read-write or move the fleet elsewhere"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return "check that the path exists and is what it should be (a file or a directory)"
    return "check that path, then run again"


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Turn an OSError into a VmError that says what was being done, on which path, and what to do."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise VmError(f"could not {what}{where}: {exc.strerror or exc}; {advice(exc)}") from exc


def check_name(name: str) -> None:
    if not NAME_RE.match(name) or name in (".", ".."):
        raise VmError(
            f"invalid VM name {name!r}: a VM's name becomes its hostname and its directory, so it must be "
            "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (no '/', no '..'); "
            "rename the host in the inventory"
        )


def checked_vm_dir(name: str, vm_dir: str, state_dir: str) -> str:
    """The VM directory, symbolic links resolved, once it is proven to be a direct child of
    <state_dir>/vms. Everything the module creates, signals or removes is found through it."""
    check_name(name)
    vms = os.path.realpath(os.path.join(state_dir, VMS))
    real = os.path.realpath(vm_dir)
    if os.path.dirname(real) != vms or not NAME_RE.match(os.path.basename(real)):
        raise VmError(
            f"vm_dir {vm_dir} (that is {real}) is not a directory directly inside the fleet's {vms}: "
            "refused, nothing outside the fleet is created or removed; set vm_dir to "
            f"{os.path.join(vms, name)}"
        )
    if os.path.islink(vm_dir):
        raise VmError(f"vm_dir {vm_dir} is a symbolic link (to {real}): refused; remove the link")
    return real


def apt_endpoints(sources_text: str) -> list[tuple[str, int]]:
    """The (host, port) pairs apt connects to, in order of first appearance, from the apt sources."""
    found: list[tuple[str, int]] = []
    for line in sources_text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for scheme, host, port in _APT_URL_RE.findall(line):
            endpoint = (host.lower(), int(port) if port else (443 if scheme == "https" else 80))
            if endpoint not in found:
                found.append(endpoint)
    return found


def relay_forwards(endpoints: Sequence[tuple[str, int]]) -> list[Forward]:
    """One guest address per mirror host (several ports of one host share it)."""
    ips: dict[str, str] = {}
    for host, _port in endpoints:
        ips.setdefault(host, f"10.0.2.{RELAY_FIRST_IP + len(ips)}")
    return [Forward(ips[host], host, port) for host, port in endpoints]


def guest_network_files(name: str, forwards: Sequence[Forward], isolated: bool) -> dict[str, str]:
    """/etc/hosts and /etc/resolv.conf for the guest. An isolated guest has no DNS (restrict=on drops
    it): its mirrors are names in /etc/hosts, and resolv.conf names no server, so that any other lookup
    fails at once instead of timing out."""
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {name}"]
    hosts += sorted({f"{fwd.guest_ip} {fwd.host}" for fwd in forwards})
    resolv = (
        "# chardev-lab: this VM is isolated; its package mirrors are in /etc/hosts, no DNS.\n"
        if isolated
        else "nameserver 10.0.2.3\n"
    )
    return {"etc/hosts": "\n".join(hosts) + "\n", "etc/resolv.conf": resolv}


def qemu_value(value: str) -> str:
    """A value inside a QEMU option list: a comma would end it, so QEMU wants it doubled."""
    return value.replace(",", ",,")


def netdev_option(p: dict[str, Any], forwards: Sequence[Forward]) -> str:
    """QEMU's user-mode network for a lab VM: SSH forwarded on ssh_address only, and, when the VM is
    isolated, nothing else in or out but one relay per package mirror (restrict=on drops every other
    connection the guest opens: to the control node's loopback, through 10.0.2.2, to other VMs' SSH
    ports, to the internet, and DNS)."""
    parts = ["user", "id=net0", f"hostfwd=tcp:{p['ssh_address']}:{p['ssh_port']}-:22"]
    if p["isolated"]:
        parts.append("restrict=on")
        for fwd in forwards:
            command = shlex.join(["python3", "-I", "-S", p["relay"], fwd.host, str(fwd.port)])
            parts.append(f"guestfwd=tcp:{fwd.guest_ip}:{fwd.port}-cmd:{command}")
    return ",".join(qemu_value(part) for part in parts)


def drive_option(vm_dir: str) -> str:
    # cache=unsafe: the overlay is disposable (a reset replaces it), so the guest's flushes need not
    # reach the host's disk; package installs inside the VM are much faster without them.
    return f"file={qemu_value(os.path.join(vm_dir, OVERLAY))},if=virtio,format=qcow2,cache=unsafe"


def qemu_command(
    p: dict[str, Any], vm_dir: str, seed: str, forwards: Sequence[Forward] = (), run_as: str = ""
) -> list[str]:
    """The QEMU command line of a lab VM. Keep it deterministic: it is compared between runs.

    Values inside QEMU option lists (-name, -drive, -netdev, -fw_cfg) go through qemu_value(); the
    others (-kernel, -initrd, -append, -serial file:, -pidfile, -runas) are taken whole by QEMU, and
    doubling a comma there would name another file."""
    return [
        p["qemu"],
        "-name",
        qemu_value(p["name"]),
        "-machine",
        f"q35,accel={p['accel']}",
        "-cpu",
        "host" if p["accel"] == "kvm" else "max",
        "-m",
        str(p["memory"]),
        "-smp",
        str(p["cpus"]),
        "-kernel",
        p["kernel"],
        "-initrd",
        p["initrd"],
        # panic=0 on purpose: a panic must stay on screen for the student, not reboot the VM.
        # systemd's 90 s start and device timeouts are raised: TCG guests booting while others run can
        # take minutes, and a unit that times out (udev's ttyS0, networkd) leaves a VM without SSH.
        "-append",
        "root=/dev/vda rw console=ttyS0 quiet "
        "systemd.default_timeout_start_sec=900 systemd.default_device_timeout_sec=900",
        "-drive",
        drive_option(vm_dir),
        "-netdev",
        netdev_option(p, forwards),
        "-device",
        "virtio-net-pci,netdev=net0",
        "-fw_cfg",
        f"name=opt/chardev-lab/seed,file={qemu_value(seed)}",
        "-display",
        "none",
        "-monitor",
        "none",
        "-qmp",
        f"unix:{qemu_value(os.path.join(vm_dir, QMP_SOCKET))},server=on,wait=off",
        "-serial",
        f"file:{os.path.join(vm_dir, CONSOLE)}",
        "-pidfile",
        os.path.join(vm_dir, PIDFILE),
        "-sandbox",
        SANDBOX,
        *(["-runas", run_as] if run_as else []),
        "-daemonize",
    ]


def read_pid(vm_dir: str) -> int:
    try:
        with open(os.path.join(vm_dir, PIDFILE), encoding="ascii") as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def cmdline(pid: int, proc: str = "/proc") -> list[bytes]:
    """A process's arguments; [] when it is gone or a zombie."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as handle:
            data = handle.read()
    except OSError:
        return []
    return data.split(b"\0")[:-1] if data.endswith(b"\0") else data.split(b"\0") if data else []


def is_vm_qemu(argv: Sequence[bytes], vm_dir: str) -> bool:
    """Whether a command line is a QEMU of this VM: the program is QEMU and one of its -drive options
    is this VM's overlay. A program that only names the disk (a backup, a qemu-img) is not one."""
    if not argv or not os.path.basename(argv[0]).startswith(b"qemu"):
        return False
    drive = f"file={qemu_value(os.path.join(vm_dir, OVERLAY))},".encode()
    return any(opt == b"-drive" and arg.startswith(drive) for opt, arg in itertools.pairwise(argv))


def qemus_of_other_vms(user: pwd.struct_passwd, vm_dir: str, proc: str = "/proc") -> list[int]:
    """QEMUs that run as user, or were started to drop to it (-runas), other than this VM's own: a QEMU
    account shared by two VMs would let one's escaped guest signal or ptrace the other's QEMU."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(proc):
            argv = cmdline(int(entry), proc) if entry.isdigit() else []
            if not argv or not os.path.basename(argv[0]).startswith(b"qemu") or is_vm_qemu(argv, vm_dir):
                continue
            runas = [arg for opt, arg in itertools.pairwise(argv) if opt == b"-runas"]
            try:
                uid = os.stat(os.path.join(proc, entry)).st_uid
            except OSError:
                continue
            if uid == user.pw_uid or user.pw_name.encode() in runas:
                found.append(int(entry))
    return sorted(found)


def running_pid(vm_dir: str, proc: str = "/proc") -> int:
    """PID of this VM's QEMU, or 0. A stale PID file (QEMU killed, PID reused) counts as not running."""
    pid = read_pid(vm_dir)
    return pid if pid > 0 and is_vm_qemu(cmdline(pid, proc), vm_dir) else 0


def vm_pids(vm_dir: str, proc: str = "/proc") -> list[int]:
    """Every QEMU of this VM: the one in its PID file and any other running on its overlay (started by
    hand, or left behind when its PID file was lost)."""
    pids = {running_pid(vm_dir, proc)} - {0}
    with contextlib.suppress(OSError):
        for entry in os.listdir(proc):
            if (
                entry.isdigit()
                and int(entry) != os.getpid()
                and is_vm_qemu(cmdline(int(entry), proc), vm_dir)
            ):
                pids.add(int(entry))
    return sorted(pids)


def send_signal(pid: int, sig: int, vm_dir: str) -> bool:
    """Signal pid if, and only if, it is a QEMU of this VM. The pidfd pins the process while its command
    line is checked: a PID reused in between is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not is_vm_qemu(cmdline(pid), vm_dir):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def exited(pidfd: int) -> bool:
    """Whether the process of a pidfd has exited: its files (the overlay, the SSH port) are closed by
    then, even if it is not yet reaped."""
    return bool(select.select([pidfd], [], [], 0)[0])


def stop_processes(pids: Sequence[int], vm_dir: str, grace: float = 10.0) -> list[int]:
    """Stop this VM's QEMUs: SIGTERM (QEMU exits at once; the guest sees a power cut), SIGKILL to those
    still there after grace seconds. Returns the PIDs that survived both (a process stuck in the
    kernel, state D): the caller keeps their PID file."""
    pidfds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
            if is_vm_qemu(cmdline(pid), vm_dir):
                pidfds[pid] = pidfd
            else:
                os.close(pidfd)
    try:

        def alive() -> list[int]:
            return [pid for pid, pidfd in pidfds.items() if not exited(pidfd)]

        for pid in alive():
            send_signal(pid, signal.SIGTERM, vm_dir)
        if not wait_for(lambda: not alive(), grace, 0.1):
            for pid in alive():
                send_signal(pid, signal.SIGKILL, vm_dir)
            wait_for(lambda: not alive(), KILL_TIMEOUT, 0.1)
        return alive()
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def no_new_privs() -> None:
    """Run in the child before QEMU is executed: nothing QEMU runs (the mirror relays, or a setuid
    program if QEMU were taken over) can ever gain privileges. Setting it needs no privilege, and it
    does not stop -runas from dropping them."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def free_mib(path: str) -> int:
    """Free space (MiB) for an unprivileged writer on the filesystem of path or of its nearest parent."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // MIB


def connect_address(address: str) -> str:
    """Where the control node reaches a port QEMU listens on (0.0.0.0 is every address, so loopback)."""
    return "127.0.0.1" if address == "0.0.0.0" else address


def port_free(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def ssh_banner(port: int, timeout: float = 3.0, address: str = "127.0.0.1") -> bool:
    """True when an SSH server answers on the port. QEMU accepts the TCP connection before the guest
    listens, so only the banner proves that sshd is up."""
    try:
        with socket.create_connection((connect_address(address), port), timeout=timeout) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 1.0,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not alive():
            return False
        time.sleep(interval)
    return predicate()


def console_tail(vm_dir: str, lines: int = 25) -> str:
    try:
        with open(os.path.join(vm_dir, CONSOLE), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return "(no console output)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no console output)"


def seed_tar(
    name: str,
    host_key: str,
    host_key_pub: str,
    authorized_key: str,
    network_files: dict[str, str] | None = None,
) -> bytes:
    """The files the guest's chardev-lab-seed service unpacks into / at every boot."""
    members = [
        ("etc/hostname", f"{name}\n".encode(), 0o644),
        *((path, text.encode(), 0o644) for path, text in sorted((network_files or {}).items())),
        ("etc/ssh/ssh_host_ed25519_key", host_key.encode(), 0o600),
        ("etc/ssh/ssh_host_ed25519_key.pub", host_key_pub.encode(), 0o644),
        ("root/.ssh/authorized_keys", authorized_key.encode(), 0o600),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data, mode in members:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def read_image_files(disk: str, paths: Sequence[str]) -> str:
    """The text of files inside an ext4 disk image, read with debugfs (no mount, no root needed).
    A missing file contributes nothing."""
    texts = []
    for path in paths:
        proc = subprocess.run(
            ["debugfs", "-R", f"cat {path}", disk], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            texts.append(proc.stdout)
    return "\n".join(texts)


def write_file(path: str, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def remove_tree(path: str) -> None:
    """Remove a VM directory without following a symbolic link out of it or crossing into another
    filesystem mounted inside it (shutil.rmtree removes links, not what they point to)."""
    if os.path.islink(path) or os.path.ismount(path):
        raise VmError(f"{path} is a symbolic link or a mount point: not removed; remove it by hand")
    for top, dirs, _files in os.walk(path):
        for name in dirs:
            sub = os.path.join(top, name)
            if os.path.ismount(sub):
                raise VmError(
                    f"{sub} is a mount point inside the VM directory: nothing removed; unmount it "
                    "(umount), then run again"
                )
    with doing(f"remove the VM directory {path}"):
        shutil.rmtree(path)


def user_can_read(user: pwd.struct_passwd, path: str) -> bool:
    """Whether an account can read a file: asked as that account (its groups, ACLs and every directory
    on the way count), in a child process."""
    proc = subprocess.run(
        ["python3", "-I", "-S", "-c", "import sys; open(sys.argv[1], 'rb').close()", path],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=os.getgrouplist(user.pw_name, user.pw_gid),
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


class Vm:
    """What run() does to one VM (an internal helper: its methods are the steps)."""

    def __init__(self, params: dict[str, Any], check_mode: bool, system: System):
        self.check_mode = check_mode
        self.system = system
        self.p = params
        self.dir = self.p["vm_dir"]
        self.actions: list[str] = []
        self.boot_seconds = 0.0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def banner(self) -> bool:
        return ssh_banner(self.p["ssh_port"], address=self.p["ssh_address"])

    def run_as(self) -> str:
        """The account for -runas: qemu_user when the module runs as root, else none (QEMU then runs
        as whoever runs the module)."""
        user = self.p["qemu_user"]
        me = pwd.getpwuid(os.geteuid()).pw_name
        if not user or user in ("root", me):
            return ""
        if os.geteuid() != 0:
            raise VmError(
                f"qemu_user {user}: only root can start QEMU as another account, and this runs as {me}; "
                "leave qemu_user empty (QEMU then runs as you) or run as root"
            )
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            raise VmError(
                f"qemu_user {user} does not exist: create it (the lab_vm role does when it runs as root: "
                f"useradd --system --no-create-home --shell /usr/sbin/nologin {user})"
            ) from None
        others = qemus_of_other_vms(account, self.dir)
        if others:
            raise VmError(
                f"qemu_user {user} is the account of another VM's QEMU already (pid "
                f"{', '.join(map(str, others))}: ps -o user,cmd -p {others[0]}): each VM's QEMU needs an "
                "account of its own, or an escaped guest could signal or trace the other VM's QEMU. Give "
                f"{self.p['name']} its own qemu_user (the lab_vm role makes one per VM)"
            )
        return user

    def check_relay(self, user: str) -> None:
        """The relays run as the QEMU account: an unreadable relay would only show as apt failing inside
        the VM, so say it now."""
        if user and self.p["isolated"] and not user_can_read(pwd.getpwnam(user), self.p["relay"]):
            raise VmError(
                f"the mirror relay {self.p['relay']} cannot be read by {user}, the account QEMU runs as "
                "(a directory on the way is private, such as /root): put it where every user can read "
                "it (the lab_vm role installs it in /usr/local/libexec/chardev-lab)"
            )

    def check_free_space(self, why: str) -> None:
        free, need = free_mib(self.dir), self.p["min_free_mb"]
        if free < need:
            raise VmError(
                f"not enough free space to {why}: the filesystem of {self.dir} has {free} MiB free, a VM "
                f"needs at least {need} MiB (its overlay grows with everything the guest writes, and a "
                "guest whose disk cannot grow is paused by QEMU and never answers SSH). Free some space "
                "there (df -h; make down removes the fleet's VMs, the image cache stays), or lower "
                "lab_vm_min_free_mb if the lab needs less"
            )

    def forwards(self) -> list[Forward]:
        """The isolated VM's ways out: its image's package mirrors, read from the base disk."""
        if not self.p["isolated"]:
            return []
        endpoints = apt_endpoints(read_image_files(self.p["disk"], APT_SOURCES))
        if not endpoints:
            raise VmError(
                f"no package mirror found in the apt sources of {self.p['disk']}: an isolated VM could "
                "not reach any; rebuild the image, or set lab_vm_isolated: false"
            )
        own = own_addresses(self.system.read_text)
        for host, port in endpoints:
            why = self.local_destination(host, port, own)
            if why:
                raise VmError(
                    f"the image's apt sources point at the control node itself ({host}: {why}), which "
                    "an isolated VM must not reach: its relay would lead the guest to this machine's own "
                    "services. Use a mirror or proxy on another machine (by name or address), or set "
                    "lab_vm_isolated: false"
                )
        return relay_forwards(endpoints)

    @staticmethod
    def local_destination(host: str, port: int, own: frozenset[Any]) -> str:
        """Why a relay to host:port would reach the control node, or "": by every address host
        resolves to (a spelling such as 127.0.1.1, 0.0.0.0 or a name of this machine would pass a
        comparison of names), and 10.0.2.2, the guest's own name for the host."""
        if host == GUEST_HOST_ALIAS:
            return "the guest's name for the control node (an apt proxy on its loopback)"
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise VmError(
                f"the mirror host {host} of the image's apt sources does not resolve on the control node "
                f"({exc.strerror or exc}): its relay could not reach it, and an address that cannot be "
                f"checked is not let through. Check the control node's DNS (getent hosts {host}) and run "
                "again, or set lab_vm_isolated: false"
            ) from None
        for text in addresses:
            why = this_machine(as_address(text), own)
            if why:
                return f"it resolves to {text}, {why}" if text != host else why
        return ""

    def host_key_pub(self) -> str:
        try:
            return read_text(self.path(HOST_KEY + ".pub")).strip()
        except OSError:
            return ""

    def ensure_host_key(self) -> None:
        if os.path.exists(self.path(HOST_KEY)):
            return
        self.actions.append("generated host key")
        if self.check_mode:
            return
        with doing(f"create the VM directory {self.dir}"):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.p["name"], "-f", self.path(HOST_KEY)]
        rc, _out, err = self.system.run(cmd)
        if rc != 0:
            raise VmError(
                f"ssh-keygen could not make the host key {self.path(HOST_KEY)} (rc={rc}): {err.strip()}"
            )

    def wanted_config(self) -> dict[str, Any]:
        keys = (
            "disk",
            "kernel",
            "initrd",
            "ssh_port",
            "ssh_address",
            "isolated",
            "memory",
            "cpus",
            "accel",
            "qemu",
            "qemu_user",
        )
        return {**{k: self.p[k] for k in keys}, "machine_version": MACHINE_VERSION}

    def saved_config(self) -> dict[str, Any]:
        try:
            return json.loads(read_text(self.path(CONFIG)))
        except (OSError, ValueError):
            return {}

    def stop_if_running(self) -> None:
        """Stop every QEMU of this VM; the PID file goes only once none is left."""
        pids = vm_pids(self.dir)
        if pids:
            self.actions.append("stopped qemu")
            if self.check_mode:
                return
            left = stop_processes(pids, self.dir, self.p["stop_timeout"])
            if left:
                raise VmError(
                    f"QEMU of {self.p['name']} (pid {', '.join(map(str, left))}) is still running after "
                    f"SIGTERM and SIGKILL; its PID file {self.path(PIDFILE)} is kept. See what it waits "
                    f"on (ps -o pid,stat,wchan,cmd -p {left[0]}: state D is a process stuck in the kernel, "
                    "on a disk or NFS), then run again"
                )
        if not self.check_mode and os.path.lexists(self.path(PIDFILE)):
            with doing("remove the stale PID file"):
                os.unlink(self.path(PIDFILE))

    def overlay_exists(self) -> bool:
        """Whether the overlay is there, not counting one that check mode only pretended to remove."""
        return "removed overlay" not in self.actions and os.path.exists(self.path(OVERLAY))

    def remove_overlay(self) -> None:
        if self.overlay_exists():
            self.actions.append("removed overlay")
            if not self.check_mode:
                with doing("remove the overlay"):
                    os.unlink(self.path(OVERLAY))

    def start(self) -> None:
        for opt in ("disk", "kernel", "initrd", "authorized_key"):
            if not self.p[opt]:
                raise VmError(f"{opt} is required to start a VM")
            if not os.path.exists(self.p[opt]):
                raise VmError(f"{opt} {self.p[opt]} does not exist")
        if self.saved_config().get("disk") not in (None, self.p["disk"]) and self.overlay_exists():
            # The overlay records its backing file; a new base image needs a new overlay.
            self.actions.append("base image changed")
            self.remove_overlay()
        if not self.overlay_exists():
            self.actions.append("created overlay")
        self.actions.append("started qemu")
        if self.check_mode:
            return
        if not port_free(self.p["ssh_port"], self.p["ssh_address"]):
            raise VmError(
                f"port {self.p['ssh_address']}:{self.p['ssh_port']} is already in use by another program: "
                "give "
                f"{self.p['name']} another ansible_port in the inventory, or stop what holds it "
                f"(ss -ltnp 'sport = :{self.p['ssh_port']}')"
            )
        qemu = self.system.which(self.p["qemu"])
        if not qemu:
            raise VmError(
                f"{self.p['qemu']} is not installed: run 'make host-deps' (package qemu-system-x86)"
            )
        run_as = self.run_as()
        with doing(f"create the VM directory {self.dir}"):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            # Root's alone, whatever made it: no VM's QEMU account may open another VM's files (nor its
            # own: QEMU opens them as root before -runas, and writes only through those descriptors).
            os.chmod(self.dir, 0o700)
        self.check_free_space("start the VM")
        if not os.path.exists(self.path(OVERLAY)):
            cmd = [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                self.p["disk"],
                self.path(OVERLAY),
            ]
            rc, _out, err = self.system.run(cmd)
            if rc != 0:
                raise VmError(
                    f"qemu-img could not create the overlay {self.path(OVERLAY)} (rc={rc}): {err.strip()}"
                )
        forwards = self.forwards()
        self.check_relay(run_as)
        seed = self.path("seed.tar")
        with doing("read the authorized key"):
            authorized_key = read_text(self.p["authorized_key"])
        with doing("write the VM's seed (host key, authorized key, network files)"):
            write_file(
                seed,
                seed_tar(
                    self.p["name"],
                    read_text(self.path(HOST_KEY)),
                    self.host_key_pub() + "\n",
                    authorized_key,
                    guest_network_files(self.p["name"], forwards, self.p["isolated"]),
                ),
            )
        with doing("write the VM's console log and configuration"):
            # A fresh console log per boot: its tail is what explains a failed boot.
            write_file(self.path(CONSOLE), b"", 0o644)
            write_file(self.path(CONFIG), json.dumps(self.wanted_config()).encode(), 0o644)
        command = qemu_command({**self.p, "qemu": qemu}, self.dir, seed, forwards, run_as)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                preexec_fn=no_new_privs,
                timeout=START_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            self.stop_if_running()
            raise VmError(
                f"QEMU did not finish starting {self.p['name']} in {START_TIMEOUT} s (it opens the disks "
                "and sets up the machine before it daemonizes): stopped; run again, and check the disks "
                f"if it repeats. Last lines of its console ({self.path(CONSOLE)}):\n{console_tail(self.dir)}"
            ) from None
        except OSError as exc:
            raise VmError(f"could not run {qemu}: {exc.strerror or exc}; {advice(exc)}") from exc
        if proc.returncode != 0:
            raise VmError(
                f"QEMU did not start {self.p['name']} (rc={proc.returncode}): "
                f"{proc.stderr.strip() or '(no error output)'}\n"
                f"Command: {shlex.join(command)}\n"
                f"Last lines of its console ({self.path(CONSOLE)}):\n{console_tail(self.dir)}"
            )
        with doing(f"make QEMU's monitor socket {self.path(QMP_SOCKET)} private"):
            # QEMU made it as root before -runas, with the umask's mode: only root may talk to it.
            os.chmod(self.path(QMP_SOCKET), 0o600)
        self.wait_for_ssh(started)

    def wait_for_ssh(self, started: float) -> None:
        if not wait_for(
            self.banner,
            self.p["boot_timeout"],
            1.0,
            alive=lambda: running_pid(self.dir) > 0,
        ):
            why = (
                "QEMU exited"
                if not running_pid(self.dir)
                else f"no SSH banner after {self.p['boot_timeout']} s"
            )
            # Not left running: the next run starts it afresh. stop_if_running() keeps the PID file of a
            # QEMU that will not die and says so.
            self.stop_if_running()
            hint = ""
            free = free_mib(self.dir)
            if free < self.p["min_free_mb"]:
                hint = (
                    f" The filesystem of {self.dir} has only {free} MiB free: QEMU pauses a guest whose "
                    "disk cannot grow; free some space (df -h)."
                )
            raise VmError(
                f"{self.p['name']} did not boot ({why}; accel={self.p['accel']}); QEMU was stopped.{hint} "
                f"Last lines of its console ({self.path(CONSOLE)}):\n{console_tail(self.dir)}"
            )
        self.boot_seconds = round(time.monotonic() - started, 1)

    def apply(self) -> None:
        self.dir = checked_vm_dir(self.p["name"], self.p["vm_dir"], self.p["state_dir"])
        state = self.p["state"]
        if state == "absent":
            self.stop_if_running()
            if os.path.isdir(self.dir):
                self.actions.append("removed vm directory")
                if not self.check_mode:
                    remove_tree(self.dir)
            return
        if state == "stopped":
            self.stop_if_running()
            return
        self.ensure_host_key()
        if state == "reset":
            self.stop_if_running()
            self.remove_overlay()
            self.start()
            return
        # started: restart when the wanted configuration differs from the running one.
        if running_pid(self.dir):
            if self.saved_config() == self.wanted_config():
                # Still booting (an interrupted run started it): wait for SSH like a fresh start would.
                if not self.check_mode and not self.banner():
                    self.wait_for_ssh(time.monotonic())
                return
            self.actions.append("configuration changed")
        # A QEMU of this VM whose PID file was lost would hold the disk and the port: stop it first.
        self.stop_if_running()
        self.start()

    def qemu_user(self, pid: int) -> str:
        try:
            return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name if pid else ""
        except (OSError, KeyError):
            return ""


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {
                "type": "str",
                "default": "started",
                "choices": ["started", "stopped", "absent", "reset"],
            },
            "vm_dir": {"type": "path", "required": True},
            "state_dir": {"type": "path", "required": True},
            "disk": {"type": "path"},
            "kernel": {"type": "path"},
            "initrd": {"type": "path"},
            "authorized_key": {"type": "path"},
            "ssh_port": {"type": "int", "required": True},
            "ssh_address": {"type": "str", "default": "127.0.0.1"},
            "isolated": {"type": "bool", "default": True},
            "relay": {"type": "path"},
            "memory": {"type": "int", "default": 1024},
            "cpus": {"type": "int", "default": 1},
            "accel": {"type": "str", "default": "tcg", "choices": ["kvm", "tcg"]},
            "boot_timeout": {"type": "int", "default": 240},
            "qemu": {"type": "str", "default": "qemu-system-x86_64"},
            "qemu_user": {"type": "str", "default": ""},
            "min_free_mb": {"type": "int", "default": 1024},
            "stop_timeout": {"type": "int", "default": 10},
        },
        required_if=[
            ("state", "started", ("disk", "kernel", "initrd", "authorized_key")),
            ("state", "reset", ("disk", "kernel", "initrd", "authorized_key")),
            ("isolated", True, ("relay",)),
        ],
        supports_check_mode=True,
    )


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """Everything the module does, without AnsibleModule: the result, or ModuleFailure."""
    vm = Vm(params, check_mode, system)
    try:
        vm.apply()
    except VmError as exc:
        raise ModuleFailure(str(exc), actions=vm.actions, console_log=vm.path(CONSOLE)) from None
    except OSError as exc:
        # Anything doing() did not name: still an answer, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        raise ModuleFailure(
            f"{vm.p['name']}: {exc.strerror or exc}{where}; {advice(exc)}",
            actions=vm.actions,
            console_log=vm.path(CONSOLE),
        ) from None
    pid = running_pid(vm.dir)
    return dict(
        changed=bool(vm.actions),
        state="running" if pid else ("absent" if not os.path.isdir(vm.dir) else "stopped"),
        pid=pid,
        qemu_user=vm.qemu_user(pid),
        host_key=vm.host_key_pub(),
        console_log=vm.path(CONSOLE),
        boot_seconds=vm.boot_seconds,
        actions=vm.actions,
    )


def main(system: System | None = None) -> None:
    execute(make_module(), run, system)


if __name__ == "__main__":
    main()
