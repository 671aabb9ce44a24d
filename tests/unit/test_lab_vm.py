"""Unit tests for roles/lab_vm/library: lab_vm_image.py, lab_vm_instance.py and lab_vm_accel.py.

Nothing here builds an image or boots QEMU. The pure functions get captured tool output; the build is
run with run_logged replaced by a fake; the instance module runs through AnsibleModule with
patch_module_args in check mode (and once for real, up to the port check) in a tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lab_vm_accel
import lab_vm_image
import lab_vm_instance
import pytest
from ansible.module_utils.testing import patch_module_args

# ---------------------------------------------------------------------------------------------------
# lab_vm_image
# ---------------------------------------------------------------------------------------------------

MIRROR = "http://mirror.example.org/debian"
PROXY = "http://127.0.0.1:3142/debian"


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


# The log of a build whose mirror cannot be resolved (mmdebstrap 1.3.5 on bookworm, network without DNS).
LOG_DNS_FAILURE = """\
building bookworm-3f2a9c1d0b7e4a55: suite=bookworm mirror=http://mirror.example.org/debian
$ mmdebstrap --mode=root --variant=minbase --include=build-essential,iproute2,kmod bookworm /x/rootfs \
http://mirror.example.org/debian
I: chroot architecture amd64 is equal to the host's architecture
I: finding correct signed-by value...
I: automatically chosen format: directory
I: running apt-get update...
Ign:1 http://mirror.example.org/debian bookworm InRelease
Ign:1 http://mirror.example.org/debian bookworm InRelease
Ign:1 http://mirror.example.org/debian bookworm InRelease
Err:1 http://mirror.example.org/debian bookworm InRelease
  Temporary failure resolving 'mirror.example.org'
