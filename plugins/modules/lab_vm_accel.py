#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find out, by booting, whether QEMU can use KVM on this control node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_vm_accel
short_description: Choose KVM or TCG for the chardev-lab VMs by booting a probe
description:
  - The presence of C(/dev/kvm) does not prove that a guest boots with KVM (under some paravirtual
    hypervisors a stock Debian guest hangs after "Probing EDD"). This module boots the lab's own
    kernel under KVM with no root filesystem and C(-no-reboot); a working KVM reaches the expected
    "Kernel panic - not syncing" in a few seconds and QEMU exits; a broken one is still silent at
    O(timeout) and is killed.
  - The verdict is cached in O(cache_file) under a key of the QEMU binary, the kernel and the host's
    kernel release, so the probe costs its seconds once per machine. The file is never read or written
    through a symbolic link; when it cannot be written (a full disk, a refused write) the verdict is
    still used, with a warning that says why and what to do, and the next run probes again.
version_added: "1.0.0"
author:
  - chardev-lab contributors (@chardev-lab)
options:
  kernel:
    description: Kernel image to boot for the probe (the lab image's kernel).
    type: path
    required: true
  cache_file:
    description: JSON file that remembers the verdict.
    type: path
    required: true
  wanted:
    description: V(auto) probes; V(kvm) and V(tcg) skip the probe (V(kvm) still fails without C(/dev/kvm)).
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  timeout:
    description: Seconds the KVM probe may take before KVM is declared unusable.
    type: int
    default: 20
  qemu:
    description: QEMU binary.
    type: str
    default: qemu-system-x86_64
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The probe changes nothing on the host, so in check mode it still runs (QEMU boots for up to
        O(timeout) seconds); only its verdict is not written to O(cache_file).
  diff_mode:
    support: none
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Use KVM where a guest really boots with it
  chardev_lab.lab.lab_vm_accel:
    kernel: "{{ image.kernel }}"
    cache_file: "{{ lab_state_dir }}/accel.json"
  register: accel
"""

RETURN = r"""
accel:
  description: The accelerator to use.
  returned: always
  type: str
  sample: tcg
reason:
  description: Why this accelerator was chosen.
  returned: always
  type: str
  sample: "KVM probe: no output in 20 s (guest hangs under this hypervisor)"
cached:
  description: Whether the verdict came from the cache.
  returned: always
  type: bool
  sample: true
"""

import errno
import hashlib
import json
import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import ModuleFailure, System, execute

PANIC_MARKER = "Kernel panic"
# The cache file lives in the image cache, which root writes: a symbolic link planted at its name is
# refused (ELOOP), never followed.
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def kvm_usable_device(path: str = "/dev/kvm") -> bool:
    return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)


def probe_key(qemu: str, kernel: str) -> str:
    st = os.stat(kernel)
    qst = os.stat(qemu)
    parts = [qemu, str(qst.st_size), str(int(qst.st_mtime)), kernel, str(st.st_size), os.uname().release]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def probe_command(qemu: str, kernel: str, console: str) -> list[str]:
    return [
        qemu,
        "-accel",
        "kvm",
        "-m",
        "256",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 root=/dev/nonexistent",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
    ]


def verdict_from_probe(returncode: int | None, console: str, timeout: int) -> tuple[str, str]:
    """Interpret a probe: (accel, reason). returncode None means the probe was killed at the timeout."""
    if PANIC_MARKER in console:
        return "kvm", "KVM probe: the kernel booted to its expected panic"
    if returncode is None:
        what = "no output" if not console.strip() else "no panic"
        return "tcg", f"KVM probe: {what} in {timeout} s (the guest hangs under KVM here)"
    return "tcg", f"KVM probe: QEMU exited with {returncode} before the kernel ran"


# coreutils' timeout: its exit status when the probe ran out of time (SIGTERM), and when QEMU ignored that
# and was killed --kill-after seconds later (128 + SIGKILL).
TIMED_OUT = (124, 137)


def timed_probe_command(qemu: str, kernel: str, console: str, timeout: int) -> list[str]:
    """The probe under coreutils' timeout: a guest that hangs under KVM (what the probe detects) is
    stopped at the timeout, and killed 5 s later if QEMU does not exit."""
    return ["timeout", "--kill-after=5", str(timeout), *probe_command(qemu, kernel, console)]


def run_probe(system: System, qemu: str, kernel: str, timeout: int) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="lab-vm-kvm-probe-") as tmp:
        console = os.path.join(tmp, "console.log")
        rc = system.run(timed_probe_command(qemu, kernel, console, timeout))[0]
        try:
            with open(console, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            text = ""
    return verdict_from_probe(None if rc in TIMED_OUT else rc, text, timeout)


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "kernel": {"type": "path", "required": True},
            "cache_file": {"type": "path", "required": True},
            "wanted": {"type": "str", "default": "auto", "choices": ["auto", "kvm", "tcg"]},
            "timeout": {"type": "int", "default": 20},
            "qemu": {"type": "str", "default": "qemu-system-x86_64"},
        },
        supports_check_mode=True,
    )


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """Everything the module does, without AnsibleModule: the result, or ModuleFailure."""
    p = params
    result: dict[str, Any] = {"changed": False, "cached": False}
    if p["wanted"] == "tcg":
        return dict(accel="tcg", reason="lab_vm_accel is tcg", **result)
    if not kvm_usable_device(system.path("/dev/kvm")):
        if p["wanted"] == "kvm":
            raise ModuleFailure(
                "lab_vm_accel is kvm but /dev/kvm is missing or not accessible: load the kvm "
                "module, add this user to the kvm group, or set lab_vm_accel: auto",
                **result,
            )
        return dict(accel="tcg", reason="/dev/kvm is missing or not accessible", **result)
    if p["wanted"] == "kvm":
        return dict(accel="kvm", reason="lab_vm_accel is kvm", **result)
    qemu = system.which(p["qemu"])
    if not qemu:
        raise ModuleFailure(f"{p['qemu']} is not installed: run 'make host-deps' (package qemu-system-x86)")
    key = probe_key(qemu, p["kernel"])
    cached = read_cache(p["cache_file"])
    if cached.get("key") == key and {"accel", "reason"} <= cached.keys():
        return dict(accel=cached["accel"], reason=cached["reason"], changed=False, cached=True)
    accel, reason = run_probe(system, qemu, p["kernel"], p["timeout"])
    if not check_mode:
        try:
            write_cache(p["cache_file"], {"key": key, "accel": accel, "reason": reason})
        except OSError as exc:
            system.warn(cache_write_warning(p["cache_file"], exc, p["timeout"]))
    return dict(accel=accel, reason=reason, **result)


def read_cache(path: str) -> dict[str, Any]:
    """The cached verdict, {} when there is none that can be read (missing, a link, not JSON)."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW), encoding="utf-8") as handle:
            cached = json.load(handle)
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def write_cache(path: str, verdict: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(verdict, handle)


def cache_write_warning(path: str, exc: OSError, timeout: int) -> str:
    """What failed, and what to do: the verdict is used anyway, the next run probes again."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space there (df -h)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make that directory writable by the user who runs the lab (ls -ld), or set lab_vm_cache_dir"
    elif exc.errno == errno.ELOOP:
        fix = "it is a symbolic link, which is never followed: remove it (ls -l)"
    else:
        fix = "check that path (ls -ld)"
    return (
        f"could not save the KVM probe's verdict in {path}: {exc.strerror or exc}; this run uses it, "
        f"the next one probes again (up to {timeout} s). To keep it: {fix}"
    )


def main(system: System | None = None) -> None:
    execute(make_module(), run, system)


if __name__ == "__main__":
    main()
