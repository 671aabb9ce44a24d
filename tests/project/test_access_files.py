"""Offline tests of the files playbooks/access.yml writes on the control node.

The rows come from the play's own `__access_rows` expression (loaded from playbooks/access.yml with
Ansible's DataLoader) over fake hostvars: a local VM student, real-host students and a host without a
student. The templates are rendered with Ansible's Templar the way the template action does it
(trim_blocks, no backslash escaping), and the CSV is read back with csv.DictReader.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "access.yml"
TEMPLATES = REPO / "playbooks" / "templates"
LOADER = DataLoader()
COLUMNS = ["student", "host", "address", "port", "user", "ssh"]
MANAGED = "Ansible managed"

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxCxbbXEZ0ORRC0i7lEZ2h6W4dGVZJbV4Cx1xYzYzYz {}@laptop"
HOSTVARS: dict[str, dict[str, Any]] = {
    # The default fleet's VM: no student, never listed.
    "lab-vm-1": {"ansible_host": "127.0.0.1", "ansible_port": 2201, "lab_state_dir": "/srv/lab/.lab"},
    # Local VMs, one per student; dave's is reached through the control node's LAN address.
    "zoe": {
        "lab_student": "zoe",
        "lab_student_ssh_key": KEY.format("zoe"),
        "ansible_host": "127.0.0.1",
        "ansible_port": 2301,
        "lab_state_dir": "/srv/lab/.lab",
    },
    "dave": {
        "lab_student": "dave",
        "lab_student_ssh_key": KEY.format("dave"),
        "ansible_host": "127.0.0.1",
        "ansible_port": 2302,
        "lab_vm_ssh_port": 2302,
        "lab_vm_ssh_address": "192.0.2.1",
        "lab_state_dir": "/srv/lab/.lab",
        "lab_student_sudo": False,
    },
    # Real hosts: one with an address and the default port, one by name on another port.
    "alice": {
        "lab_student": "alice",
        "lab_student_ssh_key": KEY.format("alice"),
        "ansible_host": "198.51.100.7",
        "ansible_user": "labadmin",
    },
    "bob-pc.example.org": {
        "lab_student": "bob",
        "lab_student_ssh_key": KEY.format("bob"),
        "ansible_port": 2222,
    },
}
GROUPS = {
    "all": list(HOSTVARS),
    "lab": list(HOSTVARS),
    "lab_vms": ["lab-vm-1", "zoe", "dave"],
    "classroom": ["alice", "bob-pc.example.org"],
}
FINGERPRINTS = {"zoe": "256 SHA256:Zc5yJq0b9gW6mJ0k3mJm6kq2dY3p8O7uT3xv1y1a2b4 zoe (ED25519)"}

EXPECTED = [
    {
        "student": "alice",
        "host": "alice",
        "address": "198.51.100.7",
        "port": "22",
        "user": "alice",
        "ssh": "ssh -p 22 alice@198.51.100.7",
    },
    {
        "student": "bob",
        "host": "bob-pc.example.org",
        "address": "bob-pc.example.org",
        "port": "2222",
        "user": "bob",
        "ssh": "ssh -p 2222 bob@bob-pc.example.org",
    },
    {
        "student": "dave",
        "host": "dave",
        "address": "192.0.2.1",
        "port": "2302",
        "user": "dave",
        "ssh": "ssh -p 2302 dave@192.0.2.1",
    },
    {
        "student": "zoe",
        "host": "zoe",
        "address": "127.0.0.1",
        "port": "2301",
        "user": "zoe",
        "ssh": "ssh -p 2301 zoe@127.0.0.1",
    },
]


def play_vars() -> dict[str, Any]:
    plays = LOADER.load_from_file(str(PLAYBOOK), trusted_as_template=True)
    play = next(p for p in plays if p.get("hosts") == "localhost")
    return dict(play["vars"])


def rows(**extra_vars: Any) -> list[dict[str, Any]]:
    variables = {**play_vars(), "hostvars": HOSTVARS, "groups": GROUPS, **extra_vars}
    return Templar(loader=LOADER, variables=variables).template(trust_as_template("{{ __access_rows }}"))


def render(name: str, **variables: Any) -> str:
    """Render a template as ansible.builtin.template does (trim_blocks, lstrip_blocks off)."""
    source = TEMPLATES / name
    data = trust_as_template(source.read_text())
    templar = Templar(loader=LOADER, variables={"ansible_managed": MANAGED, **variables})
    templar = templar.copy_with_new_env(searchpath=[str(TEMPLATES)])
    overrides = {"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"}
    return templar.template(data, escape_backslashes=False, overrides=overrides)


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader)


def test_rows_one_per_student_sorted() -> None:
    got = rows()
    assert [r["student"] for r in got] == ["alice", "bob", "dave", "zoe"]
    assert [{k: r[k] for k in COLUMNS} for r in got] == EXPECTED
    by_student = {r["student"]: r for r in got}
    assert by_student["zoe"]["host_key_pub"] == "/srv/lab/.lab/vms/zoe/ssh_host_ed25519_key.pub"
    assert by_student["alice"]["host_key_pub"] == ""
    assert by_student["dave"]["sudo"] is False
    assert by_student["zoe"]["sudo"] is True


def test_access_address_overrides_for_local_vms() -> None:
    hostvars = {**HOSTVARS, "zoe": {**HOSTVARS["zoe"], "lab_access_address": "lab.example.org"}}
    got = {r["student"]: r for r in rows(hostvars=hostvars)}
    assert got["zoe"]["ssh"] == "ssh -p 2301 zoe@lab.example.org"
    assert got["alice"]["address"] == "198.51.100.7"


def test_csv_columns_and_values() -> None:
    text = render("access.csv.j2", __access_rows=rows())
    fieldnames, records = read_csv(text)
    assert fieldnames == COLUMNS
    assert records == EXPECTED
    assert text.startswith("student,host,address,port,user,ssh\n")
    assert text.endswith("zoe@127.0.0.1\n") and not text.endswith("\n\n")
    assert MANAGED not in text


def test_csv_quotes_what_needs_quoting() -> None:
    odd = [{**EXPECTED[0], "host": 'lab, "room 2"', "ssh": " ssh x"}]
    _columns, records = read_csv(render("access.csv.j2", __access_rows=odd))
    assert records == odd


def test_csv_without_students_has_only_the_header() -> None:
    assert render("access.csv.j2", __access_rows=[]) == "student,host,address,port,user,ssh\n"


@pytest.fixture
def notes() -> dict[str, str]:
    return {
        r["student"]: render("access-student.txt.j2", item=r, __access_fingerprints=FINGERPRINTS)
        for r in rows()
    }


def test_note_local_vm(notes: dict[str, str]) -> None:
    note = notes["zoe"]
    assert note.startswith(f"#\n# {MANAGED}\n#\n")
    assert "  ssh -p 2301 zoe@127.0.0.1\n" in note
    assert "-i <your private key>" in note
    assert "ED25519 key fingerprint is SHA256:Zc5yJq0b9gW6mJ0k3mJm6kq2dY3p8O7uT3xv1y1a2b4." in note
    assert "You have sudo" in note
    assert "yours alone" in note
    assert "ssh-keyscan" not in note


def test_note_local_vm_not_started(notes: dict[str, str]) -> None:
    assert "has not been started yet" in notes["dave"]
    assert "You have sudo" not in notes["dave"]


def test_note_real_host(notes: dict[str, str]) -> None:
    note = notes["bob"]
    assert "  ssh -p 2222 bob@bob-pc.example.org\n" in note
    assert "Ask your instructor" in note
    assert "ssh-keyscan -p 2222 bob-pc.example.org" in note
    assert "fingerprint is SHA256" not in note
    assert "You have sudo" in note
