"""Unit tests for plugins/filter/lab_vm_qemu_account.py: one account per VM, a name useradd accepts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.chardev_lab.lab.plugins.filter.lab_vm_qemu_account import FilterModule

account = FilterModule().filters()["lab_vm_qemu_account"]
# What useradd (shadow 4.13, Debian 12) takes without --badname, and at most 32 characters.
USERADD_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def test_the_name_and_a_hash_of_the_vm_directory() -> None:
    digest = hashlib.sha256(b"/srv/lab/.lab/vms/lab-vm-1").hexdigest()[:8]
    assert account("chardev-lab", "/srv/lab/.lab/vms/lab-vm-1") == f"chardev-lab-lab-vm-1-{digest}"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("/srv/lab/.lab/vms/lab-vm-1", "/srv/lab/.lab/vms/lab-vm-2"),
        ("/srv/lab/.lab/vms/Lab.1", "/srv/lab/.lab/vms/lab-1"),  # the same once made lower-case
        ("/srv/a/.lab/vms/lab-vm-1", "/srv/b/.lab/vms/lab-vm-1"),  # two fleets
        ("/l/vms/" + "a" * 60 + "1", "/l/vms/" + "a" * 60 + "2"),  # the same once cut short
    ],
)
def test_every_vm_has_its_own_account(one: str, other: str) -> None:
    assert account("chardev-lab", one) != account("chardev-lab", other)


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        ("chardev-lab", "lab-vm-1"),
        ("chardev-lab", "A" * 63),
        ("chardev-lab", "Student.Name_42"),
        ("q", "x"),
        ("a" * 23, "lab-vm-1"),  # no room for the name: the prefix and the hash
        ("a" * 22, "lab-vm-1"),
    ],
)
def test_names_useradd_accepts(prefix: str, name: str) -> None:
    got = account(prefix, f"/srv/lab/.lab/vms/{name}")
    assert USERADD_NAME.fullmatch(got), got
    assert got.startswith(prefix + "-") and not got.endswith("-") and "--" not in got[len(prefix) :]


def test_a_link_to_the_directory_is_the_same_vm(tmp_path: Path) -> None:
    (tmp_path / "vms/lab-vm-1").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "vms")
    assert account("chardev-lab", str(tmp_path / "link/lab-vm-1")) == account(
        "chardev-lab", str(tmp_path / "vms/lab-vm-1")
    )


@pytest.mark.parametrize("prefix", ["", "Chardev", "-x", "chardev lab", "1lab", "a" * 24])
def test_prefixes_useradd_would_refuse(prefix: str) -> None:
    with pytest.raises(AnsibleFilterError, match="cannot start the names of the VMs' QEMU accounts"):
        account(prefix, "/srv/lab/.lab/vms/lab-vm-1")
