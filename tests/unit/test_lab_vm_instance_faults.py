"""lab_vm_instance's failure paths, run against a fake QEMU (tests/unit/data/fake-qemu/fake_qemu.py):
a guest that never boots, a QEMU that dies, stale and reused PID files, a QEMU that ignores SIGTERM,
names and directories that point out of the fleet, commas in paths, a full disk, OS errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab_vm_instance
import pytest
from ansible.module_utils.testing import patch_module_args

FAKE_QEMU = Path(__file__).parent / "data" / "fake-qemu" / "fake_qemu.py"
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


def run(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        lab_vm_instance.main()
    return json.loads(capsys.readouterr().out)


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
    result = run(fleet.args(**extra), capsys)
    assert result.get("failed") is not True, result["msg"]
    assert result["state"] == "running"
    return int(result["pid"])


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
    result = run(fleet.args(state="stopped"), capsys)
    assert result["actions"] == ["stopped qemu"]
    assert result["state"] == "stopped"
    assert gone(pid)
    assert not (fleet.vm_dir() / "qemu.pid").exists()


def test_never_boots_times_out_with_the_console_and_stops_qemu(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.mode("hang")
    result = run(fleet.args(), capsys)
    assert result["failed"] is True
    assert "lab-vm-1 did not boot (no SSH banner after 2 s; accel=tcg); QEMU was stopped." in result["msg"]
    assert "fake: waiting for root device /dev/vda..." in result["msg"]  # the console's tail
    assert processes_naming(str(fleet.root / "fleet")) == []
    assert not (fleet.vm_dir() / "qemu.pid").exists()


def test_qemu_that_dies_at_once(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.mode("die")
    result = run(fleet.args(), capsys)
    assert result["failed"] is True
    msg = result["msg"]
    assert msg.startswith("QEMU did not start lab-vm-1 (rc=1): qemu-system-x86_64: -machine q35,accel=kvm:")
    assert f"Command: {fleet.qemu} -name lab-vm-1" in msg
    assert f"Last lines of its console ({fleet.vm_dir() / 'console.log'})" in msg
    assert processes_naming(str(fleet.root / "fleet")) == []


def test_qemu_that_dies_after_daemonizing(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.mode("crash")
    result = run(fleet.args(boot_timeout=30), capsys)
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
    result = run(fleet.args(state="stopped"), capsys)
    assert result["actions"] == ["stopped qemu"]
    assert gone(pid)
    assert not (fleet.vm_dir() / "qemu.pid").exists()
    # A stale PID file alone is only removed.
    (fleet.vm_dir() / "qemu.pid").write_text(f"{dead_pid()}\n")
    result = run(fleet.args(state="absent"), capsys)
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
            result = run(fleet.args(state="stopped"), capsys)
            assert result["actions"] == []
            assert victim.poll() is None, "an unrelated process was killed"
            assert not (vm_dir / "qemu.pid").exists()
        (vm_dir / "qemu.pid").write_text(f"{namer.pid}\n")
        result = run(fleet.args(state="absent"), capsys)
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
    result = run(fleet.args(state="stopped", stop_timeout=1), capsys)
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
    result = run(fleet.args(state="absent", stop_timeout=1), capsys)
    assert result["failed"] is True
    assert f"(pid {pid}) is still running after SIGTERM and SIGKILL" in result["msg"]
    assert "PID file" in result["msg"] and "is kept" in result["msg"]
    assert (fleet.vm_dir() / "qemu.pid").read_text().strip() == str(pid)
    assert fleet.vm_dir().is_dir()  # not removed under a running QEMU
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    result = run(fleet.args(state="absent"), capsys)
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
    result = run(fleet.args(name=name, vm_dir=vm_dir, state="absent"), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(f"invalid VM name {name!r}")
    assert (outside / "keep").exists()
    assert (fleet.state_dir / "vms" / "keep").exists()


def test_vm_dir_outside_the_fleet_is_refused(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = fleet.root / "elsewhere" / "lab-vm-1"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep").write_text("keep\n")
    result = run(fleet.args(vm_dir=str(elsewhere), state="absent"), capsys)
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
    result = run(fleet.args(state="absent"), capsys)
    assert result["failed"] is True
    assert "not a directory directly inside the fleet's" in result["msg"]
    assert (target / "keep").exists()
    # A link to another VM's directory, inside the fleet, is refused too.
    other = fleet.vm_dir("lab-vm-2")
    other.mkdir()
    fleet.vm_dir().unlink()
    fleet.vm_dir().symlink_to(other)
    result = run(fleet.args(state="absent"), capsys)
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
    result = run(fleet.args(state="absent"), capsys)
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
        result = run(fleet.args(state="absent"), capsys)
        assert result["actions"] == ["stopped qemu", "removed vm directory"]
        assert gone(pid)
    finally:
        for pid in processes_naming(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------
# Disk space and OS errors
# ---------------------------------------------------------------------------------------------------


class FakeStatvfs:
    def __init__(self, free_mib: int) -> None:
        self.f_frsize = 4096
        self.f_bavail = free_mib * 1024 * 1024 // 4096


def test_no_free_space(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_vm_instance.os, "statvfs", lambda path: FakeStatvfs(10))
    result = run(fleet.args(), capsys)
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
    result = run(fleet.args(authorized_key=str(key_dir)), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(f"could not read the authorized key ({key_dir}): Is a directory;")


def test_vm_directory_that_cannot_be_made_is_an_answer(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.state_dir.mkdir()
    (fleet.state_dir / "vms").write_text("not a directory\n")
    result = run(fleet.args(), capsys)
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
    result = run(fleet.args(qemu_user="no-such-user-chardev"), capsys)
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
    private = fleet.root / "private"
    private.mkdir(mode=0o700)
    relay = private / "lab_vm_relay.py"
    relay.write_text("")
    relay.chmod(0o644)
    result = run(fleet.args(qemu_user="nobody", isolated=True, relay=str(relay)), capsys)
    assert result["failed"] is True
    assert f"the mirror relay {relay} cannot be read by nobody" in result["msg"]
    assert not fleet.argv_file.exists()
