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
    interrupted or failed build never leaves a half-made image in the cache. An image counts as built
    only with the manifest the build writes last (C(manifest.json), with its key, recipe and the sizes of
    its disk, kernel and initrd, checked at every use), never because its directory exists.
  - Root builds the image and QEMU boots what the cache holds, so a cache another user could write to is
    refused (O(cache_dir), and each of its parents up to the running user's home or C(/), must belong to
    the running user or root and not be writable by group or others, unless sticky); the image's lock,
    log and manifest are never opened through a symbolic link.
  - Its progress is written to a log file (RV(log)) that can be followed with C(tail -f).
  - Each image key has a lock (C(<key>.lock) in O(cache_dir), C(flock)) held for the whole build,
    also by the build tools it starts. A second run for the same image waits for the first (at most
    O(wait_timeout) seconds) and then uses its image; in check mode it reports the build in progress
    (RV(building)) instead of planning a second one.
  - Leftovers of a build that was killed (its temporary directory, with what mmdebstrap had mounted
    in it) are removed by the next build once no process of the killed build holds the lock. The
    mounts below it are unmounted first (deepest first, lazily as a last resort), and the removal
    never follows a symbolic link nor descends into another mount.
  - Before a build the free space in O(cache_dir) is checked (the root filesystem and the disk image
    made from it are there at the same time). A failed build is diagnosed from its log, and the control
    node's disk being full is told apart from the image's own filesystem being too small.
version_added: "1.0.0"
author:
  - chardev-lab contributors (@chardev-lab)
