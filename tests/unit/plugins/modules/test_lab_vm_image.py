"""Unit tests for plugins/modules/lab_vm_image.py: the image key, the mmdebstrap command and its hook, the
explanation of a failed build, the root filesystem's customization, the build, the image's lock, the
clean-up of killed builds, disk space, errors.

Nothing here builds an image: the pure functions get captured tool output (tests/unit/data/image-builds/),
the build is run with run_logged replaced by FakeTools, and every test runs in well under a second. The
clean-up tests mount tmpfs and bind mounts in a tmp_path, so they need root and are skipped without it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System
from ansible_collections.chardev_lab.lab.plugins.modules import lab_vm_image
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    FakeStatvfs,
    data_text,
    kernel_text,
    python_env,
    run_module,
)

RELEASE = "6.1.0-56-amd64"
MIRROR = "http://mirror.example.org/debian"
PROXY = "http://127.0.0.1:3142/debian"

# The log of a build whose mirror cannot be resolved (mmdebstrap 1.3.5 on bookworm, network without DNS).
LOG_DNS_FAILURE = data_text("image-builds", "mmdebstrap-dns-failure.log")
# The log of a build whose root filesystem does not fit (mkfs.ext4 -d of e2fsprogs 1.47.0).
LOG_DISK_TOO_SMALL = data_text("image-builds", "mkfs-disk-too-small.log")
LOG_NO_SUCH_PACKAGE = data_text("image-builds", "mmdebstrap-no-such-package.log")
# The last step of a bookworm build that ran out of room on the control node's disk (dpkg inside
# mmdebstrap's chroot names paths inside the root filesystem, on the host's disk).
LOG_HOST_FULL_DPKG = data_text("image-builds", "dpkg-host-disk-full.log")
# mkfs.ext4 -d of e2fsprogs 1.47.0 writing the image onto a full 8 MiB tmpfs (captured on this machine).
LOG_HOST_FULL_MKFS = data_text("image-builds", "mkfs-host-disk-full.log")
# The same with room on the host but an image too small for the files (captured the same way).
LOG_IMAGE_FULL_MKFS = data_text("image-builds", "mkfs-image-full.log")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def fake_rootfs(root: Path, mirror: str) -> Path:
    """What mmdebstrap leaves: host keys from openssh-server's postinst, a sources.list, a symlinked
    resolv.conf (pointing outside the root, as systemd-resolved's does)."""
    (root / "etc/ssh").mkdir(parents=True)
    for name in (
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
    ):
        (root / "etc/ssh" / name).write_text("secret\n")
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin prohibit-password\n")
    (root / "etc/apt").mkdir(parents=True)
    (root / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm main\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    return root


class FakeTools:
    """Stands in for run_logged: records the commands, makes what the real tools make (mmdebstrap a root
    filesystem with its kernel, mkfs.ext4 the disk), fails on request. mmdebstrap waits for `go` when
    `hold` is set (so that a test can look at a build in progress); fail_at names a tool that fails with
    its usual output, `fail` maps a tool to the output it prints before failing."""

    def __init__(self, fail_at: str = "", hold: bool = False, fail: dict[str, str] | None = None) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.fail = dict(fail or {})
        if fail_at:
            usual = {"mmdebstrap": LOG_DNS_FAILURE, "mkfs.ext4": LOG_DISK_TOO_SMALL.splitlines()[-1] + "\n"}
            self.fail[fail_at] = usual.get(fail_at, "failed\n")
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], log: Any) -> int:
        self.commands.append(cmd)
        log.write(f"$ {' '.join(cmd)}\n")
        tool = cmd[0]
        if tool == "mmdebstrap":
            self.started.set()
            assert self.go.wait(10)
        if tool in self.fail:
            log.write(self.fail[tool])
            return 1
        if tool == "mmdebstrap":
            # The positional arguments: suite, root directory[, mirror].
            positional = [a for a in cmd[1:] if not a.startswith("--")]
            rootdir = fake_rootfs(Path(positional[1]), positional[2] if len(positional) > 2 else MIRROR)
            (rootdir / "boot").mkdir()
            (rootdir / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"kernel")
            (rootdir / "boot" / f"initrd.img-{RELEASE}").write_bytes(b"initrd")
        elif tool == "mkfs.ext4":
            Path(cmd[-2]).write_bytes(b"ext4")
        return 0

    def builds(self) -> int:
        return sum(cmd[0] == "mmdebstrap" for cmd in self.commands)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory, with the checks for tools and root passed and a short lock poll."""
    monkeypatch.setattr(lab_vm_image, "require_build_tools", lambda: None)
    monkeypatch.setattr(lab_vm_image, "LOCK_POLL_SECONDS", 0.02)
    return tmp_path / "cache"


def params(cache: Path, **changed: Any) -> dict[str, Any]:
    return {
        "suite": "bookworm",
        "mirror": "",
        "packages": [],
        "size": "4G",
        "cache_dir": str(cache),
        "wait_timeout": 30,
        **changed,
    }


def key_of(p: dict[str, Any]) -> str:
    return lab_vm_image.image_key(p["suite"], p["mirror"], p["packages"], p["size"])


def in_thread(target: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = target(*args)
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------
# The image key, the build's commands, its failures
# ---------------------------------------------------------------------------------------------------


def test_image_key_is_stable() -> None:
    key = lab_vm_image.image_key("bookworm", MIRROR, ["strace", "gdb"], "4G")
    assert key == lab_vm_image.image_key("bookworm", MIRROR, ["strace", "gdb"], "4G")
    # Order and duplicates of the extra packages do not matter, nor naming a base package again.
    assert key == lab_vm_image.image_key("bookworm", MIRROR, ["gdb", "strace", "gdb", "kmod"], "4G")
    prefix, digest = key.split("-")
    assert prefix == "bookworm"
    assert len(digest) == 16
    int(digest, 16)


@pytest.mark.parametrize(
    "changed",
    [
        {"suite": "trixie"},
        {"mirror": PROXY},
        {"mirror": ""},
        {"packages": ["strace", "gdb", "vim"]},
        {"packages": []},
        {"size": "6G"},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_image_key_changes_with_each_input(changed: dict[str, Any]) -> None:
    base = {"suite": "bookworm", "mirror": MIRROR, "packages": ["strace", "gdb"], "size": "4G"}
    assert lab_vm_image.image_key(**base) != lab_vm_image.image_key(**{**base, **changed})


def test_image_key_changes_with_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    before = lab_vm_image.image_key("bookworm", MIRROR, [], "4G")
    monkeypatch.setattr(lab_vm_image, "RECIPE_VERSION", lab_vm_image.RECIPE_VERSION + 1)
    assert lab_vm_image.image_key("bookworm", MIRROR, [], "4G") != before


@pytest.mark.parametrize(
    ("mirror", "guest"),
    [
        (PROXY, "http://10.0.2.2:3142/debian"),
        ("http://localhost:3142/debian", "http://10.0.2.2:3142/debian"),
        ("http://localhost/debian", "http://10.0.2.2/debian"),
        ("http://127.0.0.1", "http://10.0.2.2"),
        ("http://localhost:3142", "http://10.0.2.2:3142"),
        (MIRROR, MIRROR),
        ("http://localhost.example.org/debian", "http://localhost.example.org/debian"),
        ("http://127.0.0.10/debian", "http://127.0.0.10/debian"),
        ("", ""),
    ],
)
def test_guest_mirror(mirror: str, guest: str) -> None:
    assert lab_vm_image.guest_mirror(mirror) == guest


def test_mmdebstrap_command() -> None:
    cmd = lab_vm_image.mmdebstrap_command("trixie", PROXY, ["strace", "build-essential"], "/tmp/root")
    include = ",".join(sorted({*lab_vm_image.BASE_PACKAGES, "strace"}))
    assert cmd == [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--include={include}",
        f"--essential-hook={lab_vm_image.initramfs_hook()}",
        "--",
        "trixie",
        "/tmp/root",
        PROXY,
    ]
    assert "linux-image-amd64" in cmd[3].split(",")
    # No mirror: mmdebstrap chooses its own.
    assert lab_vm_image.mmdebstrap_command("bookworm", "", [], "/r")[-2:] == ["bookworm", "/r"]


def test_initramfs_hook_writes_a_small_initramfs_config(tmp_path: Path) -> None:
    """The essential hook, run as mmdebstrap runs it (sh -c HOOK exec ROOTDIR), leaves MODULES=list and
    an executable initramfs-tools hook that force-loads the root disk's and filesystem's modules."""
    subprocess.run(["sh", "-c", lab_vm_image.initramfs_hook(), "exec", str(tmp_path)], check=True)
    conf = tmp_path / "etc/initramfs-tools/conf.d/chardev-lab"
    hook = tmp_path / "etc/initramfs-tools/hooks/chardev-lab"
    assert conf.read_text() == "MODULES=list\n"
    assert hook.read_text() == lab_vm_image.INITRAMFS_HOOK
    assert hook.read_text().startswith("#!/bin/sh\n")
    assert [line.split()[1] for line in hook.read_text().splitlines() if line.startswith("force_load")] == [
        "virtio_pci",
        "virtio_blk",
        "ext4",
    ]
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    # The hook answers initramfs-tools' prereqs query with nothing and exits 0.
    assert subprocess.run(["sh", str(hook), "prereqs"], capture_output=True, check=True).stdout == b""


@pytest.mark.parametrize(
    ("log", "wanted"),
    [
        (LOG_DNS_FAILURE, "the Debian mirror could not be reached"),
        (LOG_DISK_TOO_SMALL, "the root filesystem does not fit in the disk image"),
        (LOG_NO_SUCH_PACKAGE, "a package in lab_vm_image_packages does not exist"),
        ("I: something else went wrong\n", "the image build failed"),
    ],
    ids=["dns", "disk-too-small", "no-such-package", "unknown"],
)
def test_explain_failure(log: str, wanted: str) -> None:
    assert lab_vm_image.explain_failure(log).startswith(wanted)


def test_explain_failure_names_the_fix() -> None:
    assert "lab_vm_mirror" in lab_vm_image.explain_failure(LOG_DNS_FAILURE)
    assert "lab_vm_image_size" in lab_vm_image.explain_failure(LOG_DISK_TOO_SMALL)


def test_explain_failure_reads_only_the_failed_step() -> None:
    # mmdebstrap succeeded despite a warning about one index; then mkfs.ext4 ran out of space.
    log = LOG_DISK_TOO_SMALL.replace(
        "I: running apt-get update...\n",
        "I: running apt-get update...\nW: Failed to fetch http://mirror.example.org/debian/dists/"
        "bookworm-updates/InRelease  Temporary failure resolving 'mirror.example.org'\n",
    )
    assert "Failed to fetch" in log
    assert "raise lab_vm_image_size" in lab_vm_image.explain_failure(log)


def test_tail() -> None:
    text = "".join(f"line {n}\n" for n in range(40))
    assert lab_vm_image.tail(text, 3) == "line 37\nline 38\nline 39"


def test_customize_rootfs(tmp_path: Path) -> None:
    root = fake_rootfs(tmp_path / "rootfs", PROXY)
    lab_vm_image.customize_rootfs(str(root), PROXY)
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (root / "etc/apt/sources.list").read_text() == "deb http://10.0.2.2:3142/debian bookworm main\n"
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink()
    assert resolv.read_text() == "nameserver 10.0.2.3\n"
    assert (root / "etc/fstab").read_text().startswith("/dev/vda / ext4 ")
    assert (root / "etc/hostname").read_text() == "lab-vm\n"
    assert "DHCP=ipv4" in (root / "etc/systemd/network/10-lab.network").read_text()
    seed = (root / "etc/systemd/system/chardev-lab-seed.service").read_text()
    assert "opt/chardev-lab/seed" in seed
    assert "Before=ssh.service" in seed
    assert stat.S_IMODE((root / "etc/hostname").stat().st_mode) == 0o644
    assert (root / "root/.ssh").is_dir()
    assert 'APT::Install-Recommends "false";' in (root / "etc/apt/apt.conf.d/90chardev-lab").read_text()


def test_customize_rootfs_keeps_a_public_mirror(tmp_path: Path) -> None:
    root = fake_rootfs(tmp_path / "rootfs", MIRROR)
    lab_vm_image.customize_rootfs(str(root), MIRROR)
    assert (root / "etc/apt/sources.list").read_text() == f"deb {MIRROR} bookworm main\n"


def build(tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    cache = tmp_path / "cache"
    cache.mkdir()
    key = lab_vm_image.image_key("bookworm", PROXY, [], "4G")
    lab_vm_image.build_image("bookworm", PROXY, [], "4G", str(cache), key, str(cache / f"{key}.log"))
    return cache, key


@pytest.mark.parametrize("fail_at", ["mmdebstrap", "chroot", "mkfs.ext4"])
def test_build_image_leaves_nothing_behind_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    tools = FakeTools(fail_at=fail_at)
    with pytest.raises(lab_vm_image.BuildError) as raised:
        build(tmp_path, tools, monkeypatch)
    cache = tmp_path / "cache"
    key = lab_vm_image.image_key("bookworm", PROXY, [], "4G")
    # Only the log stays, to explain the failure.
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.log"]
    assert str(raised.value) == {"mkfs.ext4": "mkfs.ext4", "mmdebstrap": "mmdebstrap"}.get(
        fail_at, "systemctl enable"
    )
    assert tools.commands[-1][0] == fail_at


def test_build_image_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(lab_vm_image.BuildError):
        build(tmp_path, FakeTools(fail_at="mkfs.ext4"), monkeypatch)
    log = next((tmp_path / "cache").glob("*.log")).read_text()
    assert "raise lab_vm_image_size" in lab_vm_image.explain_failure(log)


def test_build_image_leaves_nothing_behind_on_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(cmd: list[str], log: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(lab_vm_image, "run_logged", interrupted)
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(KeyboardInterrupt):
        lab_vm_image.build_image("bookworm", "", [], "4G", str(cache), "k", str(cache / "k.log"))
    assert sorted(p.name for p in cache.iterdir()) == ["k.log"]


def test_build_image_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = FakeTools()
    cache, key = build(tmp_path, tools, monkeypatch)
    # The units a lab VM does not need are masked in the image (issue 9: boot time).
    masks = [c for c in tools.commands if c[0] == "chroot" and c[2:4] == ["systemctl", "mask"]]
    assert [c[4:] for c in masks] == [list(lab_vm_image.MASKED_UNITS)]
    assert "e2scrub_reap.service" in lab_vm_image.MASKED_UNITS
    image = cache / key
    assert sorted(p.name for p in cache.iterdir()) == sorted([key, f"{key}.log"])
    assert sorted(p.name for p in image.iterdir()) == ["disk.raw", "initrd.img", "manifest.json", "vmlinuz"]
    assert stat.S_IMODE((image / "disk.raw").stat().st_mode) == 0o444
    assert (image / "vmlinuz").read_bytes() == b"kernel"
    assert lab_vm_image.kernel_release_of(str(image)) == RELEASE
    manifest = json.loads((image / "manifest.json").read_text())
    assert manifest["mirror"] == PROXY
    assert manifest["recipe"] == lab_vm_image.RECIPE_VERSION
    # The manifest, written last, records what makes the image a finished one.
    assert manifest["bytes"] == {"disk.raw": 4, "vmlinuz": 6, "initrd.img": 6}
    assert lab_vm_image.finished_image(str(image), key) == manifest
    # The disk and its size reach mkfs.ext4 after "--": never taken for options.
    (mkfs,) = [c for c in tools.commands if c[0] == "mkfs.ext4"]
    assert mkfs[-3:] == ["--", mkfs[-2], "4G"] and mkfs[-2].endswith("/disk.raw")


def test_kernel_release_of_missing_manifest(tmp_path: Path) -> None:
    assert lab_vm_image.kernel_release_of(str(tmp_path)) == ""
    (tmp_path / "manifest.json").write_text("{not json")
    assert lab_vm_image.kernel_release_of(str(tmp_path)) == ""


def test_remove_stale_builds(tmp_path: Path) -> None:
    dead = tmp_path / ".bookworm-0123456789abcdef.tmp-999999999"  # above any pid_max
    alive = tmp_path / f".trixie-0123456789abcdef.tmp-{os.getpid()}"
    garbage = tmp_path / ".bookworm-0123456789abcdef.tmp-x"
    image = tmp_path / "bookworm-0123456789abcdef"
    for directory in (dead, alive, garbage, image):
        (directory / "rootfs/etc").mkdir(parents=True)
    (tmp_path / "bookworm-0123456789abcdef.log").write_text("log\n")
    lab_vm_image.remove_stale_builds(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, image.name, "bookworm-0123456789abcdef.log"]
    )


# ---------------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------------


def test_second_run_waits_for_the_first_build_and_reuses_its_image(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = FakeTools(hold=True)
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    p = params(cache)
    first, first_out = in_thread(lab_vm_image.run, p, False, System())
    assert tools.started.wait(5)

    # The plan (check mode) sees the build in progress instead of planning a second one.
    plan = lab_vm_image.run(p, True, System())
    assert plan["changed"] is True
    assert plan["building"]["pid"] == os.getpid()
    assert plan["building"]["running"] is True
    assert plan["building"]["log"] == str(cache / f"{key_of(p)}.log")
    assert plan["building"]["since"]

    second, second_out = in_thread(lab_vm_image.run, p, False, System())
    time.sleep(0.2)
    assert second.is_alive(), second_out  # waiting for the lock, not building
    assert tools.builds() == 1

    tools.go.set()
    first.join(5)
    second.join(5)
    assert "error" not in first_out and "error" not in second_out, (first_out, second_out)
    built, reused = first_out["result"], second_out["result"]
    assert built["changed"] is True and built["kernel_release"] == RELEASE
    assert reused["changed"] is False and reused["kernel_release"] == RELEASE
    assert reused["waited"] > 0
    assert tools.builds() == 1
    key = key_of(p)
    assert sorted(x.name for x in cache.iterdir()) == sorted([key, f"{key}.lock", f"{key}.log"])
    # Nobody holds the lock any more: the plan sees the image.
    assert lab_vm_image.run(p, True, System())["changed"] is False


def test_the_wait_is_bounded_and_names_the_holder(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = FakeTools()
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    p = params(cache, wait_timeout=0)
    key = key_of(p)
    cache.mkdir()
    holder = lab_vm_image.ImageLock(str(cache), key)
    holder.acquire(0, "/somewhere/holder.log")
    try:
        with pytest.raises(lab_vm_image.ImageError) as raised:
            lab_vm_image.run(p, False, System())
    finally:
        holder.release()
    msg = str(raised.value)
    assert f"pid {os.getpid()} (running)" in msg
    assert "since " in msg and "s ago" in msg
    assert "tail -f /somewhere/holder.log" in msg
    assert f"kill {os.getpid()}" in msg
    assert tools.commands == []


def test_plan_in_an_empty_cache_creates_nothing(cache: Path) -> None:
    plan = lab_vm_image.run(params(cache), True, System())
    assert plan["changed"] is True
    assert plan["building"] == {}
    assert not cache.exists()


def test_build_tools_inherit_the_lock(tmp_path: Path) -> None:
    lock = lab_vm_image.ImageLock(str(tmp_path), "k")
    lock.acquire(0, "")
    try:
        with (tmp_path / "fds.log").open("w") as log:
            lab_vm_image.run_logged(["sh", "-c", "ls -l /proc/self/fd/"], log)
    finally:
        lock.release()
    assert str(tmp_path / "k.lock") in (tmp_path / "fds.log").read_text()


# An async job's build in its own Python, which imports the collection by its name (python_env).
HOLDER = """
import sys
from ansible_collections.chardev_lab.lab.plugins.modules import lab_vm_image
lock = lab_vm_image.ImageLock(sys.argv[1], "k")
lock.acquire(0, "")
with open(sys.argv[2], "w") as log:
    lab_vm_image.run_logged(["sh", "-c", "echo $$ > " + sys.argv[3] + "; exec sleep 30"], log)
