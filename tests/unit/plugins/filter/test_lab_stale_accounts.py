"""The lab_stale_accounts filter (plugins/filter/lab_stale_accounts.py), as playbooks/leavers.yml calls
it: records (path -> text), the hosts of lab with their students, the local VMs, the inventory sources.
The rules themselves are tested in tests/unit/plugins/module_utils/test_lab_accounts.py."""

from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.chardev_lab.lab.plugins.filter.lab_stale_accounts import FilterModule

INVENTORY = ["/srv/lab/inventory/roster.yml"]
RECORD = {
    "host": "carol",
    "student": "carol",
    "local_vm": False,
    "address": "198.18.3.2",
    "port": 22,
    "since": "2026-05-01T09:00:00Z",
    "inventory": INVENTORY,
}


def stale(texts: dict[str, str], students: dict[str, str]) -> list[dict]:
    return FilterModule().filters()["lab_stale_accounts"](texts, students, ["alice"], INVENTORY)


def test_a_departed_student_is_returned_with_the_file_and_the_reason() -> None:
    found = stale({"/s/accounts/carol.json": json.dumps(RECORD)}, {"alice": "alice"})
    assert found == [
        {**RECORD, "path": "/s/accounts/carol.json", "reason": "carol is no longer in the inventory"}
    ]
    assert stale({"/s/accounts/carol.json": json.dumps(RECORD)}, {"alice": "alice", "carol": "carol"}) == []


def test_no_records_and_none_values() -> None:
    assert stale({}, {"alice": "alice"}) == []
    assert FilterModule().filters()["lab_stale_accounts"](None, None, None, None) == []


def test_a_bad_record_fails_the_filter_with_the_problems() -> None:
    bad = json.dumps({**RECORD, "host": "../x"})
    with pytest.raises(AnsibleFilterError, match=r"carol.json: host '\.\./x' is not a safe file name"):
        stale({"/s/accounts/carol.json": bad}, {})
