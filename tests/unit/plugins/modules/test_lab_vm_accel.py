"""Unit tests for plugins/modules/lab_vm_accel.py: the verdict of the KVM probe from QEMU's exit and the
kernel's console, the device check, the probe's command line (under coreutils' timeout), the probe run
through a scripted system, and the module with TCG asked for (no probe). Nothing here starts QEMU."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules import lab_vm_accel
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    FakeSystem,
    kernel_text,
    option,
    run_module,
)

# ---------------------------------------------------------------------------------------------------
# lab_vm_accel
# ---------------------------------------------------------------------------------------------------

# The end of the serial console of a Debian 12 kernel booted under a working KVM with no root disk.
CONSOLE_PANIC = kernel_text("bookworm", "console-panic-no-root.txt")

CONSOLE_EDD_HANG = "Probing EDD (edd=off to disable)... ok\n"


@pytest.mark.parametrize(
    ("returncode", "console", "accel", "reason"),
    [
        (0, CONSOLE_PANIC, "kvm", "expected panic"),
        (None, CONSOLE_PANIC, "kvm", "expected panic"),
        (None, "", "tcg", "no output in 20 s"),
        (None, "  \n", "tcg", "no output in 20 s"),
        (None, CONSOLE_EDD_HANG, "tcg", "no panic in 20 s"),
        (1, "", "tcg", "QEMU exited with 1 before the kernel ran"),
    ],
    ids=["panic", "panic-killed", "silent", "blank", "edd-hang", "early-exit"],
)
def test_verdict_from_probe(returncode: int | None, console: str, accel: str, reason: str) -> None:
    got_accel, got_reason = lab_vm_accel.verdict_from_probe(returncode, console, 20)
    assert got_accel == accel
    assert reason in got_reason


def test_kvm_usable_device(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    assert lab_vm_accel.kvm_usable_device(str(device)) is False
    device.write_text("")
    device.chmod(0o600)
    assert lab_vm_accel.kvm_usable_device(str(device)) is True
    if os.geteuid() != 0:  # root may read and write anything
        device.chmod(0o400)
        assert lab_vm_accel.kvm_usable_device(str(device)) is False


def test_probe_command() -> None:
    cmd = lab_vm_accel.probe_command("/usr/bin/qemu-system-x86_64", "/img/vmlinuz", "/tmp/c.log")
    assert cmd[:3] == ["/usr/bin/qemu-system-x86_64", "-accel", "kvm"]
    assert "-no-reboot" in cmd
    assert option(cmd, "-serial") == ["file:/tmp/c.log"]
    assert "panic=-1" in option(cmd, "-append")[0].split()


def test_accel_tcg_skips_the_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"kernel": "/nope", "cache_file": str(tmp_path / "a.json"), "wanted": "tcg"}
    result = run_module(lab_vm_accel, args, capsys)
    assert (result["accel"], result["changed"], result["cached"]) == ("tcg", False, False)
    assert not (tmp_path / "a.json").exists()


def scripted_probe(rc: int, console: str) -> object:
    """A runner that plays QEMU: it writes console into the probe's serial file and exits with rc."""

    def runner(argv: list[str], **kwargs: object) -> tuple[int, str, str]:
        serial = option(argv, "-serial")[0].removeprefix("file:")
        Path(serial).write_text(console, encoding="utf-8")
        return rc, "", ""

    return runner


@pytest.mark.parametrize(
    ("rc", "console", "accel", "reason"),
    [
        (1, CONSOLE_PANIC, "kvm", "expected panic"),
        (124, CONSOLE_EDD_HANG, "tcg", "no panic in 7 s"),
        (137, "", "tcg", "no output in 7 s"),
        (1, "", "tcg", "QEMU exited with 1"),
    ],
    ids=["panic", "timed-out", "killed", "early-exit"],
)
def test_run_probe(tmp_path: Path, rc: int, console: str, accel: str, reason: str) -> None:
    system = FakeSystem(tmp_path, scripted_probe(rc, console))
    got_accel, got_reason = lab_vm_accel.run_probe(system, "/usr/bin/qemu-system-x86_64", "/img/vmlinuz", 7)
    assert (got_accel, reason in got_reason) == (accel, True), got_reason
    (argv,) = system.commands
    assert argv[:3] == ["timeout", "--kill-after=5", "7"]
    assert argv[3:6] == ["/usr/bin/qemu-system-x86_64", "-accel", "kvm"]


# ---------------------------------------------------------------------------------------------------
# The cache file: never through a symbolic link; a write that fails is a warning, never a traceback
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def probing(tmp_path: Path) -> tuple[FakeSystem, dict[str, object]]:
    """A system where KVM can be probed (its /dev/kvm, a QEMU, a kernel that panics as expected)."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kvm").write_text("")
    (tmp_path / "dev/kvm").chmod(0o666)
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n")
    qemu.chmod(0o755)
    (tmp_path / "vmlinuz").write_text("kernel")
    (tmp_path / "cache").mkdir()
    args = {
        "kernel": str(tmp_path / "vmlinuz"),
        "cache_file": str(tmp_path / "cache/accel.json"),
        "qemu": str(qemu),
    }
    return FakeSystem(tmp_path, scripted_probe(1, CONSOLE_PANIC)), args


def test_the_verdict_is_cached(
    probing: tuple[FakeSystem, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    system, args = probing
    first = run_module(lab_vm_accel, args, capsys, system)
    assert (first["accel"], first["cached"]) == ("kvm", False)
    second = run_module(lab_vm_accel, args, capsys, system)
    assert (second["accel"], second["cached"]) == ("kvm", True)
    assert len(system.commands) == 1 and system.warnings == []


@pytest.mark.parametrize(
    ("err", "fix"),
    [
        (errno.ENOSPC, "free some space there (df -h)"),
        (errno.EACCES, "make that directory writable by the user who runs the lab"),
    ],
    ids=["full", "denied"],
)
def test_a_cache_write_that_fails_is_a_warning(
    probing: tuple[FakeSystem, dict[str, object]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    fix: str,
) -> None:
    system, args = probing
    real_open = os.open

    def fake_open(path: str, flags: int, *rest: Any, **kwargs: Any) -> int:
        if path == args["cache_file"] and flags & os.O_WRONLY:
            raise OSError(err, os.strerror(err), path)
        return real_open(path, flags, *rest, **kwargs)

    monkeypatch.setattr(lab_vm_accel.os, "open", fake_open)
    result = run_module(lab_vm_accel, args, capsys, system)
    assert result.get("failed") is not True and result["accel"] == "kvm"
    (warning,) = system.warnings
    assert warning.startswith(
        f"could not save the KVM probe's verdict in {args['cache_file']}: {os.strerror(err)}"
    )
    assert "the next one probes again" in warning and fix in warning


def test_a_link_at_the_cache_file_is_never_followed(
    probing: tuple[FakeSystem, dict[str, object]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    system, args = probing
    victim = tmp_path / "victim"
    victim.write_text('{"key": "x", "accel": "tcg", "reason": "planted"}')
    Path(str(args["cache_file"])).symlink_to(victim)
    result = run_module(lab_vm_accel, args, capsys, system)
    assert (result["accel"], result["cached"]) == ("kvm", False)  # probed: the link was not read
    assert victim.read_text() == '{"key": "x", "accel": "tcg", "reason": "planted"}'
    (warning,) = system.warnings
    assert "Too many levels of symbolic links" in warning and "remove it" in warning
