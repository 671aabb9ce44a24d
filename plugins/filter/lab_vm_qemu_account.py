# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_vm_qemu_account: the name of the account one local VM's QEMU runs as.

Each VM's QEMU drops to an account of its own (-runas): two QEMUs of one account could signal and ptrace
each other, so a guest that escaped its QEMU would reach the other VMs. The lab_vm role makes the account
from this name, passes it to lab_vm_instance (qemu_user) and removes it with the VM."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: lab_vm_qemu_account
short_description: The account of one local VM's QEMU, unique to that VM
description:
  - Returns C(<prefix>-<name>-<hash>), at most 32 characters (what C(useradd) accepts), from O(_input),
    the prefix, and O(vm_dir), the VM's directory; C(<name>) is the directory's name in lower case, with
    every character other than a letter, a digit, C(_) or C(-) made C(-), cut to what fits, and C(<hash>)
    the first 8 hex digits of the SHA-256 of the directory's real path.
  - The hash keeps the accounts apart where the names would not (C(Lab.1) and C(lab-1), names cut short,
    two fleets in two directories with a VM of the same name).
positional: vm_dir
options:
  _input:
    description:
      - The prefix (lab_vm_qemu_user), a lower-case letter or C(_) then letters, digits, C(_) or C(-).
    type: str
    required: true
  vm_dir:
    description: The VM's directory (C(<lab_state_dir>/vms/<name>)).
    type: path
    required: true
"""

EXAMPLES = r"""
- name: The account of lab-vm-1's QEMU (chardev-lab-lab-vm-1-<8 hex digits>)
  ansible.builtin.debug:
    msg: "{{ 'chardev-lab' | chardev_lab.lab.lab_vm_qemu_account('/srv/lab/.lab/vms/lab-vm-1') }}"
"""

RETURN = r"""
_value:
  description: The account name, at most 32 characters.
  type: str
"""

# useradd's limit (shadow's USER_NAME_MAX_LENGTH, the size of utmp's ut_user).
MAX_LENGTH = 32
HASH_LENGTH = 8
PREFIX_RE = re.compile(r"[a-z_][a-z0-9_-]*")


def lab_vm_qemu_account(prefix: str, vm_dir: str) -> str:
    prefix = str(prefix)
    room = MAX_LENGTH - len(prefix) - 1 - HASH_LENGTH
    if not PREFIX_RE.fullmatch(prefix) or room < 0:
        raise AnsibleFilterError(
            f"lab_vm_qemu_user {prefix!r} cannot start the names of the VMs' QEMU accounts: it must be a "
            "lower-case letter or '_' followed by lower-case letters, digits, '_' or '-', at most "
            f"{MAX_LENGTH - 1 - HASH_LENGTH} characters (chardev-lab); or root, to keep QEMU as root"
        )
    real = os.path.realpath(os.path.expanduser(str(vm_dir)))
    digest = hashlib.sha256(real.encode()).hexdigest()[:HASH_LENGTH]
    label = re.sub(r"[^a-z0-9_-]", "-", os.path.basename(real).lower())[: max(room - 1, 0)].strip("-")
    return "-".join(part for part in (prefix, label, digest) if part)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"lab_vm_qemu_account": lab_vm_qemu_account}
