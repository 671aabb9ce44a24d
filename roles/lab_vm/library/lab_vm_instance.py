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
version_added: "1.0.0"
author: chardev-lab contributors
options:
  name:
    description: Name of the VM (its hostname and the name of its directory).
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
    description: Directory of this VM (overlay, PID file, console log, host key).
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
    description: QEMU accelerator. Use the lab_vm_accel module to find out whether KVM really works.
    type: str
    choices: [kvm, tcg]
    default: tcg
  boot_timeout:
    description: Seconds to wait for the guest's SSH banner.
    type: int
    default: 240
  qemu:
    description: QEMU binary.
    type: str
    default: qemu-system-x86_64
attributes:
  check_mode:
    support: full
    description: Reports what would be started, stopped or removed; touches nothing.
  diff_mode:
    support: none
requirements:
  - qemu-system-x86, qemu-utils (qemu-img), openssh-client (ssh-keygen), e2fsprogs (debugfs) on the
    control node
"""

EXAMPLES = r"""
- name: Boot lab-vm-1 with SSH on 127.0.0.1:2201
  lab_vm_instance:
    name: lab-vm-1
    vm_dir: /srv/lab/.lab/vms/lab-vm-1
    disk: "{{ image.disk }}"
    kernel: "{{ image.kernel }}"
    initrd: "{{ image.initrd }}"
    authorized_key: /srv/lab/.lab/id_ed25519.pub
    ssh_port: 2201

- name: Give lab-vm-1 a fresh disk (after a crash)
  lab_vm_instance:
    name: lab-vm-1
    state: reset
    vm_dir: /srv/lab/.lab/vms/lab-vm-1
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
actions:
  description: What the task did, in order.
  returned: always
  type: list
  elements: str
  sample: [created overlay, started qemu]
"""

import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ansible.module_utils.basic import AnsibleModule

OVERLAY = "overlay.qcow2"
PIDFILE = "qemu.pid"
CONSOLE = "console.log"
CONFIG = "vm.json"
HOST_KEY = "ssh_host_ed25519_key"
# Where an isolated guest finds its package mirrors: one address per mirror, inside QEMU's user network
# (10.0.2.0/24; .2 is the host, .3 DNS, .15 the guest) and outside its DHCP range (.15-.30).
RELAY_FIRST_IP = 100
# The guest's apt sources, as mmdebstrap writes them (one-line or deb822 format).
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources")
_APT_URL_RE = re.compile(r"\b(https?)://([A-Za-z0-9.-]+)(?::(\d+))?(?=[/\s]|$)")


class Forward(NamedTuple):
    """One way out of an isolated VM: the guest's guest_ip:port reaches host:port on the outside."""

    guest_ip: str
    host: str
    port: int


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


def qemu_command(p: dict[str, Any], vm_dir: str, seed: str, forwards: Sequence[Forward] = ()) -> list[str]:
    """The QEMU command line of a lab VM. Keep it deterministic: it is compared between runs."""
    return [
        p["qemu"],
        "-name",
        p["name"],
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
        # cache=unsafe: the overlay is disposable (a reset replaces it), so the guest's flushes need not
        # reach the host's disk; package installs inside the VM are much faster without them.
        "-drive",
        f"file={qemu_value(os.path.join(vm_dir, OVERLAY))},if=virtio,format=qcow2,cache=unsafe",
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
        "-serial",
        f"file:{os.path.join(vm_dir, CONSOLE)}",
        "-pidfile",
        os.path.join(vm_dir, PIDFILE),
        "-daemonize",
    ]


def read_pid(vm_dir: str) -> int:
    try:
        with open(os.path.join(vm_dir, PIDFILE), encoding="ascii") as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def running_pid(vm_dir: str, proc: str = "/proc") -> int:
    """PID of this VM's QEMU, or 0. A stale PID file (QEMU killed, PID reused) counts as not running."""
    pid = read_pid(vm_dir)
    if pid <= 0:
        return 0
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return 0
    overlay = f"file={os.path.join(vm_dir, OVERLAY)},".encode()
    return pid if any(arg.startswith(overlay) for arg in argv) else 0


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


