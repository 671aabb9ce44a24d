"""Unit tests for plugins/modules/lab_vm_instance.py.

The QEMU command line, the guest's network and seed, the PID and port checks, the waits (on a FakeClock),
the module's plan in check mode; then its failure paths, run against a fake QEMU
(tests/unit/data/fake-qemu/fake_qemu.py): a guest that never boots, a QEMU that dies, stale and reused
PID files, a QEMU that ignores SIGTERM, names and directories that point out of the fleet, commas in
paths, a full disk, OS errors. Nothing here boots a real QEMU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules import lab_vm_instance
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    DATA,
    FakeClock,
    FakeHost,
    FakeStatvfs,
    FakeSystem,
    data_text,
    option,
    run_module,
)

FAKE_QEMU = DATA / "fake-qemu" / "fake_qemu.py"
# The interpreter itself, not a virtualenv's wrapper: the fake runs under another argv[0].
PYTHON = getattr(sys, "_base_executable", sys.executable)
ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
    return pids


class Fleet:
    """A fleet directory, an image and a fake QEMU, all under one temporary directory."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.state_dir = root / "fleet"
        self.images = root / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        for name in ("disk.raw", "vmlinuz", "initrd.img", "id_ed25519.pub"):
            (self.images / name).write_text(f"fake {name}\n")
        bindir = root / "bin"
        bindir.mkdir(exist_ok=True)
        self.qemu = bindir / "qemu-system-x86_64"
        self.qemu.write_text(f'#!/bin/bash\nexec -a "$0" {PYTHON} -I -S {FAKE_QEMU} "$@"\n')
        self.qemu.chmod(0o755)
        self.argv_file = root / "qemu-argv.json"
        monkeypatch.setenv("FAKE_QEMU_ARGV", str(self.argv_file))
        self.port = free_port()

    def mode(self, mode: str) -> None:
        self.monkeypatch.setenv("FAKE_QEMU_MODE", mode)

    def vm_dir(self, name: str = "lab-vm-1") -> Path:
        return self.state_dir / "vms" / name

    def args(self, **extra: Any) -> dict[str, Any]:
        name = extra.get("name", "lab-vm-1")
        return {
            "name": name,
            "vm_dir": str(self.vm_dir(name)),
            "state_dir": str(self.state_dir),
            "disk": str(self.images / "disk.raw"),
            "kernel": str(self.images / "vmlinuz"),
            "initrd": str(self.images / "initrd.img"),
            "authorized_key": str(self.images / "id_ed25519.pub"),
            "ssh_port": self.port,
            "qemu": str(self.qemu),
            "isolated": False,
            "boot_timeout": 2,
            "stop_timeout": 1,
            **extra,
        }

    def qemu_argv(self) -> list[str]:
        return json.loads(self.argv_file.read_text())


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    yield Fleet(tmp_path, monkeypatch)
    # Whatever a failing test left running is stopped here, not left on the machine.
    for pid in processes_naming(str(tmp_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            return True
        if state == "Z":  # exited, waiting for its parent
            return True
        time.sleep(0.05)
    return False


def boot(fleet: Fleet, capsys: pytest.CaptureFixture[str], mode: str = "boot", **extra: Any) -> int:
    fleet.mode(mode)
    result = run_module(lab_vm_instance, fleet.args(**extra), capsys)
    assert result.get("failed") is not True, result["msg"]
    assert result["state"] == "running"
    return int(result["pid"])


# ---------------------------------------------------------------------------------------------------
# The QEMU command line, the guest's files, the checks and waits
# ---------------------------------------------------------------------------------------------------

PARAMS: dict[str, Any] = {
    "name": "lab-vm-1",
    "qemu": "qemu-system-x86_64",
    "accel": "tcg",
    "memory": 1024,
    "cpus": 1,
    "kernel": "/cache/img/vmlinuz",
    "initrd": "/cache/img/initrd.img",
    "ssh_port": 2201,
    "ssh_address": "127.0.0.1",
    "isolated": False,
    "relay": "/lab/roles/lab_vm/files/lab_vm_relay.py",
}


def test_qemu_command_shape() -> None:
    cmd = lab_vm_instance.qemu_command(PARAMS, "/lab/vms/lab-vm-1", "/lab/vms/lab-vm-1/seed.tar")
    assert cmd[0] == "qemu-system-x86_64"
    assert cmd[-1] == "-daemonize"
    assert option(cmd, "-machine") == ["q35,accel=tcg"]
    assert option(cmd, "-cpu") == ["max"]
    assert option(cmd, "-m") == ["1024"]
    assert option(cmd, "-kernel") == ["/cache/img/vmlinuz"]
    assert option(cmd, "-initrd") == ["/cache/img/initrd.img"]
    assert "root=/dev/vda" in option(cmd, "-append")[0].split()
    assert "console=ttyS0" in option(cmd, "-append")[0].split()
    assert option(cmd, "-drive") == [
        "file=/lab/vms/lab-vm-1/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe"
    ]
    # SSH is forwarded on the loopback address only.
    (netdev,) = option(cmd, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:2201-:22" in netdev.split(",")
    assert netdev.count("hostfwd") == 1
    assert option(cmd, "-fw_cfg") == ["name=opt/chardev-lab/seed,file=/lab/vms/lab-vm-1/seed.tar"]
    assert option(cmd, "-serial") == ["file:/lab/vms/lab-vm-1/console.log"]
    assert option(cmd, "-pidfile") == ["/lab/vms/lab-vm-1/qemu.pid"]
    assert option(cmd, "-display") == ["none"]
    assert option(cmd, "-monitor") == ["none"]


MIRRORS = [
    lab_vm_instance.Forward("10.0.2.100", "mirror.example", 80),
    lab_vm_instance.Forward("10.0.2.101", "security.example", 80),
]


def test_qemu_command_isolated() -> None:
    cmd = lab_vm_instance.qemu_command({**PARAMS, "isolated": True}, "/v", "/v/seed.tar", MIRRORS)
    (netdev,) = option(cmd, "-netdev")
    parts = netdev.split(",")
    # Nothing the guest opens gets out, except the relays to the mirrors, each to a fixed host:port.
    assert "restrict=on" in parts
    assert "hostfwd=tcp:127.0.0.1:2201-:22" in parts
    relay = "python3 -I -S /lab/roles/lab_vm/files/lab_vm_relay.py"
    assert [p for p in parts if p.startswith("guestfwd=")] == [
        f"guestfwd=tcp:10.0.2.100:80-cmd:{relay} mirror.example 80",
        f"guestfwd=tcp:10.0.2.101:80-cmd:{relay} security.example 80",
    ]


def test_qemu_command_not_isolated_has_no_restriction() -> None:
    cmd = lab_vm_instance.qemu_command(PARAMS, "/v", "/v/seed.tar", MIRRORS)
    (netdev,) = option(cmd, "-netdev")
    assert "restrict" not in netdev
    assert "guestfwd" not in netdev


def test_qemu_command_ssh_address() -> None:
    cmd = lab_vm_instance.qemu_command({**PARAMS, "ssh_address": "0.0.0.0"}, "/v", "/v/seed.tar")
    (netdev,) = option(cmd, "-netdev")
    assert "hostfwd=tcp:0.0.0.0:2201-:22" in netdev.split(",")


def test_qemu_command_escapes_commas() -> None:
    params = {**PARAMS, "isolated": True, "relay": "/a,b/relay.py"}
    cmd = lab_vm_instance.qemu_command(params, "/lab,1/vm", "/lab,1/vm/seed.tar", MIRRORS[:1])
    assert option(cmd, "-drive") == ["file=/lab,,1/vm/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe"]
    assert option(cmd, "-fw_cfg") == ["name=opt/chardev-lab/seed,file=/lab,,1/vm/seed.tar"]
    (netdev,) = option(cmd, "-netdev")
    assert "python3 -I -S /a,,b/relay.py mirror.example 80" in netdev


def test_apt_endpoints() -> None:
    one_line = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://Mirror.Example/debian bookworm main\n"
        "deb http://mirror.example/debian bookworm-updates main\n"
        "deb [trusted=yes] http://proxy.example:3142/debian bookworm main\n"
    )
    deb822 = "Types: deb\nURIs: https://secure.example/debian\nSuites: trixie\nComponents: main\n"
    assert lab_vm_instance.apt_endpoints(one_line + deb822) == [
        ("mirror.example", 80),
        ("proxy.example", 3142),
        ("secure.example", 443),
    ]
    assert lab_vm_instance.apt_endpoints("") == []


def test_relay_forwards_one_address_per_host() -> None:
    forwards = lab_vm_instance.relay_forwards([("a.example", 80), ("b.example", 80), ("a.example", 443)])
    assert forwards == [
        lab_vm_instance.Forward("10.0.2.100", "a.example", 80),
        lab_vm_instance.Forward("10.0.2.101", "b.example", 80),
        lab_vm_instance.Forward("10.0.2.100", "a.example", 443),
    ]


def test_guest_network_files() -> None:
    isolated = lab_vm_instance.guest_network_files("alice", MIRRORS, True)
    assert isolated["etc/hosts"].splitlines() == [
        "127.0.0.1 localhost",
        "127.0.1.1 alice",
        "10.0.2.100 mirror.example",
        "10.0.2.101 security.example",
    ]
    # No server: lookups fail at once instead of waiting for a DNS that restrict=on drops.
    assert "nameserver" not in isolated["etc/resolv.conf"]
    assert lab_vm_instance.guest_network_files("bob", [], False)["etc/resolv.conf"] == "nameserver 10.0.2.3\n"


def test_qemu_command_kvm() -> None:
    cmd = lab_vm_instance.qemu_command({**PARAMS, "accel": "kvm", "cpus": 2}, "/v", "/v/seed.tar")
    assert option(cmd, "-machine") == ["q35,accel=kvm"]
    assert option(cmd, "-cpu") == ["host"]
    assert option(cmd, "-smp") == ["2"]


def test_qemu_command_is_deterministic() -> None:
    args = (PARAMS, "/v", "/v/seed.tar")
    assert lab_vm_instance.qemu_command(*args) == lab_vm_instance.qemu_command(*args)


def fake_proc(tmp_path: Path, pid: int, argv: list[str]) -> Path:
    """A process in a fake /proc under tmp_path, running argv; returns that /proc."""
    FakeHost(tmp_path).task(pid, Path(argv[0]).name[:15], "S", cmdline=argv)
    return tmp_path / "proc"


def test_running_pid(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    qemu = lab_vm_instance.qemu_command(PARAMS, str(vm_dir), str(vm_dir / "seed.tar"))
    proc = fake_proc(tmp_path, 4242, qemu)
    fake_proc(tmp_path, 4343, ["qemu-system-x86_64", "-drive", "file=/elsewhere/overlay.qcow2,if=virtio"])
    fake_proc(tmp_path, 4444, ["/usr/sbin/sshd", "-D"])

    # No PID file, an empty one, a garbled one.
    assert lab_vm_instance.running_pid(str(vm_dir), str(proc)) == 0
    for content in ("", "\n", "qemu\n", "-1\n"):
        (vm_dir / "qemu.pid").write_text(content)
        assert lab_vm_instance.running_pid(str(vm_dir), str(proc)) == 0
    # Stale: the process is gone.
    (vm_dir / "qemu.pid").write_text("4141\n")
    assert lab_vm_instance.running_pid(str(vm_dir), str(proc)) == 0
    # Reused PIDs: another VM's QEMU, an unrelated program.
    for pid in (4343, 4444):
        (vm_dir / "qemu.pid").write_text(f"{pid}\n")
        assert lab_vm_instance.running_pid(str(vm_dir), str(proc)) == 0
    (vm_dir / "qemu.pid").write_text("4242\n")
    assert lab_vm_instance.running_pid(str(vm_dir), str(proc)) == 4242


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock
    sock.close()


def test_port_free(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert lab_vm_instance.port_free(port) is False
    listener.close()
    assert lab_vm_instance.port_free(port) is True


def test_port_taken_on_all_addresses() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        assert lab_vm_instance.port_free(sock.getsockname()[1]) is False


def serve_once(send: bytes | None) -> tuple[int, threading.Thread, threading.Event]:
    """A one-connection TCP server on 127.0.0.1: sends `send` (None: nothing, holds the connection)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    done = threading.Event()

    def run() -> None:
        with server:
            conn, _address = server.accept()
            with conn:
                if send is not None:
                    conn.sendall(send)
                done.wait(5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server.getsockname()[1], thread, done


@pytest.mark.parametrize(
    ("send", "answer"),
    [(b"SSH-2.0-test\r\n", True), (None, False), (b"", False), (b"HTTP/1.1 400 Bad Request\r\n", False)],
    ids=["banner", "silent", "closes", "not-ssh"],
)
def test_ssh_banner(send: bytes | None, answer: bool) -> None:
    port, thread, done = serve_once(send)
    try:
        assert lab_vm_instance.ssh_banner(port, timeout=0.5) is answer
    finally:
        done.set()
        thread.join(5)


def test_ssh_banner_nobody_listening(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    assert lab_vm_instance.ssh_banner(port, timeout=0.5) is False


def test_seed_tar_with_network_files() -> None:
    files = lab_vm_instance.guest_network_files("alice", MIRRORS, True)
    data = lab_vm_instance.seed_tar("alice", "K\n", "P\n", "A\n", files)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("etc/hosts").read().decode() == files["etc/hosts"]  # type: ignore[union-attr]
        assert tar.getmember("etc/resolv.conf").mode == 0o644


def test_seed_tar() -> None:
    data = lab_vm_instance.seed_tar(
        "lab-vm-2", "PRIVATE\n", "ssh-ed25519 AAAA lab-vm-2\n", "ssh-ed25519 BBBB\n"
    )
    assert data == lab_vm_instance.seed_tar(
        "lab-vm-2", "PRIVATE\n", "ssh-ed25519 AAAA lab-vm-2\n", "ssh-ed25519 BBBB\n"
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        contents = {name: tar.extractfile(m).read() for name, m in members.items()}  # type: ignore[union-attr]
    assert {name: stat.S_IMODE(m.mode) for name, m in members.items()} == {
        "etc/hostname": 0o644,
        "etc/ssh/ssh_host_ed25519_key": 0o600,
        "etc/ssh/ssh_host_ed25519_key.pub": 0o644,
        "root/.ssh/authorized_keys": 0o600,
    }
    assert all(m.isfile() and m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values())
    assert contents["etc/hostname"] == b"lab-vm-2\n"
    assert contents["etc/ssh/ssh_host_ed25519_key"] == b"PRIVATE\n"
    assert contents["root/.ssh/authorized_keys"] == b"ssh-ed25519 BBBB\n"
    # Relative paths only: the guest unpacks into /.
    assert not any(name.startswith("/") or ".." in name for name in members)


def test_console_tail(tmp_path: Path) -> None:
    assert lab_vm_instance.console_tail(str(tmp_path)) == "(no console output)"
    (tmp_path / "console.log").write_text("")
    assert lab_vm_instance.console_tail(str(tmp_path)) == "(no console output)"
    (tmp_path / "console.log").write_bytes(
        b"".join(f"[ {n}.000000] line {n}\r\n".encode() for n in range(30)) + b"\xff\xfe garbage\n"
    )
    tail = lab_vm_instance.console_tail(str(tmp_path), lines=3)
    assert tail.splitlines()[0] == "[ 28.000000] line 28"
    assert tail.splitlines()[-1].endswith("garbage")
    assert len(lab_vm_instance.console_tail(str(tmp_path)).splitlines()) == 25


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(1000.0)
    monkeypatch.setattr(lab_vm_instance, "time", fake)
    return fake


def counter(true_after: int) -> Callable[[], bool]:
    calls = {"n": 0}

    def predicate() -> bool:
        calls["n"] += 1
        return calls["n"] > true_after

    return predicate


def test_wait_for_success(clock: FakeClock) -> None:
    assert lab_vm_instance.wait_for(counter(3), timeout=60, interval=2) is True
    assert clock.sleeps == [2, 2, 2]


def test_wait_for_timeout(clock: FakeClock) -> None:
    assert lab_vm_instance.wait_for(lambda: False, timeout=10, interval=1) is False
    assert sum(clock.sleeps) == 10


def test_wait_for_last_chance_at_the_deadline(clock: FakeClock) -> None:
    # True only on the call after the deadline: the final check catches it.
    assert lab_vm_instance.wait_for(counter(3), timeout=3, interval=1) is True


def test_wait_for_stops_when_the_process_dies(clock: FakeClock) -> None:
    alive = iter([True, True, False])
    assert (
        lab_vm_instance.wait_for(lambda: False, timeout=300, interval=1, alive=lambda: next(alive)) is False
    )
    assert len(clock.sleeps) == 2


def test_wait_for_real_clock() -> None:
    assert lab_vm_instance.wait_for(lambda: False, timeout=0.05, interval=0.01) is False


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("disk.raw", "vmlinuz", "initrd.img", "id_ed25519.pub"):
        (tmp_path / name).write_text(f"fake {name}\n")
        files[name] = str(tmp_path / name)
    return files


def instance_args(tmp_path: Path, image_files: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "name": "lab-vm-1",
        "vm_dir": str(tmp_path / "vms/lab-vm-1"),
        "disk": image_files["disk.raw"],
        "kernel": image_files["vmlinuz"],
        "initrd": image_files["initrd.img"],
        "authorized_key": image_files["id_ed25519.pub"],
        "state_dir": str(tmp_path),
        "ssh_port": 2201,
        "qemu": "/bin/true",
        "isolated": False,
        **extra,
    }


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_started_check_mode_on_a_fresh_dir(
    tmp_path: Path, image_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(tmp_path)
    result = run_module(
        lab_vm_instance, instance_args(tmp_path, image_files, _ansible_check_mode=True), capsys
    )
    assert result["changed"] is True
    assert result["actions"] == ["generated host key", "created overlay", "started qemu"]
    assert result["pid"] == 0
    assert tree(tmp_path) == before


@pytest.mark.parametrize("state", ["stopped", "absent"])
def test_stopped_or_absent_on_a_missing_dir(
    tmp_path: Path, image_files: dict[str, str], capsys: pytest.CaptureFixture[str], state: str
) -> None:
    result = run_module(
        lab_vm_instance, instance_args(tmp_path, image_files, state=state, _ansible_check_mode=True), capsys
    )
    assert result["changed"] is False
    assert result["actions"] == []
    assert result["state"] == "absent"
    assert not (tmp_path / "vms").exists()


@pytest.fixture
def stopped_vm(tmp_path: Path, image_files: dict[str, str]) -> Path:
    """A VM directory as a previous run leaves it after state=stopped."""
    vm_dir = tmp_path / "vms/lab-vm-1"
    vm_dir.mkdir(parents=True)
    for name in ("overlay.qcow2", "ssh_host_ed25519_key", "console.log", "seed.tar"):
        (vm_dir / name).write_text("x\n")
    (vm_dir / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA lab-vm-1\n")
    (vm_dir / "vm.json").write_text(
        json.dumps(
            {
                "disk": image_files["disk.raw"],
                "kernel": image_files["vmlinuz"],
                "initrd": image_files["initrd.img"],
                "ssh_port": 2201,
                "ssh_address": "127.0.0.1",
                "isolated": False,
                "memory": 1024,
                "cpus": 1,
                "accel": "tcg",
                "qemu": "/bin/true",
                "qemu_user": "",
                "machine_version": lab_vm_instance.MACHINE_VERSION,
            }
        )
    )
    return vm_dir


@pytest.mark.parametrize(
    ("state", "running", "actions"),
    [
        ("started", False, ["started qemu"]),
        ("started", True, []),
        ("stopped", False, []),
        ("stopped", True, ["stopped qemu"]),
        ("absent", False, ["removed vm directory"]),
        ("absent", True, ["stopped qemu", "removed vm directory"]),
        ("reset", False, ["removed overlay", "created overlay", "started qemu"]),
        ("reset", True, ["stopped qemu", "removed overlay", "created overlay", "started qemu"]),
    ],
)
def test_apply_check_mode_on_an_existing_vm(
    tmp_path: Path,
    image_files: dict[str, str],
    stopped_vm: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    state: str,
    running: bool,
    actions: list[str],
) -> None:
    monkeypatch.setattr(lab_vm_instance, "running_pid", lambda vm_dir, proc="/proc": 4242 if running else 0)
    monkeypatch.setattr(lab_vm_instance, "vm_pids", lambda vm_dir, proc="/proc": [4242] if running else [])
    monkeypatch.setattr(
        lab_vm_instance, "stop_processes", lambda *args, **kwargs: pytest.fail("stopped in check mode")
    )
    before = {p: p.read_bytes() for p in stopped_vm.iterdir()}
    result = run_module(
        lab_vm_instance, instance_args(tmp_path, image_files, state=state, _ansible_check_mode=True), capsys
    )
    assert result["actions"] == actions
    assert result["changed"] is bool(actions)
    assert result["host_key"] == "ssh-ed25519 AAAA lab-vm-1"
    assert {p: p.read_bytes() for p in stopped_vm.iterdir()} == before


def test_started_restarts_on_a_new_configuration(
    tmp_path: Path,
    image_files: dict[str, str],
    stopped_vm: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lab_vm_instance, "running_pid", lambda vm_dir, proc="/proc": 4242)
    monkeypatch.setattr(lab_vm_instance, "vm_pids", lambda vm_dir, proc="/proc": [4242])
    result = run_module(
        lab_vm_instance, instance_args(tmp_path, image_files, memory=2048, _ansible_check_mode=True), capsys
    )
    assert result["actions"] == ["configuration changed", "stopped qemu", "started qemu"]


def test_started_on_a_new_base_image_makes_a_new_overlay(
    tmp_path: Path,
    image_files: dict[str, str],
    stopped_vm: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    new_disk = tmp_path / "new-disk.raw"
    new_disk.write_text("new\n")
    result = run_module(
        lab_vm_instance,
        instance_args(tmp_path, image_files, disk=str(new_disk), _ansible_check_mode=True),
        capsys,
    )
    assert result["actions"] == ["base image changed", "removed overlay", "created overlay", "started qemu"]


def test_started_with_a_missing_image_file_fails(
    tmp_path: Path, image_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = instance_args(tmp_path, image_files, kernel=str(tmp_path / "nope"), _ansible_check_mode=True)
    result = run_module(lab_vm_instance, args, capsys)
    assert result["failed"] is True
    assert result["msg"] == f"kernel {tmp_path / 'nope'} does not exist"


def test_absent_removes_the_directory(
    tmp_path: Path, image_files: dict[str, str], stopped_vm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (stopped_vm / "qemu.pid").write_text("999999999\n")  # stale
    result = run_module(lab_vm_instance, instance_args(tmp_path, image_files, state="absent"), capsys)
    assert result["actions"] == ["removed vm directory"]
    assert result["state"] == "absent"
    assert not stopped_vm.exists()


def test_started_fails_when_the_port_is_taken(
    tmp_path: Path, image_files: dict[str, str], listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    result = run_module(lab_vm_instance, instance_args(tmp_path, image_files, ssh_port=port), capsys)
    assert result["failed"] is True
    assert f"port 127.0.0.1:{port} is already in use" in result["msg"]
    assert "another ansible_port in the inventory" in result["msg"]
    assert f"ss -ltnp 'sport = :{port}'" in result["msg"]
    assert result["actions"] == ["generated host key", "created overlay", "started qemu"]
    vm_dir = tmp_path / "vms/lab-vm-1"
    # The host key was made (ssh-keygen ran); QEMU and qemu-img did not.
    assert sorted(p.name for p in vm_dir.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert (vm_dir / "ssh_host_ed25519_key.pub").read_text().startswith("ssh-ed25519 ")


# ---------------------------------------------------------------------------------------------------
# Booting
# ---------------------------------------------------------------------------------------------------


def test_boot_and_stop(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    pid = boot(fleet, capsys)
    argv = fleet.qemu_argv()
    assert argv[argv.index("-sandbox") + 1] == lab_vm_instance.SANDBOX
    assert "on" in lab_vm_instance.SANDBOX.split(",")
    assert "-runas" not in argv  # qemu_user unset
    assert Path(f"/proc/{pid}/status").read_text().count("NoNewPrivs:\t1") == 1
    result = run_module(lab_vm_instance, fleet.args(state="stopped"), capsys)
    assert result["actions"] == ["stopped qemu"]
    assert result["state"] == "stopped"
    assert gone(pid)
    assert not (fleet.vm_dir() / "qemu.pid").exists()


def test_never_boots_times_out_with_the_console_and_stops_qemu(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.mode("hang")
    result = run_module(lab_vm_instance, fleet.args(), capsys)
    assert result["failed"] is True
    assert "lab-vm-1 did not boot (no SSH banner after 2 s; accel=tcg); QEMU was stopped." in result["msg"]
    assert "fake: waiting for root device /dev/vda..." in result["msg"]  # the console's tail
    assert processes_naming(str(fleet.root / "fleet")) == []
    assert not (fleet.vm_dir() / "qemu.pid").exists()


def test_qemu_that_dies_at_once(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.mode("die")
    result = run_module(lab_vm_instance, fleet.args(), capsys)
    assert result["failed"] is True
    msg = result["msg"]
    assert msg.startswith("QEMU did not start lab-vm-1 (rc=1): qemu-system-x86_64: -machine q35,accel=kvm:")
    assert f"Command: {fleet.qemu} -name lab-vm-1" in msg
    assert f"Last lines of its console ({fleet.vm_dir() / 'console.log'})" in msg
    assert processes_naming(str(fleet.root / "fleet")) == []


def test_qemu_that_dies_after_daemonizing(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.mode("crash")
    result = run_module(lab_vm_instance, fleet.args(boot_timeout=30), capsys)
    assert result["failed"] is True
    assert "lab-vm-1 did not boot (QEMU exited; accel=tcg); QEMU was stopped." in result["msg"]
    assert "Kernel panic - not syncing: fake panic" in result["msg"]
    # Its PID file named a process that is gone: removed, not left for the next run to trip on.
    assert not (fleet.vm_dir() / "qemu.pid").exists()


# ---------------------------------------------------------------------------------------------------
# Finding and stopping QEMU
# ---------------------------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_pid_file_does_not_hide_a_running_qemu(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = boot(fleet, capsys)
    # The PID file names a process that is gone; the VM's QEMU still runs on its overlay.
    (fleet.vm_dir() / "qemu.pid").write_text(f"{dead_pid()}\n")
    result = run_module(lab_vm_instance, fleet.args(state="stopped"), capsys)
    assert result["actions"] == ["stopped qemu"]
    assert gone(pid)
    assert not (fleet.vm_dir() / "qemu.pid").exists()
    # A stale PID file alone is only removed.
    (fleet.vm_dir() / "qemu.pid").write_text(f"{dead_pid()}\n")
    result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
    assert result["actions"] == ["removed vm directory"]
    assert not fleet.vm_dir().exists()


def test_reused_pid_is_never_signalled(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    vm_dir = fleet.vm_dir()
    vm_dir.mkdir(parents=True)
    overlay = vm_dir / "overlay.qcow2"
    # Not QEMU, though its command line names this VM's disk the way QEMU's does (a backup script).
    namer = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-drive", f"file={overlay},if=virtio"]
    )
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for victim in (namer, bystander):
            (vm_dir / "qemu.pid").write_text(f"{victim.pid}\n")
            result = run_module(lab_vm_instance, fleet.args(state="stopped"), capsys)
            assert result["actions"] == []
            assert victim.poll() is None, "an unrelated process was killed"
            assert not (vm_dir / "qemu.pid").exists()
        (vm_dir / "qemu.pid").write_text(f"{namer.pid}\n")
        result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
        assert result["actions"] == ["removed vm directory"]
        assert namer.poll() is None and bystander.poll() is None
    finally:
        namer.kill()
        bystander.kill()
        namer.wait()
        bystander.wait()


def record_signals(fleet: Fleet, monkeypatch: pytest.MonkeyPatch, drop: int | None = None) -> list[Any]:
    """Record every signal the module sends, with whether the PID file existed at that moment; drop
    one signal (it is recorded, not sent) to play a process that will not die."""
    sent: list[Any] = []
    real = lab_vm_instance.send_signal

    def send(pid: int, sig: int, vm_dir: str) -> bool:
        sent.append((sig, (fleet.vm_dir() / "qemu.pid").exists()))
        return True if sig == drop else real(pid, sig, vm_dir)

    monkeypatch.setattr(lab_vm_instance, "send_signal", send)
    return sent


def test_qemu_ignoring_sigterm_is_killed_after_the_grace_period(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = boot(fleet, capsys, mode="boot,stubborn")
    sent = record_signals(fleet, monkeypatch)
    started = time.monotonic()
    result = run_module(lab_vm_instance, fleet.args(state="stopped", stop_timeout=1), capsys)
    assert time.monotonic() - started >= 1
    assert result["actions"] == ["stopped qemu"]
    # SIGTERM, ignored; SIGKILL after the grace period; the PID file there all along, gone after.
    assert sent == [(signal.SIGTERM, True), (signal.SIGKILL, True)]
    assert gone(pid)
    assert not (fleet.vm_dir() / "qemu.pid").exists()


def test_qemu_that_survives_sigkill_keeps_its_pid_file(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = boot(fleet, capsys, mode="boot,stubborn")
    record_signals(fleet, monkeypatch, drop=signal.SIGKILL)
    monkeypatch.setattr(lab_vm_instance, "KILL_TIMEOUT", 0.3)
    result = run_module(lab_vm_instance, fleet.args(state="absent", stop_timeout=1), capsys)
    assert result["failed"] is True
    assert f"(pid {pid}) is still running after SIGTERM and SIGKILL" in result["msg"]
    assert "PID file" in result["msg"] and "is kept" in result["msg"]
    assert (fleet.vm_dir() / "qemu.pid").read_text().strip() == str(pid)
    assert fleet.vm_dir().is_dir()  # not removed under a running QEMU
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
    assert result["actions"] == ["removed vm directory"]


# ---------------------------------------------------------------------------------------------------
# Names and directories
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "a/b", "-x", "x,y", "x y", "a" * 64])
def test_unsafe_names_are_refused(fleet: Fleet, capsys: pytest.CaptureFixture[str], name: str) -> None:
    outside = fleet.state_dir / "x"
    outside.mkdir(parents=True)
    (outside / "keep").write_text("keep\n")
    (fleet.state_dir / "vms").mkdir()
    (fleet.state_dir / "vms" / "keep").write_text("keep\n")
    vm_dir = os.path.join(fleet.state_dir, "vms", name)
    result = run_module(lab_vm_instance, fleet.args(name=name, vm_dir=vm_dir, state="absent"), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(f"invalid VM name {name!r}")
    assert (outside / "keep").exists()
    assert (fleet.state_dir / "vms" / "keep").exists()


def test_vm_dir_outside_the_fleet_is_refused(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = fleet.root / "elsewhere" / "lab-vm-1"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep").write_text("keep\n")
    result = run_module(lab_vm_instance, fleet.args(vm_dir=str(elsewhere), state="absent"), capsys)
    assert result["failed"] is True
    assert "is not a directory directly inside the fleet's" in result["msg"]
    assert (elsewhere / "keep").exists()


def test_vm_dir_that_is_a_link_out_of_the_fleet_is_refused(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    target = fleet.root / "precious"
    target.mkdir()
    (target / "keep").write_text("keep\n")
    fleet.vm_dir().parent.mkdir(parents=True)
    fleet.vm_dir().symlink_to(target)
    result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
    assert result["failed"] is True
    assert "not a directory directly inside the fleet's" in result["msg"]
    assert (target / "keep").exists()
    # A link to another VM's directory, inside the fleet, is refused too.
    other = fleet.vm_dir("lab-vm-2")
    other.mkdir()
    fleet.vm_dir().unlink()
    fleet.vm_dir().symlink_to(other)
    result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
    assert "is a symbolic link" in result["msg"]
    assert other.is_dir()


def test_absent_does_not_cross_a_mount_point(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mounted = fleet.vm_dir() / "mnt"
    mounted.mkdir(parents=True)
    (mounted / "keep").write_text("keep\n")
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(mounted) or real_ismount(p))
    result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
    assert result["failed"] is True
    assert f"{mounted} is a mount point inside the VM directory: nothing removed" in result["msg"]
    assert (mounted / "keep").exists()


def test_commas_in_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(tmp_path / "class,2024", monkeypatch)
    try:
        pid = boot(fleet, capsys)
        argv = fleet.qemu_argv()
        vm_dir = str(fleet.vm_dir()).replace(",", ",,")
        # Option lists double the comma; whole values (-kernel, -serial file:, -pidfile) keep it.
        assert argv[argv.index("-drive") + 1].startswith(f"file={vm_dir}/overlay.qcow2,if=virtio")
        assert argv[argv.index("-fw_cfg") + 1] == f"name=opt/chardev-lab/seed,file={vm_dir}/seed.tar"
        assert argv[argv.index("-kernel") + 1] == str(fleet.images / "vmlinuz")
        assert argv[argv.index("-serial") + 1] == f"file:{fleet.vm_dir() / 'console.log'}"
        assert argv[argv.index("-pidfile") + 1] == str(fleet.vm_dir() / "qemu.pid")
        # The module finds the QEMU it started (by its escaped -drive) and stops it.
        result = run_module(lab_vm_instance, fleet.args(state="absent"), capsys)
        assert result["actions"] == ["stopped qemu", "removed vm directory"]
        assert gone(pid)
    finally:
        for pid in processes_naming(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------
# Disk space and OS errors
# ---------------------------------------------------------------------------------------------------


def test_no_free_space(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_vm_instance.os, "statvfs", lambda path: FakeStatvfs(10 << 20))
    result = run_module(lab_vm_instance, fleet.args(), capsys)
    assert result["failed"] is True
    msg = result["msg"]
    assert msg.startswith(
        f"not enough free space to start the VM: the filesystem of {fleet.vm_dir()} has 10 MiB"
    )
    assert "needs at least 1024 MiB" in msg
    assert "make down" in msg
    assert not (fleet.vm_dir() / "overlay.qcow2").exists()
    assert not fleet.argv_file.exists()  # QEMU never ran


def test_unreadable_authorized_key_is_an_answer(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    key_dir = fleet.root / "key-is-a-dir"
    key_dir.mkdir()
    result = run_module(lab_vm_instance, fleet.args(authorized_key=str(key_dir)), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(f"could not read the authorized key ({key_dir}): Is a directory;")


def test_vm_directory_that_cannot_be_made_is_an_answer(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.state_dir.mkdir()
    (fleet.state_dir / "vms").write_text("not a directory\n")
    result = run_module(lab_vm_instance, fleet.args(), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(f"could not create the VM directory {fleet.vm_dir()}")
    assert "Not a directory" in result["msg"]


# ---------------------------------------------------------------------------------------------------
# The account QEMU runs as
# ---------------------------------------------------------------------------------------------------


def test_qemu_command_runas_and_sandbox() -> None:
    params = {
        "name": "lab-vm-1",
        "qemu": "qemu-system-x86_64",
        "accel": "tcg",
        "memory": 1024,
        "cpus": 1,
        "kernel": "/k",
        "initrd": "/i",
        "ssh_port": 2201,
        "ssh_address": "127.0.0.1",
        "isolated": False,
    }
    cmd = lab_vm_instance.qemu_command(params, "/v", "/v/seed.tar", run_as="chardev-lab")
    assert cmd[cmd.index("-runas") + 1] == "chardev-lab"
    assert (
        cmd[cmd.index("-sandbox") + 1]
        == "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny"
    )
    assert "-runas" not in lab_vm_instance.qemu_command(params, "/v", "/v/seed.tar")


@pytest.mark.skipif(not ROOT, reason="-runas needs root")
def test_runas_when_root(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    boot(fleet, capsys, qemu_user="nobody")  # the fake does not drop privileges; QEMU does
    argv = fleet.qemu_argv()
    assert argv[argv.index("-runas") + 1] == "nobody"


@pytest.mark.skipif(not ROOT, reason="-runas needs root")
def test_runas_user_must_exist(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(lab_vm_instance, fleet.args(qemu_user="no-such-user-chardev"), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("qemu_user no-such-user-chardev does not exist")


@pytest.mark.skipif(not ROOT, reason="-runas needs root")
def test_relay_must_be_readable_by_the_qemu_user(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        lab_vm_instance,
        "read_image_files",
        lambda disk, paths: "deb http://deb.example/debian bookworm main\n",
    )
    monkeypatch.setattr(lab_vm_instance, "resolve", lambda host, port: ["203.0.113.80"])
    private = fleet.root / "private"
    private.mkdir(mode=0o700)
    relay = private / "lab_vm_relay.py"
    relay.write_text("")
    relay.chmod(0o644)
    result = run_module(
        lab_vm_instance, fleet.args(qemu_user="nobody", isolated=True, relay=str(relay)), capsys
    )
    assert result["failed"] is True
    assert f"the mirror relay {relay} cannot be read by nobody" in result["msg"]
    assert not fleet.argv_file.exists()


@pytest.mark.skipif(not ROOT, reason="-runas needs root")
def test_an_account_another_vm_runs_as_is_refused(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    first = boot(fleet, capsys, qemu_user="nobody")
    fleet.argv_file.unlink()
    second = fleet.args(name="lab-vm-2", ssh_port=free_port(), qemu_user="nobody")
    result = run_module(lab_vm_instance, second, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(
        f"qemu_user nobody is the account of another VM's QEMU already (pid {first}:"
    )
    assert "each VM's QEMU needs an account of its own" in result["msg"]
    assert not fleet.argv_file.exists()  # its QEMU was never started
    # The VM's own QEMU does not count: lab-vm-1 restarts (a new configuration) as nobody again.
    assert boot(fleet, capsys, qemu_user="nobody", memory=512) != first
    assert fleet.qemu_argv()[fleet.qemu_argv().index("-runas") + 1] == "nobody"


def test_qemus_of_other_vms(tmp_path: Path) -> None:
    nobody = lab_vm_instance.pwd.getpwnam("nobody")
    mine = ["qemu-system-x86_64", "-drive", "file=/f/vms/a/overlay.qcow2,if=virtio", "-runas", "nobody"]
    other = ["qemu-system-x86_64", "-drive", "file=/f/vms/b/overlay.qcow2,if=virtio", "-runas", "nobody"]
    elsewhere = [
        "qemu-system-x86_64",
        "-drive",
        "file=/f/vms/c/overlay.qcow2,if=virtio",
        "-runas",
        "chardev-lab-c",
    ]
    not_qemu = ["sleep", "-runas", "nobody"]
    for pid, argv in ((10, mine), (11, other), (12, elsewhere), (13, not_qemu)):
        proc = fake_proc(tmp_path, pid, argv)
    assert lab_vm_instance.qemus_of_other_vms(nobody, "/f/vms/a", str(proc)) == [11]
    assert lab_vm_instance.qemus_of_other_vms(nobody, "/f/vms/b", str(proc)) == [10]


def test_the_vm_directory_is_roots_alone(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.vm_dir().mkdir(parents=True, mode=0o755)
    fleet.vm_dir().chmod(0o755)
    boot(fleet, capsys)
    assert stat.S_IMODE(fleet.vm_dir().stat().st_mode) == 0o700


# ---------------------------------------------------------------------------------------------------
# The relays of an isolated VM never lead back to the control node
# ---------------------------------------------------------------------------------------------------

# A control node with 192.0.2.2/24 and fd00::2 on eth0 (tests/unit/data/proc-net/README.md).
FIB_TRIE = data_text("proc-net", "fib_trie.txt")
IF_INET6 = data_text("proc-net", "if_inet6.txt")


def isolated_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: str) -> lab_vm_instance.Vm:
    host = FakeHost(tmp_path / "host")
    host.write("/proc/net/fib_trie", FIB_TRIE)
    host.write("/proc/net/if_inet6", IF_INET6)
    monkeypatch.setattr(lab_vm_instance, "read_image_files", lambda disk, paths: sources)
    params = {"name": "lab-vm-1", "vm_dir": str(tmp_path / "vms/lab-vm-1"), "isolated": True, "disk": "/d"}
    return lab_vm_instance.Vm(params, False, FakeSystem(tmp_path / "host"))


@pytest.mark.parametrize(
    ("mirror", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.0.1.1", "a loopback address"),
        ("127.0.0.2", "a loopback address"),
        ("localhost", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("10.0.2.2", "the guest's name for the control node"),
        ("169.254.169.254", "a link-local address"),
        ("192.0.2.2", "one of this machine's own addresses"),
    ],
)
def test_a_mirror_on_the_control_node_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: str, why: str
) -> None:
    vm = isolated_vm(tmp_path, monkeypatch, f"deb http://{mirror}:3142/debian bookworm main\n")
    with pytest.raises(lab_vm_instance.VmError) as raised:
        vm.forwards()
    assert str(raised.value).startswith("the image's apt sources point at the control node itself (")
    assert why in str(raised.value)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.1.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::", "the unspecified address"),
        ("fd00::2", "one of this machine's own addresses"),
        ("fe80::1%eth0", "a link-local address"),
    ],
)
def test_a_mirror_name_that_resolves_to_the_control_node_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str, why: str
) -> None:
    vm = isolated_vm(tmp_path, monkeypatch, "deb http://apt-proxy.example:3142/debian bookworm main\n")
    monkeypatch.setattr(lab_vm_instance, "resolve", lambda host, port: ["203.0.113.9", address])
    with pytest.raises(lab_vm_instance.VmError) as raised:
        vm.forwards()
    assert f"(apt-proxy.example: it resolves to {address}, {why}" in str(raised.value)


def test_a_mirror_that_does_not_resolve_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = isolated_vm(tmp_path, monkeypatch, "deb http://deb.example/debian bookworm main\n")

    def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(lab_vm_instance, "resolve", unknown)
    with pytest.raises(lab_vm_instance.VmError) as raised:
        vm.forwards()
    assert str(raised.value).startswith(
        "the mirror host deb.example of the image's apt sources does not resolve on the control node "
        "(Name or service not known)"
    )
    assert "getent hosts deb.example" in str(raised.value)


def test_a_mirror_elsewhere_gets_its_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = isolated_vm(tmp_path, monkeypatch, "deb http://deb.example/debian bookworm main\n")
    monkeypatch.setattr(lab_vm_instance, "resolve", lambda host, port: ["203.0.113.80", "2001:db8::80"])
    assert vm.forwards() == [lab_vm_instance.Forward("10.0.2.100", "deb.example", 80)]