"""


def test_a_killed_build_stops_its_tools_and_frees_the_lock(tmp_path: Path) -> None:
    """What SIGKILL of the async job does: its mmdebstrap gets SIGTERM (to clean up), the lock is free."""
    pidfile = tmp_path / "tool.pid"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), str(tmp_path / "log"), str(pidfile)], env=python_env()
    )
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
        tool = int(pidfile.read_text())
        assert lab_vm_image.build_in_progress(str(tmp_path), "k")["pid"] == proc.pid
        proc.kill()
        proc.wait()
        wait_for(lambda: not lab_vm_image.pid_running(tool) or "Z" in Path(f"/proc/{tool}/stat").read_text())
        wait_for(lambda: lab_vm_image.build_in_progress(str(tmp_path), "k") == {})
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------
# Clean-up of killed builds
# ---------------------------------------------------------------------------------------------------

DEAD = 999_999_999  # above any pid_max


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points made by a test: whatever is still mounted at the end is unmounted."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


def mount(mounts: list[Path], *args: str) -> None:
    subprocess.run(["mount", *args], check=True)
    mounts.append(Path(args[-1]))


def outside_dir(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep\n")
    (outside / "sub/keep.txt").write_text("keep\n")
    return outside


def assert_intact(outside: Path) -> None:
    assert (outside / "keep.txt").read_text() == "keep\n"
    assert (outside / "sub/keep.txt").read_text() == "keep\n"


@needs_root
def test_stale_build_is_unmounted_before_it_is_removed(tmp_path: Path, mounts: list[Path]) -> None:
    """What a SIGKILLed mmdebstrap --mode=root leaves: mounts in its root filesystem (here a tmpfs with
    one stacked inside, and a bind mount of a directory that must survive)."""
    outside = outside_dir(tmp_path)
    cache = tmp_path / "cache"
    stale = cache / f".bookworm-0123456789abcdef.tmp-{DEAD}"
    root = stale / "rootfs"
    for sub in ("proc", "dev", "etc"):
        (root / sub).mkdir(parents=True)
    (root / "etc/hostname").write_text("x\n")
    mount(mounts, "-t", "tmpfs", "tmpfs", str(root / "proc"))
    (root / "proc/sys").mkdir()
    mount(mounts, "-t", "tmpfs", "tmpfs", str(root / "proc/sys"))
    mount(mounts, "--bind", str(outside), str(root / "dev"))

    removed = lab_vm_image.remove_stale_builds(str(cache))

    assert list(removed) == [str(stale)]
    unmounted = removed[str(stale)]
    assert unmounted[0] == str(root / "proc/sys")  # deepest first
    assert sorted(unmounted[1:]) == [str(root / "dev"), str(root / "proc")]
    assert not stale.exists()
    assert_intact(outside)
    assert lab_vm_image.mount_points_below(str(tmp_path)) == []


@needs_root
def test_removal_never_descends_into_a_mount(tmp_path: Path, mounts: list[Path]) -> None:
    """A bind mount of the same filesystem (same st_dev) and a tmpfs: both left, with their content."""
    outside = outside_dir(tmp_path)
    tree = tmp_path / "tree"
    (tree / "a/bind").mkdir(parents=True)
    (tree / "a/file").write_text("x\n")
    (tree / "tmpfs").mkdir()
    mount(mounts, "--bind", str(outside), str(tree / "a/bind"))
    mount(mounts, "-t", "tmpfs", "tmpfs", str(tree / "tmpfs"))
    (tree / "tmpfs/keep.txt").write_text("keep\n")

    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.remove_tree(str(tree))

    assert "umount --lazy" in str(raised.value)
    assert_intact(outside)
    assert (tree / "tmpfs/keep.txt").read_text() == "keep\n"
    assert not (tree / "a/file").exists()


def test_removal_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = outside_dir(tmp_path)
    cache = tmp_path / "cache"
    stale = cache / f".bookworm-0123456789abcdef.tmp-{DEAD}"
    (stale / "rootfs/etc").mkdir(parents=True)
    (stale / "rootfs/etc/resolv.conf").symlink_to(outside / "keep.txt")
    (stale / "rootfs/lib").symlink_to(outside)
    (stale / "rootfs/lib64").symlink_to(outside / "sub")
    # A "build directory" that is itself a link out of the cache: the link goes, its target stays.
    linked = cache / f".trixie-0123456789abcdef.tmp-{DEAD}"
    linked.symlink_to(outside)

    lab_vm_image.remove_stale_builds(str(cache))

    assert sorted(cache.iterdir()) == []
    assert_intact(outside)


def test_a_build_whose_tools_still_hold_the_lock_is_not_stale(tmp_path: Path) -> None:
    """Its module process is gone (killed) but its mmdebstrap still runs, holding the inherited lock."""
    key = "bookworm-0123456789abcdef"
    stale = tmp_path / f".{key}.tmp-{DEAD}"
    (stale / "rootfs/etc").mkdir(parents=True)
    lock = lab_vm_image.ImageLock(str(tmp_path), key)
    lock.acquire(0, "")
    try:
        assert lab_vm_image.remove_stale_builds(str(tmp_path)) == {}
        assert stale.is_dir()
        # The run that holds this key's lock itself cleans up the key's leftovers.
        assert lab_vm_image.remove_stale_builds(str(tmp_path), own_key=key) == {str(stale): []}
    finally:
        lock.release()
    assert not stale.exists()


def test_a_new_build_cleans_up_after_a_killed_one(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = FakeTools()
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    p = params(cache)
    key = key_of(p)
    stale = cache / f".{key}.tmp-{DEAD}"
    (stale / "rootfs/etc").mkdir(parents=True)
    (cache / f"{key}.lock").write_text(json.dumps({"pid": DEAD, "since": "2026-11-26T10:00:00", "log": ""}))

    result = lab_vm_image.run(p, False, System())

    assert result["changed"] is True
    assert not stale.exists()
    log = (cache / f"{key}.log").read_text()
    assert f"removed {stale}, left by a build that was killed" in log
    assert f"the previous build of this image (pid {DEAD}) did not finish" in log


def test_mount_points_below_reads_mountinfo() -> None:
    # Captured from /proc/self/mountinfo during a bookworm build (mmdebstrap 1.3.5, --mode=root); one
    # path with a space, as mountinfo escapes it.
    mountinfo = kernel_text("bookworm", "proc-self-mountinfo-image-build.txt")
    assert lab_vm_image.mount_points_below("/c/.k.tmp-7", mountinfo) == [
        "/c/.k.tmp-7/rootfs/proc/sys/fs/binfmt_misc",
        "/c/.k.tmp-7/rootfs/dev/null",
        "/c/.k.tmp-7/rootfs/proc",
        "/c/.k.tmp-7/rootfs/sys",
    ]
    assert lab_vm_image.mount_points_below("/c/with space", mountinfo) == ["/c/with space/.k.tmp-7"]


# ---------------------------------------------------------------------------------------------------
# Disk space
# ---------------------------------------------------------------------------------------------------


def test_not_enough_free_space_is_refused_before_the_build(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = FakeTools()
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    monkeypatch.setattr(lab_vm_image.os, "statvfs", lambda path: FakeStatvfs(1 << 30))
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache), False, System())
    msg = str(raised.value)
    assert msg.startswith(f"not enough free space to build the VM image: {cache} has 1.0 GiB free")
    assert "needs about 3.0 GiB" in msg
    assert "lab_vm_cache_dir" in msg
    assert tools.commands == []


def test_space_needed() -> None:
    rootfs = lab_vm_image.ROOTFS_BYTES
    assert lab_vm_image.space_needed("4G") == 2 * rootfs
    assert lab_vm_image.space_needed("600M") == rootfs + 600 * (1 << 20)
    assert lab_vm_image.space_needed("1000000") == 2 * rootfs  # a block count: the estimate


@pytest.mark.parametrize("log", [LOG_HOST_FULL_DPKG, LOG_HOST_FULL_MKFS], ids=["dpkg", "mkfs"])
def test_host_disk_full_is_not_blamed_on_the_image_size(log: str) -> None:
    hint = lab_vm_image.explain_failure(log)
    assert hint.startswith("the control node's disk is full")
    assert "lab_vm_cache_dir" in hint
    assert "raising lab_vm_image_size would not help" in hint


def test_image_full_is_blamed_on_the_image_size() -> None:
    assert lab_vm_image.explain_failure(LOG_IMAGE_FULL_MKFS, free_bytes=50 << 30) == (
        lab_vm_image.IMAGE_TOO_SMALL
    )


def test_almost_no_free_space_at_the_failure_means_the_host_disk() -> None:
    hint = lab_vm_image.explain_failure("$ mkfs.ext4 ...\nmkfs.ext4: Input/output error\n", 1 << 20)
    assert hint.startswith("the control node's disk is full")
    assert "1 MiB was free in the cache when it failed" in hint


def test_a_failed_build_reports_the_free_space_at_the_failure(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = FakeTools(fail={"mkfs.ext4": LOG_HOST_FULL_MKFS.split("\n", 1)[1]})
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    monkeypatch.setattr(lab_vm_image, "check_free_space", lambda cache_dir, size: None)
    monkeypatch.setattr(lab_vm_image.os, "statvfs", lambda path: FakeStatvfs(8 << 20))
    p = params(cache)
    with pytest.raises(lab_vm_image.BuildError) as raised:
        lab_vm_image.run(p, False, System())
    assert raised.value.free_bytes == 8 << 20
    msg = lab_vm_image.failure_message(raised.value, str(cache / f"{key_of(p)}.log"))
    assert msg.startswith("the control node's disk is full")
    assert "8 MiB was free" in msg
    assert "step mkfs.ext4 failed" in msg


# ---------------------------------------------------------------------------------------------------
# OSError: a message naming the operation and the path, never a traceback
# ---------------------------------------------------------------------------------------------------


def test_cache_dir_under_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_vm_image, "require_build_tools", lambda: None)
    (tmp_path / "file").write_text("")
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(tmp_path / "file/cache"), False, System())
    msg = str(raised.value)
    assert msg.startswith(f"creating the image cache {tmp_path}/file/cache failed: Not a directory")
    assert "fix lab_vm_cache_dir" in msg


def test_disk_full_while_copying_the_kernel(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_vm_image, "run_logged", FakeTools())

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(lab_vm_image, "copy_file", full)
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache), False, System())
    msg = str(raised.value)
    assert msg.startswith("copying the kernel and initrd into ")
    assert "failed: No space left on device (" in msg and "/vmlinuz)" in msg
    assert "the disk is full" in msg
    # Nothing half-made is left; the lock and the log stay.
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".log"]


def test_main_fails_with_a_message_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab_vm_image, "require_build_tools", lambda: None)
    (tmp_path / "file").write_text("")
    out = run_module(lab_vm_image, {"cache_dir": str(tmp_path / "file/cache")}, capsys)
    assert out["failed"] is True
    assert out["msg"].startswith("creating the image cache")
    assert "Traceback" not in out["msg"]
    assert out["key"].startswith("bookworm-")
    assert out["log"].endswith(".log")


def test_describe_os_error_without_a_path() -> None:
    msg = lab_vm_image.describe_os_error("reading x", OSError(errno.EIO, "Input/output error"))
    assert msg == "reading x failed: Input/output error: check that path and run again"


# ---------------------------------------------------------------------------------------------------
# The mirror and the size: checked where they enter (they reach mmdebstrap and mkfs.ext4)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mirror",
    ["", MIRROR, PROXY, "https://deb.debian.org/debian", "http://[2001:db8::1]:3142/debian/"],
)
def test_mirrors_that_are_urls_pass(mirror: str) -> None:
    lab_vm_image.check_inputs(mirror, "4G")


@pytest.mark.parametrize(
    "mirror",
    [
        "--include=evil",
        "-",
        "ftp://deb.example/debian",
        "deb.example/debian",
        "http://",
        "http:///debian",
        "http://deb.example/deb ian",
        "http://deb.example/debian\nhttp://other",
        "http://deb.example:99999/debian",
        "http://[::1/debian",
    ],
)
def test_mirrors_that_are_not_urls_are_refused(cache: Path, mirror: str) -> None:
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache, mirror=mirror), True, System())
    assert str(raised.value).startswith(f"lab_vm_mirror {mirror!r} is not a mirror URL: it must be an http")
    assert "fix lab_vm_mirror" in str(raised.value)
    assert not cache.exists()


@pytest.mark.parametrize("size", ["4G", "6000M", "512k", "1000000"])
def test_sizes_pass(size: str) -> None:
    lab_vm_image.check_inputs("", size)


@pytest.mark.parametrize("size", ["", "--help", "-4G", "0", "4 G", "4GB", "4T", "4G\n", "0x10G"])
def test_sizes_that_are_not_sizes_are_refused(cache: Path, size: str) -> None:
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache, size=size), True, System())
    assert str(raised.value).startswith(f"lab_vm_image_size {size!r} is not a size: it must be a number")
    assert not cache.exists()


# ---------------------------------------------------------------------------------------------------
# A cache that another user could change, planted links, planted images
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_cache_others_can_write_to_is_refused(cache: Path, mode: int) -> None:
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache), True, System())
    msg = str(raised.value)
    assert msg.startswith(f"refusing the image cache {cache}: {cache} is owned by ")
    assert f"with mode {mode & 0o7777:04o}, writable by " in msg
    assert f"chmod go-w {cache}" in msg and "lab_vm_cache_dir" in msg


def test_a_parent_others_can_write_to_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_vm_image, "require_build_tools", lambda: None)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(shared / "a/cache"), False, System())
    assert f"{shared} is owned by " in str(raised.value)
    assert "writable by its group and every user" in str(raised.value)
    assert not (shared / "a").exists()  # refused before anything is made in it


def test_a_sticky_parent_is_fine(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: others cannot replace what is this user's
    plan = lab_vm_image.run(params(shared / "cache"), True, System())
    assert plan["changed"] is True


def test_a_link_to_a_cache_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "cache").mkdir(parents=True)
    shared.chmod(0o777)
    (tmp_path / "link").symlink_to(shared / "cache")
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(tmp_path / "link"), True, System())
    assert f"{shared} is owned by " in str(raised.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_cache_of_another_user_is_refused(cache: Path) -> None:
    cache.mkdir()
    os.chown(cache, 65534, 65534)
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache), True, System())
    assert f"{cache} is owned by {lab_vm_image.owner_name(65534)}, not by root, so " in str(raised.value)


def test_the_cache_chain_stops_at_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    me = lab_vm_image.pwd.getpwuid(os.geteuid())
    moved = lab_vm_image.pwd.struct_passwd((*me[:5], str(home), me[6]))
    monkeypatch.setattr(lab_vm_image.pwd, "getpwuid", lambda uid: moved)
    chain = lab_vm_image.cache_dir_chain(str(home / ".cache/chardev-lab/images"))
    assert chain == [
        str(home / ".cache/chardev-lab/images"),
        str(home / ".cache/chardev-lab"),
        str(home / ".cache"),
        str(home),
    ]
    assert lab_vm_image.cache_dir_chain("/var/cache/x")[-1] == "/"


@pytest.mark.parametrize("name", ["lock", "log"])
def test_a_planted_link_is_never_followed(cache: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(lab_vm_image, "run_logged", FakeTools())
    cache.mkdir()
    victim = cache.parent / "victim"
    victim.write_text("precious\n")
    key = key_of(params(cache))
    (cache / f"{key}.{name}").symlink_to(victim)
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache), False, System())
    assert "Too many levels of symbolic links" in str(raised.value)
    assert f"{cache}/{key}.{name}" in str(raised.value)
    assert victim.read_text() == "precious\n"
    assert not (cache / key).exists()


def test_a_link_at_the_lock_is_not_followed_in_check_mode(cache: Path) -> None:
    cache.mkdir()
    victim = cache.parent / "victim"
    victim.write_text('{"pid": 1}')
    (cache / f"{key_of(params(cache))}.lock").symlink_to(victim)
    with pytest.raises(lab_vm_image.ImageError) as raised:
        lab_vm_image.run(params(cache), True, System())
    assert "Too many levels of symbolic links" in str(raised.value)


def planted_image(cache: Path, key: str, manifest: dict[str, Any] | None = None) -> Path:
    image = cache / key
    image.mkdir(parents=True)
    for name in ("disk.raw", "vmlinuz", "initrd.img"):
        (image / name).write_bytes(b"planted")
    if manifest is not None:
        (image / "manifest.json").write_text(json.dumps(manifest))
    return image


@pytest.mark.parametrize(
    "manifest",
    [
        None,
        {"key": "other", "recipe": lab_vm_image.RECIPE_VERSION, "bytes": {}},
        {"recipe": 3, "kernel_release": RELEASE},  # an image of the recipe before the marker
        {"bytes": {"disk.raw": 4096, "vmlinuz": 7, "initrd.img": 7}},  # sizes that are not the files'
    ],
    ids=["no-manifest", "other-key", "old-recipe", "wrong-sizes"],
)
def test_a_directory_without_the_marker_is_no_image(
    cache: Path, monkeypatch: pytest.MonkeyPatch, manifest: dict[str, Any] | None
) -> None:
    tools = FakeTools()
    monkeypatch.setattr(lab_vm_image, "run_logged", tools)
    p = params(cache)
    key = key_of(p)
    if manifest is not None:
        manifest = {"key": key, "recipe": lab_vm_image.RECIPE_VERSION, **manifest}
    image = planted_image(cache, key, manifest)
    plan = lab_vm_image.run(p, True, System())
    assert plan["changed"] is True and plan["kernel_release"] == ""
    built = lab_vm_image.run(p, False, System())
    assert built["changed"] is True and tools.builds() == 1
    # Replaced by the image the build made.
    assert (image / "vmlinuz").read_bytes() == b"kernel"
    assert lab_vm_image.finished_image(str(image), key)
    assert lab_vm_image.run(p, True, System())["changed"] is False


def test_a_planted_link_at_the_image_is_no_image(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_vm_image, "run_logged", FakeTools())
    p = params(cache)
    key = key_of(p)
    elsewhere = planted_image(cache.parent / "elsewhere", key)
    cache.mkdir()
    (cache / key).symlink_to(elsewhere)
    assert lab_vm_image.run(p, True, System())["changed"] is True
    lab_vm_image.run(p, False, System())
    assert not (cache / key).is_symlink()
    assert (elsewhere / "disk.raw").read_bytes() == b"planted"  # the link was removed, not followed


# ---------------------------------------------------------------------------------------------------
# The cache's writes on a full disk or a refused write: a message, never a traceback
# ---------------------------------------------------------------------------------------------------


def failing_open(monkeypatch: pytest.MonkeyPatch, suffix: str, err: int) -> None:
    real_open = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(suffix) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(lab_vm_image.os, "open", fake_open)


@pytest.mark.parametrize(
    ("suffix", "err", "what", "fix"),
    [
        (".lock", errno.ENOSPC, "opening the image lock", "the disk is full"),
        (".lock", errno.EACCES, "opening the image lock", "check the owner and mode of lab_vm_cache_dir"),
        (".log", errno.ENOSPC, "writing the build log", "the disk is full"),
        (".log", errno.EACCES, "writing the build log", "check the owner and mode of lab_vm_cache_dir"),
        ("manifest.json", errno.ENOSPC, "writing the image's manifest", "the disk is full"),
    ],
    ids=["lock-full", "lock-denied", "log-full", "log-denied", "manifest-full"],
)
def test_cache_writes_that_fail_are_answered(
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    err: int,
    what: str,
    fix: str,
) -> None:
    monkeypatch.setattr(lab_vm_image, "run_logged", FakeTools())
    failing_open(monkeypatch, suffix, err)
    out = run_module(lab_vm_image, {"cache_dir": str(cache)}, capsys)
    assert out["failed"] is True
    assert out["msg"].startswith(what), out["msg"]
    assert f"failed: {os.strerror(err)} (" in out["msg"] and fix in out["msg"]
    assert not (cache / out["key"]).exists()
