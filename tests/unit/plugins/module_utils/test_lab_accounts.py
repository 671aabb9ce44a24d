"""plugins/module_utils/lab_accounts.py: which of the control node's account records outlived their
student (the removal computation of playbooks/leavers.yml), and which records cannot be trusted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_accounts import (
    RecordError,
    parse_record,
    stale_records,
)

INVENTORY = ["/srv/lab/inventory/roster.yml"]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJTFxPVbLi7vVN3aOFCtrb6kpAhDDEBWjY/zOSdemfTE {}@laptop"
STATE = "/srv/lab/.lab/accounts"


def record(host: str, student: str | None = None, local_vm: bool = True, **extra: Any) -> dict[str, Any]:
    """A record as the lab_student role writes it."""
    student = student or host
    data: dict[str, Any] = {
        "host": host,
        "student": student,
        "local_vm": local_vm,
        "address": "127.0.0.1" if local_vm else f"{host}.classroom.example.org",
        "port": 2301 if local_vm else 22,
        "since": "2026-05-01T09:00:00Z",
        "inventory": INVENTORY,
        "ssh_key": KEY.format(student),
        "connection": {} if local_vm else {"ansible_user": "labadmin", "ansible_become": True},
    }
    return {**data, **extra}


def texts(*records: dict[str, Any]) -> dict[str, str]:
    return {f"{STATE}/{r['host']}.json": json.dumps(r) for r in records}


# The class now: alice and bob on local VMs, dave on his own machine, pc-05 a real host whose student
# is zoe; the default fleet's lab-vm-1 has no student.
STUDENTS = {"alice": "alice", "bob": "bob", "dave": "dave", "pc-05": "zoe", "lab-vm-1": ""}
LOCAL_VMS = ["alice", "bob", "lab-vm-1"]


def stale(*records: dict[str, Any], inventory: list[str] | None = None) -> list[dict[str, Any]]:
    return stale_records(texts(*records), STUDENTS, LOCAL_VMS, INVENTORY if inventory is None else inventory)


def test_records_of_the_students_still_there_are_not_stale() -> None:
    assert stale(record("alice"), record("bob"), record("dave", local_vm=False)) == []


def test_a_student_removed_from_the_roster() -> None:
    # carol had a local VM, erin a real host: neither host is in the inventory any more.
    carol, erin = record("carol"), record("erin", local_vm=False)
    found = stale(record("alice"), carol, erin)
    assert [r["host"] for r in found] == ["carol", "erin"]
    assert found[0] == {
        **carol,
        "path": f"{STATE}/carol.json",
        "reason": "carol is no longer in the inventory",
    }
    assert found[1]["connection"] == {"ansible_user": "labadmin", "ansible_become": True}
    assert found[1]["address"] == "erin.classroom.example.org" and found[1]["port"] == 22


def test_a_host_whose_student_changed() -> None:
    # pc-05 was yann's, it is zoe's now; lab-vm-1 had a student and has none now.
    found = stale(record("pc-05", "yann", local_vm=False), record("lab-vm-1", "yann2"))
    assert [(r["host"], r["student"], r["reason"]) for r in found] == [
        ("lab-vm-1", "yann2", "lab-vm-1 has no student any more"),
        ("pc-05", "yann", "pc-05's student is now zoe"),
    ]


def test_a_host_that_moved_between_a_local_vm_and_a_real_host() -> None:
    found = stale(record("dave"), record("alice", local_vm=False))
    assert [(r["host"], r["reason"]) for r in found] == [
        ("alice", "alice is now a local VM"),
        ("dave", "dave is now a real host"),
    ]


def test_records_of_another_inventory_are_left_alone() -> None:
    # The default fleet (inventory/local.yml) and a class (inventory/roster.yml) share .lab: a run of
    # one must not remove the other's students.
    other = record("carol", inventory=["/srv/lab/inventory/local.yml"])
    assert stale(other) == []
    assert stale(record("carol", inventory=[])) == []
    # The order of the sources does not matter.
    two = ["/b/inventory", "/a/roster.yml"]
    assert [r["host"] for r in stale(record("carol", inventory=two), inventory=list(reversed(two)))] == [
        "carol"
    ]


def test_nothing_stale_twice() -> None:
    # Idempotent: once the removal took the records away, nothing is left to do.
    assert stale_records({}, STUDENTS, LOCAL_VMS, INVENTORY) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"host": "../../etc/cron.d/x"}, "is not a safe file name"),
        ({"host": "bob"}, "names host 'bob', not the host of its file name"),
        ({"student": "root"}, "is not a student's user name"),
        ({"student": "Alice; rm -rf /"}, "is not a student's user name"),
        ({"port": 0}, "is not a TCP port"),
        ({"port": "22"}, "port must be int"),
        ({"port": True}, "port must be int"),
        ({"local_vm": "yes"}, "local_vm must be bool"),
        ({"address": "-oProxyCommand=x y"}, "is not a host name or address"),
        ({"address": ""}, "is not a host name or address"),
        ({"inventory": "roster.yml"}, "inventory must be a list"),
        ({"connection": ["ansible_user"]}, "connection must be a mapping"),
    ],
)
def test_a_record_that_cannot_be_trusted_stops_the_removal(change: dict[str, Any], problem: str) -> None:
    bad = {**record("carol"), **change}
    with pytest.raises(RecordError) as refused:
        stale_records({f"{STATE}/carol.json": json.dumps(bad)}, STUDENTS, LOCAL_VMS, INVENTORY)
    assert problem in str(refused.value), str(refused.value)
    assert str(refused.value).startswith("Account records refused (nothing was removed)")
    assert "delete it once that account is gone" in str(refused.value)


@pytest.mark.parametrize(("text", "problem"), [("{not json", "not JSON"), ("[1, 2]", "not a JSON object")])
def test_a_record_that_is_not_a_record(text: str, problem: str) -> None:
    with pytest.raises(RecordError, match=problem):
        parse_record(f"{STATE}/carol.json", text)


def test_every_bad_record_is_listed_and_other_inventories_are_checked_too() -> None:
    bad = {
        f"{STATE}/x.json": json.dumps({**record("x"), "inventory": ["/elsewhere"], "student": "root"}),
        f"{STATE}/y.json": "nope",
    }
    with pytest.raises(RecordError) as refused:
        stale_records({**bad, **texts(record("carol"))}, STUDENTS, LOCAL_VMS, INVENTORY)
    assert len(refused.value.problems) == 2