def stop(pid: int, grace: float = 10.0) -> None:
    """Stop QEMU: SIGTERM (QEMU exits at once; the guest sees a power cut), SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_for(lambda: not os.path.exists(f"/proc/{pid}"), grace, 0.2):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, 0.2)


class VmError(Exception):
    pass


class Vm:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.p = module.params
        self.dir = self.p["vm_dir"]
        self.actions: list[str] = []
        self.boot_seconds = 0.0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def banner(self) -> bool:
        return ssh_banner(self.p["ssh_port"], address=self.p["ssh_address"])

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
        local = [host for host, _port in endpoints if host in ("10.0.2.2", "localhost", "127.0.0.1")]
        if local:
            raise VmError(
                "the image's apt sources point at the control node itself (an apt proxy on its "
                "loopback, seen as 10.0.2.2 in the guest), which an isolated VM cannot reach: "
                "use a mirror or proxy by name or non-loopback address, or set lab_vm_isolated: false"
            )
        return relay_forwards(endpoints)

    def host_key_pub(self) -> str:
        try:
            return read_text(self.path(HOST_KEY + ".pub")).strip()
        except OSError:
            return ""

    def ensure_host_key(self) -> None:
        if os.path.exists(self.path(HOST_KEY)):
            return
        self.actions.append("generated host key")
        if self.module.check_mode:
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.p["name"], "-f", self.path(HOST_KEY)],
            check=True,
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
        )
        return {k: self.p[k] for k in keys}

    def saved_config(self) -> dict[str, Any]:
        try:
            return json.loads(read_text(self.path(CONFIG)))
        except (OSError, ValueError):
            return {}

    def stop_if_running(self) -> None:
        pid = running_pid(self.dir)
        if pid:
            self.actions.append("stopped qemu")
            if not self.module.check_mode:
                stop(pid)
        if not self.module.check_mode and os.path.exists(self.path(PIDFILE)):
            os.unlink(self.path(PIDFILE))

    def overlay_exists(self) -> bool:
        """Whether the overlay is there, not counting one that check mode only pretended to remove."""
        return "removed overlay" not in self.actions and os.path.exists(self.path(OVERLAY))

    def remove_overlay(self) -> None:
        if self.overlay_exists():
            self.actions.append("removed overlay")
            if not self.module.check_mode:
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
        if self.module.check_mode:
            return
        if not port_free(self.p["ssh_port"], self.p["ssh_address"]):
            raise VmError(
                f"port {self.p['ssh_address']}:{self.p['ssh_port']} is already in use by another program: "
                "give "
                f"{self.p['name']} another ansible_port in the inventory, or stop what holds it "
                f"(ss -ltnp 'sport = :{self.p['ssh_port']}')"
            )
        qemu = self.module.get_bin_path(self.p["qemu"])
        if not qemu:
            raise VmError(
                f"{self.p['qemu']} is not installed: run 'make host-deps' (package qemu-system-x86)"
            )
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        if not os.path.exists(self.path(OVERLAY)):
            self.module.run_command(
                [
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
                ],
                check_rc=True,
            )
        forwards = self.forwards()
        seed = self.path("seed.tar")
        write_file(
            seed,
            seed_tar(
                self.p["name"],
                read_text(self.path(HOST_KEY)),
                self.host_key_pub() + "\n",
                read_text(self.p["authorized_key"]),
                guest_network_files(self.p["name"], forwards, self.p["isolated"]),
            ),
        )
        # A fresh console log per boot: its tail is what explains a failed boot.
        write_file(self.path(CONSOLE), b"", 0o644)
        with open(self.path(CONFIG), "w", encoding="utf-8") as handle:
            json.dump(self.wanted_config(), handle)
        started = time.monotonic()
        rc, _out, err = self.module.run_command(qemu_command(self.p, self.dir, seed, forwards))
        if rc != 0:
            raise VmError(f"QEMU did not start (rc={rc}): {err.strip()}")
        self.wait_for_ssh(started)

    def wait_for_ssh(self, started: float) -> None:
        if not wait_for(
            lambda: self.banner(),
            self.p["boot_timeout"],
            1.0,
            alive=lambda: running_pid(self.dir) > 0,
        ):
            pid = running_pid(self.dir)
            why = "QEMU exited" if not pid else f"no SSH banner after {self.p['boot_timeout']} s"
            if pid:
                stop(pid)
            raise VmError(
                f"{self.p['name']} did not boot ({why}; accel={self.p['accel']}). "
                f"Last lines of its console ({self.path(CONSOLE)}):\n{console_tail(self.dir)}"
            )
        self.boot_seconds = round(time.monotonic() - started, 1)

    def apply(self) -> None:
        state = self.p["state"]
        if state == "absent":
            self.stop_if_running()
            if os.path.isdir(self.dir):
                self.actions.append("removed vm directory")
                if not self.module.check_mode:
                    shutil.rmtree(self.dir)
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
                if not self.module.check_mode and not self.banner():
                    self.wait_for_ssh(time.monotonic())
                return
            self.actions.append("configuration changed")
            self.stop_if_running()
        self.start()


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
        },
        required_if=[
            ("state", "started", ("disk", "kernel", "initrd", "authorized_key")),
            ("state", "reset", ("disk", "kernel", "initrd", "authorized_key")),
            ("isolated", True, ("relay",)),
        ],
        supports_check_mode=True,
    )


def main() -> None:
    module = make_module()
    vm = Vm(module)
    try:
        vm.apply()
    except (VmError, subprocess.CalledProcessError) as exc:
        module.fail_json(msg=str(exc), actions=vm.actions, console_log=vm.path(CONSOLE))
    pid = running_pid(vm.dir)
    module.exit_json(
        changed=bool(vm.actions),
        state="running" if pid else ("absent" if not os.path.isdir(vm.dir) else "stopped"),
        pid=pid,
        host_key=vm.host_key_pub(),
        console_log=vm.path(CONSOLE),
        boot_seconds=vm.boot_seconds,
        actions=vm.actions,
    )


if __name__ == "__main__":
    main()
