"""Unit tests for plugins/modules/chardev_unload.py: the unload of the chardev module is refused while a
process holds its device open (found in /proc/<pid>/fd, never by the reference count: the crash
variant's stays 0 while its file is open), unless the host opted in to the crash.

The target is a FakeHost tree (/sys/module/chardev, /proc/devices, tasks with fd links); modprobe is
scripted through FakeSystem's runner."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import device_holders
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import ModuleFailure
from ansible_collections.chardev_lab.lab.plugins.modules import chardev_unload
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import FakeHost, run_module

PROC_DEVICES = "Character devices:\n  1 mem\n240 chardev\n\nBlock devices:\n  8 sd\n"


class Modprobe:
    """modprobe -r: records its calls, answers rc (and stderr)."""

    def __init__(self, host: FakeHost, rc: int = 0, stderr: str = "") -> None:
        self.host, self.rc, self.stderr = host, rc, stderr

    def __call__(self, argv: list[str], check_rc: bool = False, **kwargs: Any) -> tuple[int, str, str]:
        assert argv[1:] == ["-r", "chardev"], argv
        if self.rc == 0:
            self.host.rmmod()
        return self.rc, "", self.stderr


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    host = FakeHost.booted(tmp_path / "root")
    host.module("crash")
    host.write("/sys/module/chardev/refcnt", "0\n")
    host.write("/proc/devices", PROC_DEVICES)
    host.task(1, "systemd", "S", fds={0: "/dev/null"})
    return host


def unload(host: FakeHost, check_mode: bool = False, rc: int = 0, stderr: str = "", **params: Any):
    system = host.system(Modprobe(host, rc, stderr))
    result = chardev_unload.run({"device": "/dev/chardev", "allow_held": False, **params}, check_mode, system)
    return result, system


def test_nothing_holds_the_device_so_the_module_is_unloaded(host: FakeHost) -> None:
    result, system = unload(host)
    assert result["changed"] is True and result["unloaded"] is True and result["loaded"] is True
    assert result["holders"] == [] and result["refcnt"] == 0 and result["major"] == 240
    assert [cmd[1:] for cmd in system.commands] == [["-r", "chardev"]]


def test_a_module_that_is_not_loaded_is_left_alone(host: FakeHost) -> None:
    host.rmmod()
    result, system = unload(host)
    assert result["changed"] is False and result["unloaded"] is False and result["loaded"] is False
    assert system.commands == []


@pytest.mark.parametrize("target", ["/dev/chardev", "/dev/chardev (deleted)"])
def test_a_holder_refuses_the_unload_on_a_host_that_did_not_opt_in(host: FakeHost, target: str) -> None:
    # The crash variant: refcnt 0 although the student's shell holds the file (so modprobe would succeed).
    host.task(1633, "python3", "S", fds={0: "/dev/pts/1", 3: target})
    with pytest.raises(ModuleFailure) as refused:
        unload(host)
    msg = refused.value.msg
    assert msg.startswith(
        "Refusing to unload chardev while /dev/chardev is held open: pid 1633 (python3, fd 3"
    )
    assert (
        "refcnt stays 0" in msg and "chardev_crash_allowed is false" in msg and "Nothing was unloaded" in msg
    )
    assert refused.value.fields["holders"] == [{"pid": 1633, "comm": "python3", "fd": 3, "target": target}]
    assert refused.value.fields["changed"] is False
    assert host.path("/sys/module/chardev").is_dir()


def test_the_refusal_is_the_same_in_check_mode(host: FakeHost) -> None:
    host.shell()
    with pytest.raises(ModuleFailure):
        unload(host, check_mode=True)


def test_a_host_that_opted_in_unloads_under_the_open_file_with_a_warning(host: FakeHost) -> None:
    host.shell()
    result, system = unload(host, allow_held=True)
    assert result["unloaded"] is True
    assert result["holders"][0]["pid"] == 1633
    assert len(system.warnings) == 1 and "the host opted in to the crash" in system.warnings[0]


def test_check_mode_unloads_nothing(host: FakeHost) -> None:
    result, system = unload(host, check_mode=True)
    assert result["changed"] is True and result["unloaded"] is False
    assert system.commands == []
    assert host.path("/sys/module/chardev").is_dir()


def test_an_fd_directory_that_cannot_be_read_counts_as_a_holder(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.task(999, "sshd", "S", fds={3: "socket:[1234]"})
    denied = str(host.path("/proc/999/fd"))
    listdir = os.listdir

    def guarded(path: Any) -> list[str]:
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", guarded)
    with pytest.raises(
        ModuleFailure, match=r"a holder cannot be ruled out \(/proc/999/fd: Permission denied"
    ):
        unload(host)
    assert unload(host, allow_held=True)[0]["unloaded"] is True


def test_modprobe_refusing_a_pinned_module_fails_with_its_message(host: FakeHost) -> None:
    with pytest.raises(ModuleFailure, match="Module chardev is in use") as failed:
        unload(host, rc=1, stderr="modprobe: FATAL: Module chardev is in use.\n")
    assert failed.value.fields["unloaded"] is False


def test_another_node_of_the_same_driver_is_a_holder_too(host: FakeHost) -> None:
    """A node made with mknod elsewhere (same major) reaches the same driver: found by the node's major."""
    host.task(2000, "python3", "S", fds={3: "/tmp/mynode", 4: "/dev/null"})
    nodes = {
        str(host.path("/proc/2000/fd/3")): SimpleNamespace(
            st_mode=stat.S_IFCHR | 0o644, st_rdev=os.makedev(240, 0)
        ),
        str(host.path("/proc/2000/fd/4")): SimpleNamespace(
            st_mode=stat.S_IFCHR | 0o666, st_rdev=os.makedev(1, 3)
        ),
    }
    regular = SimpleNamespace(st_mode=stat.S_IFREG | 0o644, st_rdev=0)
    found = device_holders(
        str(host.root), "/dev/chardev", 240, stat=lambda path: nodes.get(str(path), regular)
    )
    assert found.found == ({"pid": 2000, "comm": "python3", "fd": 3, "target": "/tmp/mynode"},)
    # Without the driver's major (not registered) only the path counts.
    assert device_holders(str(host.root), "/dev/chardev", None).found == ()


def test_main_fails_with_the_holders(capsys: pytest.CaptureFixture[str], host: FakeHost) -> None:
    host.shell()
    result = run_module(chardev_unload, {"device": "/dev/chardev"}, capsys, host.system(Modprobe(host)))
    assert result["failed"] is True and "Refusing to unload chardev" in result["msg"]
    assert result["holders"][0]["pid"] == 1633


def test_main_unloads(capsys: pytest.CaptureFixture[str], host: FakeHost) -> None:
    result = run_module(chardev_unload, {}, capsys, host.system(Modprobe(host)))
    assert not result.get("failed") and result["unloaded"] is True
