#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build (or reuse) the cached Debian disk image that the local lab VMs boot from."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_vm_image
short_description: Build or reuse a cached Debian image for the chardev-lab VMs
description:
  - Runs C(mmdebstrap) to make a minimal Debian root filesystem of O(suite) from the distribution's
    mirror, prepares it for direct kernel boot under QEMU (DHCP networking, serial console, a boot
    service that installs the VM's SSH host key and authorized key from QEMU C(fw_cfg)), turns it
    into a raw ext4 disk with C(mkfs.ext4 -d) and copies the kernel and initrd next to it.
  - The image lives in O(cache_dir) under a key made of its inputs (suite, mirror, packages, size and
    the recipe version), so a second run with the same inputs reuses it at once.
  - The build happens in a temporary directory that is renamed into place only when complete, so an
    interrupted or failed build never leaves a half-made image in the cache.
  - Its progress is written to a log file (RV(log)) that can be followed with C(tail -f).
version_added: "1.0.0"
author: chardev-lab contributors
options:
  suite:
    description: Debian suite to build.
    type: str
    choices: [bullseye, bookworm, trixie]
    default: bookworm
  mirror:
    description:
      - Debian mirror URL (or an apt proxy URL). Empty means mmdebstrap's own default mirror.
      - A mirror on C(127.0.0.1) or C(localhost) is rewritten to C(10.0.2.2) in the guest's apt
        sources, which is how a QEMU user-mode guest reaches the host.
    type: str
    default: ""
  packages:
    description: Packages to install besides the ones the image needs to boot and be managed.
    type: list
    elements: str
    default: []
  size:
    description: Size of the disk image, as C(mkfs.ext4) understands it (C(4G), C(6000M)).
    type: str
    default: 4G
  cache_dir:
    description: Directory that holds the cached images.
    type: path
    required: true
attributes:
  check_mode:
    support: full
    description: Reports whether an image would be built; builds nothing.
  diff_mode:
    support: none
requirements:
  - mmdebstrap, e2fsprogs (mkfs.ext4), run as root on the control node
notes:
  - The image carries no SSH host key and no authorized key; each VM receives its own at boot.
"""

EXAMPLES = r"""
- name: Build the bookworm image once, reuse it afterwards
  lab_vm_image:
    suite: bookworm
    cache_dir: ~/.cache/chardev-lab/images
  register: image

- name: Use an apt proxy on the control node
  lab_vm_image:
    suite: trixie
    mirror: http://127.0.0.1:3142/debian
    cache_dir: /var/cache/chardev-lab
"""

RETURN = r"""
key:
  description: Cache key of the image (hash of its inputs).
  returned: always
  type: str
  sample: bookworm-3f2a9c1d0b7e4a55
path:
  description: Directory of the image in the cache.
  returned: always
  type: str
  sample: /root/.cache/chardev-lab/images/bookworm-3f2a9c1d0b7e4a55
disk:
  description: Raw ext4 disk image, read-only, used as the backing file of every VM's overlay.
  returned: always
  type: str
  sample: /root/.cache/chardev-lab/images/bookworm-3f2a9c1d0b7e4a55/disk.raw
kernel:
  description: Kernel for direct boot.
  returned: always
  type: str
  sample: /root/.cache/chardev-lab/images/bookworm-3f2a9c1d0b7e4a55/vmlinuz
initrd:
  description: Initial ramdisk for direct boot.
  returned: always
  type: str
  sample: /root/.cache/chardev-lab/images/bookworm-3f2a9c1d0b7e4a55/initrd.img
kernel_release:
  description: Release of the kernel in the image (what C(uname -r) prints in the VM). Empty in check
    mode when the image does not exist yet.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
log:
  description: Build log.
  returned: always
  type: str
  sample: /root/.cache/chardev-lab/images/bookworm-3f2a9c1d0b7e4a55.log
seconds:
  description: Time the build took (0 when the cached image was reused).
  returned: always
  type: float
  sample: 112.4
"""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# Bump when the way the image is made changes: it is part of the cache key.
RECIPE_VERSION = 2

SUITES = ("bullseye", "bookworm", "trixie")

# What every image needs to boot under QEMU and be managed by Ansible. build-essential is baked in
# because installing a compiler inside a TCG guest costs minutes per VM; the kernel headers are not:
# the kernel_headers role installs the ones matching the running kernel from the mirror.
BASE_PACKAGES = (
    "linux-image-amd64",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "kmod",
    "procps",
    "systemd-sysv",
    "udev",
    "iproute2",
    "build-essential",
)

SEED_SERVICE = """\
[Unit]
Description=chardev-lab: install this VM's SSH keys and hostname from QEMU fw_cfg
DefaultDependencies=no
After=local-fs.target
Before=ssh.service network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -ec 'modprobe qemu_fw_cfg; \
  tar -x --no-same-owner -C / -f /sys/firmware/qemu_fw_cfg/by_name/opt/chardev-lab/seed/raw; \
  hostname -F /etc/hostname'

[Install]
WantedBy=multi-user.target
"""

NETWORK_FILE = """\
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
"""

FAILURE_HINTS = (
    (
        re.compile(
            r"Temporary failure resolving|Could not resolve|Failed to fetch|Connection refused"
            r"|Unable to connect|Network is unreachable|Release file .* is not valid"
        ),
        "the Debian mirror could not be reached: check the network, or set lab_vm_mirror to a mirror "
        "or apt proxy you can reach",
    ),
    (
        re.compile(r"Could not allocate block|No space left on device|Could not allocate inode"),
        "the root filesystem does not fit in the disk image: raise lab_vm_image_size",
    ),
    (
        re.compile(r"Unable to locate package|has no installation candidate"),
        "a package in lab_vm_image_packages does not exist in this suite: check its name",
    ),
)


def image_key(suite: str, mirror: str, packages: Sequence[str], size: str) -> str:
    """Cache key: the suite plus a hash of every input that changes the image."""
    inputs = {
        "recipe": RECIPE_VERSION,
        "suite": suite,
        "mirror": mirror,
        "packages": sorted(set(BASE_PACKAGES) | set(packages)),
        "size": size,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{suite}-{digest[:16]}"


def guest_mirror(mirror: str) -> str:
    """The mirror as seen from inside a QEMU user-mode guest, where the host is 10.0.2.2."""
    return re.sub(r"//(127\.0\.0\.1|localhost)(?=[:/]|$)", "//10.0.2.2", mirror)


def mmdebstrap_command(suite: str, mirror: str, packages: Sequence[str], rootdir: str) -> list[str]:
    include = ",".join(sorted(set(BASE_PACKAGES) | set(packages)))
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={include}", suite, rootdir]
    if mirror:
        cmd.append(mirror)
    return cmd


def explain_failure(log_text: str) -> str:
    """A one-line diagnosis with the fix, from a failed build's log. Only the output of the last step
    (after its "$ command" line) counts: a warning of an earlier step that succeeded is no diagnosis."""
    last_step = log_text[log_text.rfind("\n$ ") + 1 :]
    for pattern, hint in FAILURE_HINTS:
        if pattern.search(last_step):
            return hint
    return "the image build failed"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def customize_rootfs(rootdir: str, mirror: str) -> None:
    """Make the root filesystem boot under QEMU and accept the fleet's keys at boot."""

    def write(rel: str, content: str, mode: int = 0o644) -> None:
        path = os.path.join(rootdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.islink(path):
            os.unlink(path)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(path, mode)

    write("etc/fstab", "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    write("etc/hostname", "lab-vm\n")
    write("etc/hosts", "127.0.0.1 localhost\n")
    # QEMU's user-mode network answers DNS on 10.0.2.3.
    write("etc/resolv.conf", "nameserver 10.0.2.3\n")
    write("etc/systemd/network/10-lab.network", NETWORK_FILE)
    write("etc/systemd/system/chardev-lab-seed.service", SEED_SERVICE)
    # Headers and builds run as root in the lab; apt must never stop to ask.
    write("etc/apt/apt.conf.d/90chardev-lab", 'APT::Install-Recommends "false";\n')
    sources = os.path.join(rootdir, "etc/apt/sources.list")
    if mirror and os.path.exists(sources):
        with open(sources, encoding="utf-8") as handle:
            text = handle.read()
        write("etc/apt/sources.list", text.replace(mirror, guest_mirror(mirror)))
    # Every VM gets its own host key at boot; none is shared through the image.
    for key in glob.glob(os.path.join(rootdir, "etc/ssh/ssh_host_*")):
        os.unlink(key)
    os.makedirs(os.path.join(rootdir, "root/.ssh"), mode=0o700, exist_ok=True)
    # An empty machine-id makes systemd generate a new one at first boot: every VM has its own.
    write("etc/machine-id", "")
    # mmdebstrap empties apt's lists; with a fresh mtime, apt's cache_valid_time would take the empty
    # lists for an up-to-date cache and find no packages. Make them look as old as they are.
    lists = os.path.join(rootdir, "var/lib/apt/lists")
    if os.path.isdir(lists):
        os.utime(lists, (0, 0))


def run_logged(cmd: list[str], log: Any) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def kernel_release_of(path: str) -> str:
    """Release from the name of the kernel copied out of /boot (recorded in the manifest)."""
    manifest = os.path.join(path, "manifest.json")
    try:
        with open(manifest, encoding="utf-8") as handle:
            return str(json.load(handle).get("kernel_release", ""))
    except (OSError, ValueError):
        return ""


def remove_stale_builds(cache_dir: str) -> None:
    """Remove temporary build directories left by builds that were killed."""
    for tmp in glob.glob(os.path.join(cache_dir, ".*.tmp-*")):
        pid = tmp.rsplit("-", 1)[-1]
        if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
            shutil.rmtree(tmp, ignore_errors=True)


class BuildError(Exception):
    pass


def build_image(
    suite: str, mirror: str, packages: Sequence[str], size: str, cache_dir: str, key: str, log_path: str
) -> None:
    """Build into a temporary directory, then rename it into place (atomic within the cache)."""
    final = os.path.join(cache_dir, key)
    tmp = os.path.join(cache_dir, f".{key}.tmp-{os.getpid()}")
    rootdir = os.path.join(tmp, "rootfs")
    os.makedirs(tmp)
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"building {key}: suite={suite} mirror={mirror or '(mmdebstrap default)'}\n")
            if run_logged(mmdebstrap_command(suite, mirror, packages, rootdir), log) != 0:
                raise BuildError("mmdebstrap")
            customize_rootfs(rootdir, mirror)
            enable = ["chroot", rootdir, "systemctl", "enable", "systemd-networkd", "chardev-lab-seed"]
            if run_logged(enable, log) != 0:
                raise BuildError("systemctl enable")
            kernels = sorted(glob.glob(os.path.join(rootdir, "boot/vmlinuz-*")))
            if not kernels:
                raise BuildError("no kernel in /boot")
            release = os.path.basename(kernels[-1])[len("vmlinuz-") :]
            shutil.copy(kernels[-1], os.path.join(tmp, "vmlinuz"))
            shutil.copy(
                os.path.join(rootdir, "boot", f"initrd.img-{release}"), os.path.join(tmp, "initrd.img")
            )
            disk = os.path.join(tmp, "disk.raw")
            if (
                run_logged(["mkfs.ext4", "-q", "-F", "-L", "chardev-lab", "-d", rootdir, disk, size], log)
                != 0
            ):
                raise BuildError("mkfs.ext4")
            shutil.rmtree(rootdir)
            # The base is shared by every overlay: nothing may write to it.
            os.chmod(disk, 0o444)
            with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as handle:
                json.dump(
                    {
                        "key": key,
                        "suite": suite,
                        "mirror": mirror,
                        "packages": sorted(packages),
                        "size": size,
                        "recipe": RECIPE_VERSION,
                        "kernel_release": release,
                    },
                    handle,
                )
            log.write("image complete\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
            # Another run built the same image meanwhile: keep the one in place.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "suite": {"type": "str", "default": "bookworm", "choices": list(SUITES)},
            "mirror": {"type": "str", "default": ""},
            "packages": {"type": "list", "elements": "str", "default": []},
            "size": {"type": "str", "default": "4G"},
            "cache_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )


def main() -> None:
    module = make_module()
    p = module.params
    cache_dir = p["cache_dir"]
    key = image_key(p["suite"], p["mirror"], p["packages"], p["size"])
    path = os.path.join(cache_dir, key)
    log_path = f"{path}.log"
    result: dict[str, Any] = {
        "changed": False,
        "key": key,
        "path": path,
        "disk": os.path.join(path, "disk.raw"),
        "kernel": os.path.join(path, "vmlinuz"),
        "initrd": os.path.join(path, "initrd.img"),
        "log": log_path,
        "seconds": 0.0,
    }
    if os.path.isdir(path):
        module.exit_json(kernel_release=kernel_release_of(path), **result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(kernel_release="", **result)
    for tool in ("mmdebstrap", "mkfs.ext4", "chroot"):
        if not module.get_bin_path(tool):
            module.fail_json(
                msg=f"{tool} is not installed on the control node: run 'make host-deps'", **result
            )
    if os.geteuid() != 0:
        module.fail_json(
            msg="building the VM image needs root (mmdebstrap --mode=root): run as root or with become",
            **result,
        )
    os.makedirs(cache_dir, exist_ok=True)
    remove_stale_builds(cache_dir)
    started = time.monotonic()
    try:
        build_image(p["suite"], p["mirror"], p["packages"], p["size"], cache_dir, key, log_path)
    except BuildError as exc:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            log_text = handle.read()
        module.fail_json(
            msg=f"{explain_failure(log_text)} (step {exc} failed; full log: {log_path})\n{tail(log_text)}",
            **result,
        )
    result["seconds"] = round(time.monotonic() - started, 1)
    module.exit_json(kernel_release=kernel_release_of(path), **result)


if __name__ == "__main__":
    main()