Reading package lists...
W: Failed to fetch http://mirror.example.org/debian/dists/bookworm/InRelease  Temporary failure \
resolving 'mirror.example.org'
W: Some index files failed to download. They have been ignored, or old ones used instead.
E: apt-get update failed
I: removing tempdir /tmp/mmdebstrap.GsnlWVbRMb...
"""

# The log of a build whose root filesystem does not fit (mkfs.ext4 -d of e2fsprogs 1.47.0).
LOG_DISK_TOO_SMALL = """\
building bookworm-3f2a9c1d0b7e4a55: suite=bookworm mirror=(mmdebstrap default)
$ mmdebstrap --mode=root --variant=minbase --include=build-essential,iproute2,kmod bookworm /x/rootfs
I: chroot architecture amd64 is equal to the host's architecture
I: running apt-get update...
done
I: downloading packages with apt...
done
I: extracting archives...
done
I: installing essential packages...
I: installing remaining packages inside the chroot...
done
I: cleaning package lists and apt cache...
done
done
$ chroot /x/rootfs systemctl enable systemd-networkd chardev-lab-seed
Created symlink /etc/systemd/system/multi-user.target.wants/chardev-lab-seed.service.
$ mkfs.ext4 -q -F -L chardev-lab -d /x/rootfs /x/disk.raw 600M
__populate_fs: Could not allocate block in ext2 filesystem while writing file "cc1"
mkfs.ext4: Could not allocate block in ext2 filesystem while populating file system
"""

LOG_NO_SUCH_PACKAGE = """\
I: running apt-get update...
done
I: downloading packages with apt...
E: Unable to locate package strace-nonexistent
E: apt-get --yes -oApt::Get::Download-Only=true install failed
"""


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


RELEASE = "6.1.0-56-amd64"


class FakeTools:
    """Stands in for run_logged: records commands, makes what the real tools make, fails on request."""

    def __init__(self, fail_at: str = "") -> None:
        self.fail_at = fail_at
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], log: Any) -> int:
        self.commands.append(cmd)
        log.write(f"$ {' '.join(cmd)}\n")
        tool = cmd[0]
        if tool == self.fail_at:
            log.write(
                {
                    "mmdebstrap": LOG_DNS_FAILURE,
                    "mkfs.ext4": LOG_DISK_TOO_SMALL.splitlines()[-1] + "\n",
                }.get(tool, "failed\n")
            )
            return 1
        if tool == "mmdebstrap":
            rootdir = Path(cmd[-2] if cmd[-1].startswith("http") else cmd[-1])
            fake_rootfs(rootdir, cmd[-1] if cmd[-1].startswith("http") else MIRROR)
            (rootdir / "boot").mkdir()
            (rootdir / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"kernel")
            (rootdir / "boot" / f"initrd.img-{RELEASE}").write_bytes(b"initrd")
        elif tool == "mkfs.ext4":
            Path(cmd[-2]).write_bytes(b"ext4")
        return 0


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
# lab_vm_instance
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


def option(cmd: list[str], name: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == name]


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


def test_relay_reaches_only_its_destination(tmp_path: Path) -> None:
    """The relay script for real: the guest side is a socket on its stdin and stdout, as QEMU gives it."""
    relay = Path(__file__).resolve().parents[2] / "roles/lab_vm/files/lab_vm_relay.py"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        guest, qemu_side = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(relay), "127.0.0.1", str(server.getsockname()[1])],
            stdin=qemu_side,
            stdout=qemu_side,
            stderr=qemu_side,
        )
        qemu_side.close()
        conn, _ = server.accept()
        with conn, guest:
            guest.sendall(b"GET / HTTP/1.0\r\n\r\n")
            guest.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"GET / HTTP/1.0\r\n\r\n"
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello")
            conn.close()
            assert guest.recv(100) == b"HTTP/1.0 200 OK\r\n\r\nhello"
        assert proc.wait(10) == 0


def test_relay_refused_destination_is_silent() -> None:
    relay = Path(__file__).resolve().parents[2] / "roles/lab_vm/files/lab_vm_relay.py"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guest, qemu_side = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, str(relay), "127.0.0.1", str(port)],
        stdin=qemu_side,
        stdout=qemu_side,
        stderr=qemu_side,
    )
    qemu_side.close()
    assert proc.wait(10) == 1
    with guest:
        # Nothing leaks to the guest (no traceback on the socket that stands in for stderr).
        assert guest.recv(100) == b""


def test_qemu_command_kvm() -> None:
    cmd = lab_vm_instance.qemu_command({**PARAMS, "accel": "kvm", "cpus": 2}, "/v", "/v/seed.tar")
    assert option(cmd, "-machine") == ["q35,accel=kvm"]
    assert option(cmd, "-cpu") == ["host"]
    assert option(cmd, "-smp") == ["2"]


def test_qemu_command_is_deterministic() -> None:
    args = (PARAMS, "/v", "/v/seed.tar")
    assert lab_vm_instance.qemu_command(*args) == lab_vm_instance.qemu_command(*args)


def fake_proc(tmp_path: Path, pid: int, argv: list[str]) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return proc


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
            conn, _ = server.accept()
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


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(lab_vm_instance, "time", fake)
    return fake


def counter(true_after: int) -> Callable[[], bool]:
    calls = {"n": 0}

    def predicate() -> bool:
        calls["n"] += 1
        return calls["n"] > true_after

    return predicate


def test_wait_for_success(clock: FakeTime) -> None:
    assert lab_vm_instance.wait_for(counter(3), timeout=60, interval=2) is True
    assert clock.sleeps == [2, 2, 2]


def test_wait_for_timeout(clock: FakeTime) -> None:
    assert lab_vm_instance.wait_for(lambda: False, timeout=10, interval=1) is False
    assert sum(clock.sleeps) == 10


def test_wait_for_last_chance_at_the_deadline(clock: FakeTime) -> None:
    # True only on the call after the deadline: the final check catches it.
    assert lab_vm_instance.wait_for(counter(3), timeout=3, interval=1) is True


def test_wait_for_stops_when_the_process_dies(clock: FakeTime) -> None:
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


def run_instance(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        lab_vm_instance.main()
    return json.loads(capsys.readouterr().out)


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_started_check_mode_on_a_fresh_dir(
    tmp_path: Path, image_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(tmp_path)
    result = run_instance(instance_args(tmp_path, image_files, _ansible_check_mode=True), capsys)
    assert result["changed"] is True
    assert result["actions"] == ["generated host key", "created overlay", "started qemu"]
    assert result["pid"] == 0
    assert tree(tmp_path) == before


@pytest.mark.parametrize("state", ["stopped", "absent"])
def test_stopped_or_absent_on_a_missing_dir(
    tmp_path: Path, image_files: dict[str, str], capsys: pytest.CaptureFixture[str], state: str
) -> None:
    result = run_instance(instance_args(tmp_path, image_files, state=state, _ansible_check_mode=True), capsys)
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
    result = run_instance(instance_args(tmp_path, image_files, state=state, _ansible_check_mode=True), capsys)
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
    result = run_instance(instance_args(tmp_path, image_files, memory=2048, _ansible_check_mode=True), capsys)
    assert result["actions"] == ["configuration changed", "stopped qemu", "started qemu"]


def test_started_on_a_new_base_image_makes_a_new_overlay(
    tmp_path: Path,
    image_files: dict[str, str],
    stopped_vm: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    new_disk = tmp_path / "new-disk.raw"
    new_disk.write_text("new\n")
    result = run_instance(
        instance_args(tmp_path, image_files, disk=str(new_disk), _ansible_check_mode=True), capsys
    )
    assert result["actions"] == ["base image changed", "removed overlay", "created overlay", "started qemu"]


def test_started_with_a_missing_image_file_fails(
    tmp_path: Path, image_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = instance_args(tmp_path, image_files, kernel=str(tmp_path / "nope"), _ansible_check_mode=True)
    result = run_instance(args, capsys)
    assert result["failed"] is True
    assert result["msg"] == f"kernel {tmp_path / 'nope'} does not exist"


def test_absent_removes_the_directory(
    tmp_path: Path, image_files: dict[str, str], stopped_vm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (stopped_vm / "qemu.pid").write_text("999999999\n")  # stale
    result = run_instance(instance_args(tmp_path, image_files, state="absent"), capsys)
    assert result["actions"] == ["removed vm directory"]
    assert result["state"] == "absent"
    assert not stopped_vm.exists()


def test_started_fails_when_the_port_is_taken(
    tmp_path: Path, image_files: dict[str, str], listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    result = run_instance(instance_args(tmp_path, image_files, ssh_port=port), capsys)
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
# lab_vm_accel
# ---------------------------------------------------------------------------------------------------

# The end of the serial console of a Debian 12 kernel booted under a working KVM with no root disk.
CONSOLE_PANIC = """\
[    1.034567] VFS: Cannot open root device "/dev/nonexistent" or unknown-block(0,0): error -6
[    1.035012] Please append a correct "root=" boot option; here are the available partitions:
[    1.035890] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)
[    1.036540] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.158-1
[    1.037990] Kernel Offset: 0x2c000000 from 0xffffffff81000000
"""

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
    with patch_module_args(args), pytest.raises(SystemExit):
        lab_vm_accel.main()
    result = json.loads(capsys.readouterr().out)
    assert (result["accel"], result["changed"], result["cached"]) == ("tcg", False, False)
    assert not (tmp_path / "a.json").exists()
