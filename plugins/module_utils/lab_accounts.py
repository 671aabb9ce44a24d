# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control node's record of the students' accounts, and which records outlived their student.

``<lab_state_dir>/accounts/<inventory_hostname>.json`` says that a student's account exists on that host:
the lab_student role writes it (on the control node) before it creates the account, and removes it only
after the account was removed. Its keys: host, student, local_vm (a VM of the local fleet, or a real
host), address and port (where the control node reaches the host), since (ISO time), inventory (the
inventory sources of the run that wrote it), and what the removal needs once the host is gone from the
inventory: ssh_key (the student's key, taken out of root's authorized_keys too) and connection (the
connection variables the host had then, no password).

A record is stale when its inventory is this run's and its host is no longer in it, has another
student, or changed between a local VM and a real host: playbooks/leavers.yml then removes the account
(or the whole VM). Records of another inventory are left alone: the default fleet and a class share the
state directory, and running one must not remove the other's students.

Pure functions of the records' text and the inventory, for the filter chardev_lab.lab.lab_stale_accounts
and the tests. Stdlib only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import path_component_problem

#: The records' directory, below lab_state_dir.
ACCOUNTS_DIR = "accounts"
#: The lab_student role's rule for a student's name (a Linux user name useradd takes; never root).
STUDENT_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
REQUIRED = {"host": str, "student": str, "local_vm": bool, "address": str, "port": int}


class RecordError(ValueError):
    """Records that cannot be trusted to name a host and a student: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "Account records refused (nothing was removed): "
            + "; ".join(self.problems)
            + ". Each says that a student's account exists on a host: fix the file, or delete it once"
            " that account is gone."
        )


def record_file_host(path: str) -> str:
    """The host a record's file is named after (<host>.json)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name[: -len(".json")] if name.endswith(".json") else name


def parse_record(path: str, text: str) -> dict[str, Any]:
    """The record in text (the file at path), checked; RecordError says what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError([f"{path}: not JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise RecordError([f"{path}: not a JSON object"])
    problems = [
        f"{path}: {key} must be {kind.__name__}, not {data.get(key)!r}"
        for key, kind in REQUIRED.items()
        # bool is an int: a port of true is refused.
        if not isinstance(data.get(key), kind) or (kind is int and isinstance(data.get(key), bool))
    ]
    if problems:
        raise RecordError(problems)
    host, student = data["host"], data["student"]
    problem = path_component_problem(host)
    if problem is not None:
        problems.append(f"{path}: host {host!r} is not a safe file name ({problem})")
    elif host != record_file_host(path):
        problems.append(f"{path}: names host {host!r}, not the host of its file name")
    if not STUDENT_NAME.match(student) or student == "root":
        problems.append(f"{path}: student {student!r} is not a student's user name")
    if not 1 <= data["port"] <= 65535:
        problems.append(f"{path}: port {data['port']} is not a TCP port")
    if not data["address"].strip() or any(char.isspace() for char in data["address"]):
        problems.append(f"{path}: address {data['address']!r} is not a host name or address")
    if not isinstance(data.get("inventory", []), list):
        problems.append(f"{path}: inventory must be a list of inventory sources")
    if not isinstance(data.get("connection", {}), dict):
        problems.append(f"{path}: connection must be a mapping of connection variables")
    if problems:
        raise RecordError(problems)
    return data


def stale_reason(
    record: Mapping[str, Any], students: Mapping[str, str], local_vms: Iterable[str]
) -> str | None:
    """Why the record's account must go, or None while its host still has that student."""
    host = record["host"]
    if host not in students:
        return f"{host} is no longer in the inventory"
    student = students[host] or ""
    if student != record["student"]:
        return f"{host}'s student is now {student}" if student else f"{host} has no student any more"
    local_vm = host in set(local_vms)
    if local_vm != record["local_vm"]:
        return f"{host} is now {'a local VM' if local_vm else 'a real host'}"
    return None


def stale_records(
    texts: Mapping[str, str],
    students: Mapping[str, str],
    local_vms: Iterable[str],
    inventory: Iterable[str],
) -> list[dict[str, Any]]:
    """The records (path -> text) of this inventory whose student left their host, sorted by host; each
    with its file (path) and why (reason).

    students: every host of the inventory's group lab -> its lab_student ("" for none); local_vms: the
    hosts of lab_vms; inventory: this run's inventory sources. All records are checked, also those of
    other inventories: one that cannot be trusted stops the removal (RecordError)."""
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in sorted(texts):
        try:
            records.append({**parse_record(path, texts[path]), "path": path})
        except RecordError as exc:
            problems += exc.problems
    if problems:
        raise RecordError(problems)
    ours = sorted(str(source) for source in inventory)
    local = list(local_vms)
    stale = []
    for record in records:
        if sorted(str(source) for source in record.get("inventory", [])) != ours:
            continue
        reason = stale_reason(record, students, local)
        if reason is not None:
            stale.append({**record, "reason": reason})
    return sorted(stale, key=lambda record: record["host"])