options:
  suite:
    description: Debian suite to build.
    type: str
    choices: [bullseye, bookworm, trixie]
    default: bookworm
  mirror:
    description:
      - Debian mirror URL (or an apt proxy URL). Empty means mmdebstrap's own default mirror.
      - An C(http://) or C(https://) URL with a host and without whitespace; anything else is refused.
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
    description:
      - Size of the disk image, a number with an optional C(K), C(M) or C(G) suffix (C(4G), C(6000M)); a
        bare number is a count of C(mkfs.ext4) blocks. Anything else is refused.
    type: str
    default: 4G
  cache_dir:
    description: Directory that holds the cached images.
    type: path
    required: true
  wait_timeout:
    description:
      - Seconds to wait for another run that is building the same image (it holds the image's lock)
        before failing with a message that names it (pid, since when, log).
    type: int
    default: 1800
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports whether an image would be built, or is being built by another run (RV(building));
        builds nothing and creates no file.
  diff_mode:
    support: none
  platform:
    platforms: linux
requirements:
  - mmdebstrap, e2fsprogs (mkfs.ext4), run as root on the control node
notes:
  - The image carries no SSH host key and no authorized key; each VM receives its own at boot.
"""

EXAMPLES = r"""
- name: Build the bookworm image once, reuse it afterwards
  chardev_lab.lab.lab_vm_image:
    suite: bookworm
    cache_dir: ~/.cache/chardev-lab/images
  register: image

- name: Use an apt proxy on the control node
  chardev_lab.lab.lab_vm_image:
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
waited:
  description: Seconds spent waiting for another run that was building the same image.
  returned: always
  type: float
  sample: 41.5
building:
  description: The other run that was building this image when this run looked (it held the image's
    lock; a run that is not in check mode then waits for it and uses its image), as recorded in the
    lock file; empty when none was. C(running) is false when the process that
    took the lock is gone but a tool it started still holds it.
  returned: always
  type: dict
  sample:
    pid: 4242
    since: "2026-11-26T10:02:11"
    log: /root/.cache/chardev-lab/images/bookworm-3f2a9c1d0b7e4a55.log
    running: true
"""

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import SUITES
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

# Bump when the way the image is made changes: it is part of the cache key. 4: the manifest, written
# last, records the sizes of the disk, kernel and initrd and is what marks an image as built (an image of
# recipe 3 has none: under a new key it is never taken for one, nor replaced under a VM that uses it).
RECIPE_VERSION = 4

# The manifest: written last in the build directory, before it is renamed into place. An image is the
# cache's only when its manifest names its key and recipe and its files have the sizes recorded there.
MANIFEST = "manifest.json"
IMAGE_FILES = ("disk.raw", "vmlinuz", "initrd.img")
# Opening the cache's own files (lock, log, manifest): a symbolic link there is refused (ELOOP), never
# followed, and no descriptor leaks into the build tools (those that must inherit one get it by
# pass_fds).
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC

# What the mirror and the size may be: they reach mmdebstrap, the guest's apt sources and mkfs.ext4.
# A size is a number of bytes with a K, M or G suffix (mkfs.ext4 reads them, either case) or, bare, of
# mkfs.ext4's blocks.
SIZE_RE = re.compile(r"[1-9][0-9]*[KMGkmg]?")


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

# The initramfs holds only what mounts the root filesystem under QEMU (virtio disk, ext4), not the
# hundreds of drivers of MODULES=most: 6.5 MB instead of 36 MB on bookworm. Measured for issue 9 under
# TCG (interleaved A/B, shared machine): the guest's kernel stage (unpacking the initramfs, then its udev
# probing every driver) 8.9 s -> 5.5 s (median of 7), boot to SSH (lab_vm_instance's boot_seconds,
# together with MASKED_UNITS) 28.3 s -> 24.6 s (median of 3). Written in mmdebstrap's essential hook,
# before linux-image-amd64 is installed, so that the kernel's own postinst makes this small initrd.
INITRAMFS_CONF = "MODULES=list\n"
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")
INITRAMFS_HOOK = (
    "#!/bin/sh\n"
    "# chardev-lab: the modules that mount the root filesystem (/dev/vda, ext4) under QEMU.\n"
    'case "$1" in prereqs) exit 0 ;; esac\n'
    ". /usr/share/initramfs-tools/hook-functions\n" + "".join(f"force_load {m}\n" for m in INITRAMFS_MODULES)
)

# Units a lab VM never needs, masked in the image. They are not on sshd's critical chain, but they take
# the guest's single TCG vCPU at boot (systemd-analyze blame: e2scrub_reap 6.5 s, getty-static 2.8 s,
# systemd-binfmt 1.4 s, the mounts 1.3 s each); masked, the guest's userspace stage went 26.0 s -> 18.5 s
# (median of 3, issue 9). e2scrub_reap removes stale e2scrub LVM snapshots (there is no LVM),
# getty-static starts gettys on tty2-6 (the VM has a serial console only); the binfmt_misc, hugetlbfs
# and POSIX message queue mounts serve nothing the lab runs.
MASKED_UNITS = (
    "e2scrub_reap.service",
    "getty-static.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
)

GIB = 1 << 30
MIB = 1 << 20

# Measured on bookworm with BASE_PACKAGES: the root filesystem is 1.1 GiB after mmdebstrap (the .debs it
# downloaded are gone by then, but were there during the install), the disk image made from it (sparse)
# takes about as much. Extra packages add to both: the check is a floor, not a promise.
ROOTFS_BYTES = 3 * GIB // 2

# Below this much free space in the cache directory at the time of a failure, the failure is taken for
# the control node's disk being full whatever the tools said.
HOST_FULL_BYTES = 64 * MIB

# How often a run waiting for another run's build looks at the lock again.
LOCK_POLL_SECONDS = 2.0

IMAGE_TOO_SMALL = "the root filesystem does not fit in the disk image: raise lab_vm_image_size"

FAILURE_HINTS = (
    (
        re.compile(
            r"Temporary failure resolving|Could not resolve|Failed to fetch|Connection refused"
            r"|Unable to connect|Network is unreachable|Release file .* is not valid"
        ),
        "the Debian mirror could not be reached: check the network, or set lab_vm_mirror to a mirror "
        "or apt proxy you can reach",
    ),
    # mkfs.ext4 -d names the image's own filesystem ("in ext2 filesystem") when it is full; when the
    # control node's disk is full it says "No space left on device" (checked with e2fsprogs 1.47.0).
    (
        re.compile(
            r"Could not allocate block|Could not allocate inode|No free space in the directory"
            r"|in ext2 filesystem"
        ),
        IMAGE_TOO_SMALL,
    ),
    (
        re.compile(r"No space left on device|Disk quota exceeded"),
        "",  # the control node's disk: see host_full_hint()
    ),
    (
        re.compile(r"Unable to locate package|has no installation candidate"),
        "a package in lab_vm_image_packages does not exist in this suite: check its name",
    ),
)


class ImageError(Exception):
    """A failure the user can act on: the message says what failed and what to do (for fail_json)."""


class BuildError(Exception):
    """A build step failed; str() is the step. free_bytes: free space in the cache at the failure."""

    free_bytes: int | None = None


# -------------------------------------------------------------------------------------------------
# Inputs and diagnosis (pure)
# -------------------------------------------------------------------------------------------------


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


def initramfs_hook() -> str:
    """mmdebstrap's essential hook (a shell command, "$1" the root directory): the initramfs-tools
    configuration of INITRAMFS_CONF and INITRAMFS_HOOK, in place before the kernel is installed."""
    conf = '"$1/etc/initramfs-tools/conf.d/chardev-lab"'
    hook = '"$1/etc/initramfs-tools/hooks/chardev-lab"'
    return (
        'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"'
        f" && printf %s {shlex.quote(INITRAMFS_CONF)} > {conf}"
        f" && printf %s {shlex.quote(INITRAMFS_HOOK)} > {hook}"
        f" && chmod 755 {hook}"
    )


def check_inputs(mirror: str, size: str) -> None:
    """Refuse a mirror or a size that is not one: both become arguments of mmdebstrap and mkfs.ext4
    (passed after "--" too), and the mirror a line of the guest's apt sources."""
    if mirror:
        try:
            url = urllib.parse.urlsplit(mirror)
            web = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
        except ValueError:  # a bad port or IPv6 address
            web = False
        if re.search(r"[\x00-\x20\x7f]", mirror) or not web:
            raise ImageError(
                f"lab_vm_mirror {mirror!r} is not a mirror URL: it must be an http:// or https:// URL "
                "with a host and no spaces (http://deb.debian.org/debian, or an apt proxy such as "
                "http://apt-proxy.example:3142/debian); fix lab_vm_mirror, or leave it empty for "
                "mmdebstrap's default mirror"
            )
    if not SIZE_RE.fullmatch(size):
        raise ImageError(
            f"lab_vm_image_size {size!r} is not a size: it must be a number with an optional K, M or G "
            "suffix (4G, 6000M); fix lab_vm_image_size"
        )


def mmdebstrap_command(suite: str, mirror: str, packages: Sequence[str], rootdir: str) -> list[str]:
    include = ",".join(sorted(set(BASE_PACKAGES) | set(packages)))
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--include={include}",
        f"--essential-hook={initramfs_hook()}",
        # The end of the options: the suite, the directory and the mirror are never taken for one.
        "--",
        suite,
        rootdir,
    ]
    if mirror:
        cmd.append(mirror)
    return cmd


def human(size: int) -> str:
    """1.5 GiB, 300 MiB: sizes for messages."""
    if size >= GIB:
        return f"{size / GIB:.1f} GiB"
    return f"{size // MIB} MiB"


def parse_size(size: str) -> int | None:
    """Bytes of a size as mkfs.ext4 reads it (4G, 6000M, 512k); None for a bare block count."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT])\s*", size)
    if not match:
        return None
    return int(match.group(1)) << (10 * "kmgt".index(match.group(2).lower()) + 10)


def space_needed(size: str) -> int:
    """Free space a build needs in the cache: the root filesystem, and the (sparse) disk image made
    from it, which holds about as much but never more than its size."""
    image = parse_size(size)
    return ROOTFS_BYTES + (ROOTFS_BYTES if image is None else min(image, ROOTFS_BYTES))


def not_enough_space(cache_dir: str, free: int, needed: int) -> str:
    return (
        f"not enough free space to build the VM image: {cache_dir} has {human(free)} free, a build "
        f"needs about {human(needed)} (the root filesystem and the disk image made from it): free "
        "space on that disk, or set lab_vm_cache_dir to a directory on a disk with more room"
    )


def host_full_hint(free_bytes: int | None) -> str:
    free = "" if free_bytes is None else f"; {human(free_bytes)} was free in the cache when it failed"
    return (
        "the control node's disk is full (No space left on device while building" + free + "): "
        "free space there, or set lab_vm_cache_dir to a disk with more room; raising "
        "lab_vm_image_size would not help"
    )


def explain_failure(log_text: str, free_bytes: int | None = None) -> str:
    """A one-line diagnosis with the fix, from a failed build's log. Only the output of the last step
    (after its "$ command" line) counts: a warning of an earlier step that succeeded is no diagnosis.
    free_bytes is the free space in the cache directory when the build failed, if known: almost none
    means the control node's disk was full, whatever the tool said."""
    last_step = log_text[log_text.rfind("\n$ ") + 1 :]
    if free_bytes is not None and free_bytes < HOST_FULL_BYTES:
        return host_full_hint(free_bytes)
    for pattern, hint in FAILURE_HINTS:
        if pattern.search(last_step):
            return hint or host_full_hint(free_bytes)
    return "the image build failed"


OS_ERROR_FIXES = {
    errno.ENOSPC: "the disk is full: free space there, or set lab_vm_cache_dir to a disk with more room",
    errno.EDQUOT: "the disk quota is used up: free space, or set lab_vm_cache_dir to another disk",
    errno.EACCES: "permission denied: the image build runs as root (become); check the owner and mode "
    "of lab_vm_cache_dir and its parents",
    errno.EPERM: "operation not permitted: the image build runs as root (become); a filesystem without "
    "mount or chroot support (a container) cannot build the image",
    errno.EROFS: "the filesystem is read-only: set lab_vm_cache_dir to a writable directory",
    errno.ENOTDIR: "a path in lab_vm_cache_dir is a file, not a directory: fix lab_vm_cache_dir",
    errno.EBUSY: "something still uses it (a mount, a process): see 'findmnt' and 'fuser -vm' on it",
}


def describe_os_error(what: str, exc: OSError) -> str:
    """'<what> failed: <strerror> (<path>): <what to do>', for fail_json instead of a traceback."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f" ({' -> '.join(paths)})" if paths else ""
    fix = OS_ERROR_FIXES.get(exc.errno or 0, "check that path and run again")
    return f"{what} failed: {exc.strerror or exc}{where}: {fix}"


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Turn an OSError in the block into an ImageError naming the operation and the path."""
    try:
        yield
    except OSError as exc:
        raise ImageError(describe_os_error(what, exc)) from exc


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def free_space(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_free_space(cache_dir: str, size: str) -> None:
    needed = space_needed(size)
    with doing(f"checking the free space in {cache_dir}"):
        free = free_space(cache_dir)
    if free < needed:
        raise ImageError(not_enough_space(cache_dir, free, needed))


# -------------------------------------------------------------------------------------------------
# The cache directory: only its user (or root) may change it
# -------------------------------------------------------------------------------------------------


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def cache_dir_chain(cache_dir: str) -> list[str]:
    """The cache directory and its parents, up to the running user's home (included) or /, as written
    and once symbolic links are resolved: whoever can change one of them can change what is below."""
    try:
        home = os.path.realpath(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:  # an account without a passwd entry (a container's): up to /
        home = "/"
    chain: list[str] = []
    for start in (os.path.abspath(cache_dir), os.path.realpath(cache_dir)):
        path = start
        while path not in chain:
            chain.append(path)
            if path in ("/", home):
                break
            path = os.path.dirname(path)
    return chain


def unsafe_cache_path(path: str, top: bool) -> str:
    """Why another user could change path (a directory of the cache's chain, or a link in it), or ""."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return ""  # made below, by this user
    trusted = (os.geteuid(), 0)
    owner = f"owned by {owner_name(st.st_uid)}"
    if st.st_uid not in trusted:
        return f"{owner}, not by " + " or ".join(sorted({owner_name(uid) for uid in trusted}))
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return ""  # a link only its owner can change; a file fails at makedirs, with its own message
    # A sticky directory (/tmp) lets others add entries but not replace this user's: fine above the cache.
    writers = [who for bit, who in ((0o020, "its group"), (0o002, "every user")) if st.st_mode & bit]
    if writers and (top or not st.st_mode & stat.S_ISVTX):
        return f"{owner} with mode {stat.S_IMODE(st.st_mode):04o}, writable by {' and '.join(writers)}"
    return ""


def check_cache_dir(cache_dir: str) -> None:
    """Refuse a cache that another user could change: root would follow a symbolic link planted there
    (the lock, the log, accel.json) and QEMU would boot an image planted there."""
    tops = {os.path.abspath(cache_dir), os.path.realpath(cache_dir)}
    for path in cache_dir_chain(cache_dir):
        why = unsafe_cache_path(path, top=path in tops)
        if why:
            me = owner_name(os.geteuid())
            raise ImageError(
                f"refusing the image cache {cache_dir}: {path} is {why}, so another user could plant "
                "files there (symbolic links, a fake image) that the image build, run as root, would "
                f"follow or boot. Make it {me}'s and writable by {me} only (chown {me} {path}; chmod "
                f"go-w {path}), or set lab_vm_cache_dir to a directory only {me} can write to"
            )


# -------------------------------------------------------------------------------------------------
# The image's lock: one build per key at a time
# -------------------------------------------------------------------------------------------------


def lock_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"{key}.lock")


def pid_running(pid: Any) -> bool:
    return isinstance(pid, int) and pid > 0 and os.path.exists(f"/proc/{pid}")


def read_holder(fd: int) -> dict[str, Any]:
    """The record of the run that last took the lock (read from its open descriptor): pid, since,
    started (epoch), log, running."""
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    record["running"] = pid_running(record.get("pid"))
    return record


def holder_text(holder: dict[str, Any], lock_file: str) -> str:
    """'pid 4242 (running), since 2026-11-26T10:02:11 (95 s ago), log /x.log' for messages."""
    pid = holder.get("pid", "?")
    if holder.get("running"):
        state = "running"
    else:
        state = f"gone, but a process it started still holds the lock: see 'lslocks | grep {lock_file}'"
    text = f"pid {pid} ({state})"
    if holder.get("since"):
        text += f", since {holder['since']}"
        if isinstance(holder.get("started"), int | float):
            text += f" ({round(time.time() - holder['started'])} s ago)"
    if holder.get("log"):
        text += f", log {holder['log']}"
    return text


def build_in_progress(cache_dir: str, key: str) -> dict[str, Any]:
    """The holder's record when another run holds the image's lock, else {}. Creates nothing (check
    mode): no lock file means no build."""
    path = lock_path(cache_dir, key)
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return {k: v for k, v in read_holder(fd).items() if k != "started"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return {}
    finally:
        os.close(fd)


# Descriptors of the locks this process holds: the build tools inherit them, so that a tool that
# outlives this process (killed) keeps the image locked until it exits too.
HELD_LOCKS: set[int] = set()


class ImageLock:
    """flock() on <cache>/<key>.lock, with the holder's pid, start time and log written in it."""

    def __init__(self, cache_dir: str, key: str) -> None:
        self.path = lock_path(cache_dir, key)
        self.fd = -1

    def acquire(self, timeout: float, log_path: str) -> tuple[dict[str, Any], float]:
        """Wait (at most timeout seconds) for the lock; returns the previous holder's record (read
        before writing ours) and the seconds waited. Raises ImageError naming the holder on timeout."""
        with doing(f"opening the image lock {self.path}"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - started
                    if waited >= timeout:
                        holder = read_holder(fd)
                        raise ImageError(
                            f"another run is building this image and still holds its lock {self.path} "
                            f"after {round(waited)} s of waiting: {holder_text(holder, self.path)}. Let "
                            f"it finish (tail -f {holder.get('log') or log_path}) and run again, or stop "
                            f"it (kill {holder.get('pid', '<pid>')}) and run again: its leftovers are "
                            "cleaned up then"
                        ) from None
                    time.sleep(LOCK_POLL_SECONDS)
            previous = read_holder(fd)
            now = time.time()
            record = {
                "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
                "started": round(now, 1),
                "log": log_path,
            }
            with doing(f"writing the image lock {self.path}"):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(record).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        HELD_LOCKS.add(fd)
        return previous, round(time.monotonic() - started, 1)

    def release(self) -> None:
        if self.fd >= 0:
            HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the last descriptor of the open file releases the flock
            self.fd = -1


# -------------------------------------------------------------------------------------------------
# Removing what a killed build left: unmount, then remove without crossing a mount or a link
# -------------------------------------------------------------------------------------------------


def unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def mount_points_below(path: str, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below path (a real path), deepest first; a point mounted twice, twice."""
    text = read_mountinfo() if mountinfo is None else mountinfo
    top = path.rstrip("/") or "/"
    found = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = unescape_mountinfo(fields[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(found, key=lambda p: (p.count("/"), len(p)), reverse=True)


def run_quiet(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def unmount_below(path: str) -> list[str]:
    """Unmount everything mounted at or below path: made private first (an unmount below a bind of a
    shared mount would otherwise propagate to the original), deepest first, lazily when a plain
    unmount fails; then verified. Returns what was unmounted; ImageError when something stays."""
    done: list[str] = []
    for _round in range(8):  # stacked mounts need a round each
        points = mount_points_below(path)
        if not points:
            return done
        for point in sorted(set(points), key=len):
            run_quiet(["mount", "--make-rprivate", point])
        for point in points:
            if run_quiet(["umount", point]) or run_quiet(["umount", "--lazy", point]):
                done.append(point)
    left = mount_points_below(path)
    if left:
        raise ImageError(
            f"cannot unmount {left[0]}, left mounted by an image build that was killed: unmount it "
            f"(umount --lazy {left[0]}) and run again"
        )
    return done


def remove_tree(path: str) -> None:
    """Remove path and everything below it, like rm -r --one-file-system, but stricter: a symbolic link
    is removed, never followed; a directory on another filesystem or that is a mount point (a bind
    mount of the same filesystem too, from mountinfo) is never entered. ImageError lists what stayed."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return
    real = os.path.realpath(path)
    mounts = set(mount_points_below(real))
    if real in mounts:
        raise ImageError(f"{path} is a mount point: unmount it (umount --lazy {real}) and run again")
    refused: list[str] = []
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (top.st_dev, top.st_ino):
            raise ImageError(f"{path} changed while it was being removed: run again")
        _remove_contents(fd, real, top.st_dev, mounts, refused)
    finally:
        os.close(fd)
    if refused:
        raise ImageError(
            f"left {refused[0]} (and {len(refused) - 1} more) in place: a mount point or another "
            f"filesystem inside {path}; unmount it (umount --lazy {refused[0]}) and run again"
        )
    os.rmdir(path)


def _remove_contents(fd: int, path: str, dev: int, mounts: set[str], refused: list[str]) -> None:
    for name in os.listdir(fd):
        child = os.path.join(path, name)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if child in mounts or st.st_dev != dev:
            refused.append(child)
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            continue
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            opened = os.fstat(sub)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                refused.append(child)  # replaced between the look and the open
                continue
            _remove_contents(sub, child, dev, mounts, refused)
        finally:
            os.close(sub)
        if not any(r.startswith(child + "/") for r in refused):
            os.rmdir(name, dir_fd=fd)


def remove_build_dir(path: str) -> list[str]:
    """What a build directory may hold after a kill: mounts (mmdebstrap's /proc, /sys, /dev binds in
    the root filesystem), then files. Unmount, then remove; returns what was unmounted."""
    unmounted = unmount_below(os.path.realpath(path))
    remove_tree(path)
    return unmounted


def stale_build_dirs(cache_dir: str, own_key: str = "") -> list[str]:
    """Temporary build directories (.<key>.tmp-<pid>) that no build is using any more: their pid is
    gone and no process holds their key's lock (a tool of a killed build holds it until it exits).
    own_key: the key whose lock this process holds (so nobody else builds it)."""
    stale = []
    for tmp in sorted(glob.glob(os.path.join(cache_dir, ".*.tmp-*"))):
        match = re.fullmatch(r"\.(.+)\.tmp-(\d+)", os.path.basename(tmp))
        if match and pid_running(int(match.group(2))):
            continue
        key = match.group(1) if match else ""
        if key and key != own_key and build_in_progress(cache_dir, key):
            continue
        stale.append(tmp)
    return stale


def remove_stale_builds(cache_dir: str, own_key: str = "") -> dict[str, list[str]]:
    """Remove the temporary build directories left by builds that were killed; returns each with the
    mount points unmounted in it."""
    removed = {}
    for tmp in stale_build_dirs(cache_dir, own_key):
        with doing(f"removing {tmp}, left by an image build that was killed"):
            removed[tmp] = remove_build_dir(tmp)
    return removed


# -------------------------------------------------------------------------------------------------
# The build
# -------------------------------------------------------------------------------------------------


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


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when this module's process dies (killed), so that
    mmdebstrap stops and unmounts what it mounted instead of building on, as root, for nobody."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_logged(cmd: list[str], log: Any) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
        pass_fds=tuple(HELD_LOCKS),
        preexec_fn=die_with_parent,  # the module's process runs no other thread
    ).returncode


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of the image in directory path, {} when there is none (or not a regular file, or
    not JSON)."""
    try:
        fd = os.open(os.path.join(path, MANIFEST), os.O_RDONLY | NOFOLLOW)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return {}
            manifest = json.loads(handle.read(1 << 16))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def finished_image(path: str, key: str) -> dict[str, Any]:
    """The manifest of the built image of key in path, or {}: the manifest the build writes last names
    this key and recipe, and the disk, kernel and initrd are regular files of the recorded sizes. A
    directory without it (made by hand, a build of an older recipe, a copy cut short) is no image."""
    manifest = read_manifest(path)
    sizes = manifest.get("bytes")
    if manifest.get("key") != key or manifest.get("recipe") != RECIPE_VERSION or not isinstance(sizes, dict):
        return {}
    for name in IMAGE_FILES:
        try:
            st = os.lstat(os.path.join(path, name))
        except OSError:
            return {}
        if not stat.S_ISREG(st.st_mode) or st.st_size != sizes.get(name):
            return {}
    return manifest


def kernel_release_of(path: str) -> str:
    """Release from the name of the kernel copied out of /boot (recorded in the manifest)."""
    return str(read_manifest(path).get("kernel_release", ""))


def write_new(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a file of the cache, never through a symbolic link planted at its name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def build_image(
    suite: str,
    mirror: str,
    packages: Sequence[str],
    size: str,
    cache_dir: str,
    key: str,
    log_path: str,
    notes: Sequence[str] = (),
) -> None:
    """Build into a temporary directory, then rename it into place (atomic within the cache). Call with
    the image's lock held. BuildError: a tool failed (see the log); ImageError: an operation on a path
    failed (the message says which)."""
    final = os.path.join(cache_dir, key)
    tmp = os.path.join(cache_dir, f".{key}.tmp-{os.getpid()}")
    rootdir = os.path.join(tmp, "rootfs")
    step = f"creating the build directory {tmp}"
    try:
        os.makedirs(tmp)
        step = f"writing the build log {log_path}"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
        with os.fdopen(log_fd, "w", encoding="utf-8") as log:
            log.write(f"building {key}: suite={suite} mirror={mirror or '(mmdebstrap default)'}\n")
            log.writelines(f"{note}\n" for note in notes)
            if run_logged(mmdebstrap_command(suite, mirror, packages, rootdir), log) != 0:
                raise BuildError("mmdebstrap")
            step = f"preparing the root filesystem {rootdir} for QEMU"
            customize_rootfs(rootdir, mirror)
            enable = ["chroot", rootdir, "systemctl", "enable", "systemd-networkd", "chardev-lab-seed"]
            if run_logged(enable, log) != 0:
                raise BuildError("systemctl enable")
            if run_logged(["chroot", rootdir, "systemctl", "mask", *MASKED_UNITS], log) != 0:
                raise BuildError("systemctl mask")
            kernels = sorted(glob.glob(os.path.join(rootdir, "boot/vmlinuz-*")))
            if not kernels:
                raise BuildError("no kernel in /boot")
            release = os.path.basename(kernels[-1])[len("vmlinuz-") :]
            step = f"copying the kernel and initrd into {tmp}"
            copy_file(kernels[-1], os.path.join(tmp, "vmlinuz"))
            copy_file(os.path.join(rootdir, "boot", f"initrd.img-{release}"), os.path.join(tmp, "initrd.img"))
            disk = os.path.join(tmp, "disk.raw")
            step = f"writing the disk image {disk}"
            mkfs = ["mkfs.ext4", "-q", "-F", "-L", "chardev-lab", "-d", rootdir, "--", disk, size]
            if run_logged(mkfs, log) != 0:
                raise BuildError("mkfs.ext4")
            step = f"removing the root filesystem {rootdir} (now in the image)"
            remove_build_dir(rootdir)
            step = f"writing the image's manifest in {tmp}"
            # The base is shared by every overlay: nothing may write to it.
            os.chmod(disk, 0o444)
            # Last: the manifest is what marks the image as built (finished_image()).
            manifest = {
                "key": key,
                "suite": suite,
                "mirror": mirror,
                "packages": sorted(packages),
                "size": size,
                "recipe": RECIPE_VERSION,
                "kernel_release": release,
                "bytes": {name: os.lstat(os.path.join(tmp, name)).st_size for name in IMAGE_FILES},
            }
            write_new(os.path.join(tmp, MANIFEST), json.dumps(manifest).encode())
            log.write("image complete\n")
        step = f"moving the image into place ({tmp} -> {final})"
        if os.path.lexists(final) and not finished_image(final, key):
            # No VM uses it: it was never returned as an image (a directory made by hand, or a link).
            remove_build_dir(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not finished_image(final, key):
                raise
            # The image was put in place meanwhile (by a run without the lock): keep that one.
            remove_build_dir(tmp)
    except BuildError as exc:
        with contextlib.suppress(OSError):
            exc.free_bytes = free_space(cache_dir)  # before the clean-up below frees it again
        discard(tmp)
        raise
    except OSError as exc:
        discard(tmp)
        raise ImageError(describe_os_error(step, exc)) from exc
    except BaseException:
        discard(tmp)
        raise


def copy_file(src: str, dst: str) -> None:
    with open(src, "rb") as source, open(dst, "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)


def discard(tmp: str) -> None:
    """Remove a failed build's directory; what cannot be removed now, the next build removes."""
    with contextlib.suppress(OSError, ImageError):
        remove_build_dir(tmp)


# -------------------------------------------------------------------------------------------------
# The module
# -------------------------------------------------------------------------------------------------


def require_build_tools() -> None:
    """The tools and the privileges a build needs on the control node."""
    for tool in ("mmdebstrap", "mkfs.ext4", "chroot", "umount"):
        if not shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"):
            raise ImageError(f"{tool} is not installed on the control node: run 'make host-deps'")
    if os.geteuid() != 0:
        raise ImageError(
            "building the VM image needs root (mmdebstrap --mode=root mounts /proc, /sys and /dev in "
            "the root filesystem and chroots into it): run as root or with become"
        )


def image_result(cache_dir: str, key: str) -> dict[str, Any]:
    path = os.path.join(cache_dir, key)
    return {
        "changed": False,
        "key": key,
        "path": path,
        "disk": os.path.join(path, "disk.raw"),
        "kernel": os.path.join(path, "vmlinuz"),
        "initrd": os.path.join(path, "initrd.img"),
        "kernel_release": "",
        "log": f"{path}.log",
        "seconds": 0.0,
        "waited": 0.0,
        "building": {},
    }


def run(
    params: dict[str, Any], check_mode: bool, system: System, result: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything main() does, without AnsibleModule: the result, or ImageError (or BuildError, for
    main() to explain from the log). result, when given, is filled in as the run goes (for fail_json).
    The image is built on this host with its own tools (system is not needed for that)."""
    del system
    cache_dir: str = params["cache_dir"]
    check_inputs(params["mirror"], params["size"])
    key = image_key(params["suite"], params["mirror"], params["packages"], params["size"])
    result = image_result(cache_dir, key) if result is None else result
    result.update(image_result(cache_dir, key))
    path = result["path"]
    check_cache_dir(cache_dir)
    if finished_image(path, key):
        result["kernel_release"] = kernel_release_of(path)
        return result
    with doing(f"looking for a build of {key} in progress"):
        result["building"] = build_in_progress(cache_dir, key)
    result["changed"] = True
    if check_mode:
        return result
    require_build_tools()
    with doing(f"creating the image cache {cache_dir}"):
        os.makedirs(cache_dir, exist_ok=True)
    check_cache_dir(cache_dir)  # what makedirs made too
    lock = ImageLock(cache_dir, key)
    previous, result["waited"] = lock.acquire(params["wait_timeout"], result["log"])
    try:
        if finished_image(path, key):  # the run we waited for built it
            result.update(changed=False, kernel_release=kernel_release_of(path))
            return result
        notes = [
            f"removed {tmp}, left by a build that was killed"
            + (f" (unmounted first: {', '.join(unmounted)})" if unmounted else "")
            for tmp, unmounted in remove_stale_builds(cache_dir, own_key=key).items()
        ]
        if previous.get("pid") and previous["pid"] != os.getpid() and not previous["running"]:
            notes.append(f"the previous build of this image (pid {previous['pid']}) did not finish")
        check_free_space(cache_dir, params["size"])
        started = time.monotonic()
        build_image(
            params["suite"], params["mirror"], params["packages"], params["size"], cache_dir, key,
            result["log"], notes,
        )  # fmt: skip
        result["seconds"] = round(time.monotonic() - started, 1)
        result["kernel_release"] = kernel_release_of(path)
        return result
    finally:
        lock.release()


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "suite": {"type": "str", "default": "bookworm", "choices": list(SUITES)},
            "mirror": {"type": "str", "default": ""},
            "packages": {"type": "list", "elements": "str", "default": []},
            "size": {"type": "str", "default": "4G"},
            "cache_dir": {"type": "path", "required": True},
            "wait_timeout": {"type": "int", "default": 1800},
        },
        supports_check_mode=True,
    )


def failure_message(exc: BuildError, log_path: str) -> str:
    """The diagnosis of a failed build step, from its log."""
    try:
        fd = os.open(log_path, os.O_RDONLY | NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            log_text = handle.read()
    except OSError as err:
        return f"the image build failed at step {exc}, and {describe_os_error('reading its log', err)}"
    return (
        f"{explain_failure(log_text, exc.free_bytes)} (step {exc} failed; full log: {log_path})\n"
        f"{tail(log_text)}"
    )


def main(system: System | None = None) -> None:
    module = make_module()
    result: dict[str, Any] = {}
    try:
        module.exit_json(
            **run(module.params, module.check_mode, System(module) if system is None else system, result)
        )
    except BuildError as exc:
        module.fail_json(msg=failure_message(exc, result["log"]), **result)
    except ImageError as exc:
        module.fail_json(msg=str(exc), **result)


if __name__ == "__main__":
    main()
