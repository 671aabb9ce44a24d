"""The chardev_roster inventory plugin (plugins/inventory/chardev_roster.py): roster parsing and
validation (every problem with its line number, the whole roster refused), the hosts, groups and
variables it makes, and the real ansible-inventory run on a roster."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from ansible_collections.chardev_lab.lab.plugins.inventory import chardev_roster as cr
from ansible_collections.chardev_lab.lab.plugins.modules import lab_vm_image
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    COLLECTION_ROOT,
    ROSTERS,
    ansible_command,
    ansible_env,
)

REPO_ROOT = COLLECTION_ROOT

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")

KEYS = {name: (ROSTERS / f"{name}.pub").read_text().strip() for name in ("alice", "bob", "carol", "dave")}
A, B, C, D = KEYS["alice"], KEYS["bob"], KEYS["carol"], KEYS["dave"]
NO_PASSWD = cr.reserved_names("")


def parse(text: str, fmt: str = "csv", source: str = "roster.csv") -> list[cr.Student]:
    return cr.parse_roster(text, source, fmt, reserved=NO_PASSWD)


def problems(text: str, fmt: str = "csv", source: str = "roster.csv") -> list[str]:
    with pytest.raises(cr.RosterError) as refused:
        parse(text, fmt, source)
    return refused.value.problems


def csv_text(*rows: str, header: str = "student,ssh_public_key,host,suite") -> str:
    return "\n".join([header, *rows]) + "\n"


# --- good rosters ----------------------------------------------------------------------------------


def test_good_csv_and_yaml_give_the_same_students() -> None:
    from_csv = cr.load_roster(str(ROSTERS / "good.csv"), reserved=NO_PASSWD)
    from_yaml = cr.load_roster(str(ROSTERS / "good.yml"), reserved=NO_PASSWD)
    assert [(s.name, s.ssh_public_key, s.host, s.suite) for s in from_csv] == [
        ("alice", A, None, "bullseye"),
        ("bob", B, None, None),
        ("carol", C, None, "trixie"),
        ("dave", D, "Student-04.example.org", None),
    ]
    assert [(s.name, s.ssh_public_key, s.host, s.suite) for s in from_yaml] == [
        (s.name, s.ssh_public_key, s.host, s.suite) for s in from_csv
    ]
    # Real line numbers: comments and blank lines count.
    assert [s.line for s in from_csv] == [4, 5, 7, 8]
    assert [s.line for s in from_yaml] == [4, 7, 10, 13]


def test_the_shipped_example_rosters_are_good_and_agree() -> None:
    examples = REPO_ROOT / "inventory"
    from_csv = cr.load_roster(str(examples / "roster.example.csv"))
    from_yaml = cr.load_roster(str(examples / "roster.example.yml"))
    rows = [(s.name, s.ssh_public_key, s.host, s.suite) for s in from_csv]
    assert rows == [(s.name, s.ssh_public_key, s.host, s.suite) for s in from_yaml]
    assert len(rows) == 4
    assert [s.host for s in from_csv].count("student-04.example.org") == 1
    assert sum(s.host is None for s in from_csv) == 3


def test_a_bare_yaml_list_is_a_roster_too() -> None:
    text = f'- student: alice\n  ssh_public_key: "{A}"\n- student: bob\n  ssh_public_key: "{B}"\n'
    assert [(s.name, s.line) for s in parse(text, "yaml", "r.yml")] == [("alice", 1), ("bob", 3)]


def test_csv_details_byte_order_mark_case_of_header_quotes_and_short_rows() -> None:
    text = "\ufeffStudent , SSH_Public_Key\n" + f'alice,"{A}"\n' + f"bob,{B}\n"
    assert [(s.name, s.ssh_public_key, s.line) for s in parse(text)] == [("alice", A, 2), ("bob", B, 3)]


def test_suites_are_the_image_builders_suites() -> None:
    assert tuple(lab_vm_image.SUITES) == cr.SUITES


# --- bad rows, each with its line number --------------------------------------------------------------

BAD_ROWS = {
    "duplicate": (
        csv_text(f"alice,{A},,", f"bob,{B},,", f"alice,{C},,"),
        4,
        'duplicate student "alice" (first on line 2)',
    ),
    "capital": (csv_text(f"Alice,{A},,"), 2, 'invalid student name "Alice"'),
    "digit first": (csv_text(f"1alice,{A},,"), 2, 'invalid student name "1alice"'),
    "too long": (csv_text(f"{'a' * 33},{A},,"), 2, "invalid student name"),
    "space": (csv_text(f"al ice,{A},,"), 2, 'invalid student name "al ice"'),
    "root": (csv_text(f"root,{A},,"), 2, 'student name "root" is reserved: a Debian system account'),
    "www-data": (csv_text(f"www-data,{A},,"), 2, 'student name "www-data" is reserved'),
    "sudo group": (csv_text(f"sudo,{A},,"), 2, 'student name "sudo" is reserved: a Debian system group'),
    "group name": (csv_text(f"lab_vms,{A},,"), 2, "a group or host name of the inventory itself"),
    "no name": (csv_text(f",{A},,"), 2, "missing student name"),
    "no key": (csv_text("alice,,,"), 2, "missing ssh_public_key"),
    "not a key": (csv_text("alice,ssh-ed25519 AAAAnotbase64 alice,,"), 2, "ssh-keygen -l rejects it"),
    "truncated key": (csv_text(f"alice,{A[:40]},,"), 2, "ssh-keygen -l rejects it"),
    "two keys": (csv_text(f"alice,{A} {B},,"), 2, "holds 2 keys"),
    "two key lines": (csv_text(f'alice,"{A}\n{B}",,'), 2, "holds 2 keys"),
    "private key": (
        csv_text('alice,"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END...",,'),
        2,
        "is a PRIVATE key",
    ),
    "same host": (
        csv_text(f"alice,{A},pc-01.example.org,", f"bob,{B},PC-01.Example.org,"),
        3,
        'host "PC-01.Example.org" is already assigned to student "alice" (line 2)',
    ),
    "bad host": (csv_text(f"alice,{A},pc 01,"), 2, 'invalid host "pc 01"'),
    "unknown suite": (
        csv_text(f"alice,{A},,sid"),
        2,
        'unknown suite "sid" (choose from bullseye, bookworm, trixie)',
    ),
    "suite case": (csv_text(f"alice,{A},,Bookworm"), 2, 'unknown suite "Bookworm"'),
    "suite with host": (
        csv_text(f"alice,{A},pc-01.example.org,trixie"),
        2,
        'suite "trixie" given for a student with host "pc-01.example.org": suite only chooses the kernel of a'
        " local VM",
    ),
    "too many cells": (csv_text(f"alice,{A},,,extra"), 2, "5 cells but the header names 4 columns"),
}


@pytest.mark.parametrize(("text", "line", "message"), BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row_is_named_with_its_line(text: str, line: int, message: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(f"roster.csv line {line}: "), found
    assert message in found[0]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("student,host\nalice,pc-01\n", 1, 'the header lacks the required column "ssh_public_key"'),
        ("ssh_public_key,host\n", 1, 'the header lacks the required column "student"'),
        (f"student,ssh_public_key,email\nalice,{A},a@example.org\n", 1, 'unknown column "email"'),
        (f"student,ssh_public_key,student\nalice,{A},alice\n", 1, 'column "student" appears twice'),
        (f"# roster\n\nalice,{A}\nbob,{B}\n", 3, 'unknown column "alice"'),
    ],
    ids=["no key column", "no student column", "unknown column", "twice", "no header"],
)
def test_bad_header(text: str, line: int, message: str) -> None:
    found = problems(text)
    assert any(p.startswith(f"roster.csv line {line}: ") and message in p for p in found), found


@pytest.mark.parametrize(
    ("text", "fmt", "line"),
    [
        ("student,ssh_public_key,host,suite\n", "csv", 1),
        ("# nothing yet\n\nstudent,ssh_public_key\n# still nothing\n\n", "csv", 3),
        ("", "csv", 1),
        ("# only a comment\n", "csv", 1),
        ("---\nstudents: []\n", "yaml", 2),
        ("---\nstudents:\n", "yaml", 2),
        ("---\n# nobody\n", "yaml", 1),
        ("[]\n", "yaml", 1),
    ],
    ids=[
        "header only",
        "header and comments",
        "empty file",
        "comment only",
        "yaml []",
        "yaml null",
        "yaml empty",
        "bare []",
    ],
)
def test_empty_roster_is_refused(text: str, fmt: str, line: int) -> None:
    assert problems(text, fmt, "r") == [f"r line {line}: empty roster: no student rows"]


def test_every_problem_of_a_bad_csv_roster_is_listed_with_its_line() -> None:
    with pytest.raises(cr.RosterError) as refused:
        cr.load_roster(str(ROSTERS / "bad.csv"), reserved=NO_PASSWD)
    lines = [int(p.split(" ")[2].rstrip(":")) for p in refused.value.problems]
    assert lines == [4, 5, 6, 7, 8, 9, 10, 12, 13, 14]
    assert all(p.startswith("bad.csv line ") for p in refused.value.problems)
    message = str(refused.value)
    assert message.startswith("chardev_roster: roster bad.csv refused, no host added (10 problems):\n")
    assert message.splitlines()[1:] == refused.value.problems


def test_every_problem_of_a_bad_yaml_roster_is_listed_with_its_line() -> None:
    with pytest.raises(cr.RosterError) as refused:
        cr.load_roster(str(ROSTERS / "bad.yml"), reserved=NO_PASSWD)
    found = refused.value.problems
    expected = [
        (6, 'duplicate student "alice" (first on line 4)'),
        (10, 'unknown key "email"'),
        (11, "a student must be a mapping"),
        (13, "ssh-keygen -l rejects it"),
        (14, "suite must be text"),
    ]
    assert len(found) == len(expected), found
    for problem, (line, message) in zip(found, expected, strict=True):
        assert problem.startswith(f"bad.yml line {line}: "), problem
        assert message in problem


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("students:\n  - student: alice\n    bad: [\n", 4, "not valid YAML"),
        ("class: 1\nstudents: []\n", 1, "a YAML roster is a list of students or a mapping"),
        ("students: alice\n", 1, "students must be a list of mappings"),
        (f'- student: alice\n  student: bob\n  ssh_public_key: "{A}"\n', 2, 'key "student" appears twice'),
    ],
    ids=["syntax", "other keys", "not a list", "key twice"],
)
def test_bad_yaml_structure(text: str, line: int, message: str) -> None:
    found = problems(text, "yaml", "r.yml")
    assert any(p.startswith(f"r.yml line {line}: ") and message in p for p in found), found


def test_reserved_names_include_control_node_system_accounts() -> None:
    passwd = (
        "root:x:0:0::/root:/bin/bash\nlabsvc:x:998:998::/:/usr/sbin/nologin\n"
        "teacher:x:1000:1000::/home/teacher:/bin/sh\n"
    )
    reserved = cr.reserved_names(passwd)
    assert reserved["labsvc"] == "an account with uid 998 in this control node's /etc/passwd"
    assert "teacher" not in reserved
    assert reserved["root"] == "a Debian system account"
    for name in ("daemon", "nobody", "_apt", "systemd-network", "messagebus", "sshd", "polkitd"):
        assert name in reserved
    found = cr.parse_roster(csv_text(f"teacher,{A},,"), "r.csv", "csv", reserved=reserved)
    assert [s.name for s in found] == ["teacher"]
    with pytest.raises(cr.RosterError) as refused:
        cr.parse_roster(csv_text(f"labsvc,{A},,"), "r.csv", "csv", reserved=reserved)
    assert refused.value.problems == [
        'r.csv line 2: student name "labsvc" is reserved: an account with uid 998 in this control node\'s'
        " /etc/passwd"
    ]


def test_control_node_passwd_is_read(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("svc:x:500:500::/:/bin/false\n")
    assert "svc" in cr.control_node_reserved_names(str(passwd))
    assert "svc" not in cr.control_node_reserved_names(str(tmp_path / "missing"))


def test_a_roster_with_one_bad_row_gives_no_students() -> None:
    with pytest.raises(cr.RosterError) as refused:
        parse(csv_text(f"alice,{A},,", f"bob,{B},,", f"carol,{C},,sid"))
    assert len(refused.value.problems) == 1


def test_unknown_roster_format() -> None:
    with pytest.raises(cr.RosterError, match=r"roster\.txt: unknown roster format"):
        cr.load_roster("/somewhere/roster.txt")


def test_unreadable_roster(tmp_path: Path) -> None:
    with pytest.raises(cr.RosterError) as refused:
        cr.load_roster(str(tmp_path / "missing.csv"))
    assert refused.value.problems == [
        f"missing.csv: cannot read the roster {tmp_path / 'missing.csv'}: No such file or directory"
    ]


# --- hosts, groups, variables -------------------------------------------------------------------------


def test_inventory_entries_ports_groups_and_vars() -> None:
    students = parse(
        csv_text(
            f"alice,{A},,bullseye", f"dave,{D},student-04.example.org,", f"bob,{B},,", f"carol,{C},,trixie"
        )
    )
    entries = {entry.name: entry for entry in cr.inventory_entries(students)}
    assert list(entries) == ["alice", "dave", "bob", "carol"]
    assert entries["alice"].group == "lab_vms"
    assert entries["alice"].variables == {
        "lab_student": "alice",
        "lab_student_ssh_key": A,
        "ansible_port": 2301,
        "lab_vm_ssh_port": 2301,
        "lab_vm_suite": "bullseye",
    }
    # Students with a host take no port; bob gets the next port after alice, no suite: the role's default.
    assert entries["bob"].variables == {
        "lab_student": "bob",
        "lab_student_ssh_key": B,
        "ansible_port": 2302,
        "lab_vm_ssh_port": 2302,
    }
    assert entries["carol"].variables["ansible_port"] == 2303
    assert entries["dave"].group == "classroom"
    assert entries["dave"].variables == {
        "lab_student": "dave",
        "lab_student_ssh_key": D,
        "ansible_host": "student-04.example.org",
    }


def test_first_port() -> None:
    students = parse(csv_text(f"alice,{A},,", f"bob,{B},,"))
    assert [e.variables["ansible_port"] for e in cr.inventory_entries(students, 2401)] == [2401, 2402]
    assert cr.inventory_entries(students, 65534)[-1].variables["ansible_port"] == 65535
    with pytest.raises(cr.RosterError, match="2 local VMs need ports 65535 to 65536"):
        cr.inventory_entries(students, 65535)
    only_hosts = parse(csv_text(f"dave,{D},pc-04,"))
    assert cr.inventory_entries(only_hosts, 70000)[0].group == "classroom"


# --- the plugin ------------------------------------------------------------------------------------


def write_config(
    directory: Path, roster: str | None, name: str = "class.roster.yml", extra: str = ""
) -> Path:
    config = directory / name
    text = f"---\nplugin: {cr.NAME}\n" + (f"roster: {roster}\n" if roster else "") + extra
    config.write_text(text)
    return config


def test_verify_file_wants_only_its_own_config_files(tmp_path: Path) -> None:
    plugin = cr.InventoryModule()
    assert plugin.verify_file(str(write_config(tmp_path, "x.csv")))
    assert plugin.verify_file(str(write_config(tmp_path, "x.csv", name="roster.yaml")))
    assert plugin.verify_file(str(REPO_ROOT / "inventory" / "roster.yml"))
    # The plugin line elsewhere, another plugin, another name, a YAML roster: not ours.
    assert not plugin.verify_file(str(write_config(tmp_path, "x.csv", name="class.yml")))
    other = tmp_path / "other.roster.yml"
    other.write_text("plugin: constructed\n")
    assert not plugin.verify_file(str(other))
    roster = tmp_path / "students.roster.yml"
    roster.write_text(f'students:\n  - student: alice\n    ssh_public_key: "{A}"\n')
    assert not plugin.verify_file(str(roster))
    assert not plugin.verify_file(str(REPO_ROOT / "inventory" / "roster.example.yml"))
    assert not plugin.verify_file(str(tmp_path / "missing.roster.yml"))


def load_plugin() -> cr.InventoryModule:
    """The plugin as Ansible loads it, by its FQCN."""
    plugin = inventory_loader.get(cr.NAME)
    assert plugin is not None
    return plugin


def test_plugin_adds_hosts_groups_and_keyed_groups(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, str(ROSTERS / "good.csv"), extra="keyed_groups:\n  - key: lab_vm_suite\n    prefix: suite\n"
    )
    inventory = InventoryData()
    load_plugin().parse(inventory, DataLoader(), str(config), cache=False)
    assert sorted(inventory.hosts) == ["alice", "bob", "carol", "dave"]
    assert sorted(h.name for h in inventory.groups["lab_vms"].get_hosts()) == ["alice", "bob", "carol"]
    assert [h.name for h in inventory.groups["classroom"].get_hosts()] == ["dave"]
    assert sorted(g.name for g in inventory.groups["lab"].child_groups) == ["classroom", "lab_vms"]
    assert [h.name for h in inventory.groups["suite_trixie"].get_hosts()] == ["carol"]
    assert "suite_bookworm" not in inventory.groups


def test_plugin_refuses_the_whole_roster_and_adds_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(ROSTERS / "bad.csv"))
    inventory = InventoryData()
    with pytest.raises(AnsibleParserError) as refused:
        load_plugin().parse(inventory, DataLoader(), str(config), cache=False)
    assert inventory.hosts == {}
    assert set(inventory.groups) == {"all", "ungrouped"}
    assert "bad.csv line 4: duplicate student" in str(refused.value)
    assert "bad.csv line 14: suite" in str(refused.value)


def plain(value: object) -> object:
    return value["__ansible_unsafe"] if isinstance(value, dict) and "__ansible_unsafe" in value else value


def run_ansible_inventory(
    cwd: Path, config: Path, roster: str | None, *args: str
) -> subprocess.CompletedProcess:
    env = ansible_env(clean=True)
    if roster is not None:
        env["CHARDEV_LAB_ROSTER"] = roster
    return subprocess.run(
        [ansible_command("ansible-inventory"), "-i", str(config), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ansible_inventory_list_with_a_relative_roster(tmp_path: Path) -> None:
    shutil.copy(ROSTERS / "good.yml", tmp_path / "class.yml")
    config = write_config(tmp_path, None, extra="first_port: 2401\n")
    proc = run_ansible_inventory(tmp_path, config, "class.yml", "--list")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert listed["lab"]["children"] == ["lab_vms", "classroom"]
    assert listed["lab_vms"]["hosts"] == ["alice", "bob", "carol"]
    assert listed["classroom"]["hosts"] == ["dave"]
    # Roster values are not trusted templates (a key's comment must never be run as Jinja): the legacy
    # JSON profile marks such strings {"__ansible_unsafe": ...}.
    hostvars = {
        host: {key: plain(value) for key, value in variables.items()}
        for host, variables in listed["_meta"]["hostvars"].items()
    }
    assert listed["_meta"]["hostvars"]["alice"]["lab_student"] == {"__ansible_unsafe": "alice"}
    assert hostvars["alice"] == {
        "lab_student": "alice",
        "lab_student_ssh_key": A,
        "ansible_port": 2401,
        "lab_vm_ssh_port": 2401,
        "lab_vm_suite": "bullseye",
    }
    assert "lab_vm_suite" not in hostvars["bob"]
    assert hostvars["carol"]["ansible_port"] == 2403
    assert hostvars["dave"] == {
        "lab_student": "dave",
        "lab_student_ssh_key": D,
        "ansible_host": "Student-04.example.org",
    }


def test_ansible_inventory_stops_on_a_bad_roster_and_shows_every_problem(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    proc = run_ansible_inventory(tmp_path, config, str(ROSTERS / "bad.csv"), "--list")
    assert proc.returncode != 0
    assert "Completely failed to parse inventory source" in proc.stderr
    for line in (4, 5, 6, 7, 8, 9, 10, 12, 13, 14):
        assert f"bad.csv line {line}: " in proc.stderr, proc.stderr
