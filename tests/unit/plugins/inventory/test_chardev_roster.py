"""The chardev_roster inventory plugin (plugins/inventory/chardev_roster.py): roster parsing and
validation (every problem with its line number, the whole roster refused), the hosts, groups and
variables it makes, and the real ansible-inventory run on a roster."""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import socket
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

# A control node "labhost" with the addresses 192.0.2.10 and 2001:db8::10, and its resolver: a roster's
# hosts are checked against it without asking this machine's DNS.
DNS = {
    "pc-01.example.org": ["192.0.2.101"],
    "pc-02.example.org": ["192.0.2.102", "2001:db8::102"],
    "alias.example.org": ["192.0.2.101", "192.0.2.10"],
    "v6alias.example.org": ["2001:db8:0:0::10"],
    "lo.example.org": ["127.0.1.1"],
    "mapped.example.org": ["::ffff:127.0.0.1"],
    "zero.example.org": ["0.0.0.0"],
}
RESOLVED: list[str] = []


def fake_resolve(name: str) -> list[str]:
    RESOLVED.append(name)
    return DNS.get(name.lower().rstrip("."), [])


CONTROL = cr.ControlNode(
    names=frozenset({"labhost", "labhost.example.org"}),
    addresses=frozenset({ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10")}),
    resolve=fake_resolve,
)


def parse(text: str, fmt: str = "csv", source: str = "roster.csv") -> list[cr.Student]:
    return cr.parse_roster(text, source, fmt, reserved=NO_PASSWD, control_node=CONTROL)


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


# --- hosts: what a host may be, and never the control node ---------------------------------------------

CONTROL_NODE_HOSTS = {
    "localhost": ("localhost", "localhost is the control node"),
    "localhost any case": ("LocalHost.", "localhost is the control node"),
    "under localhost": ("pc.localhost", "localhost is the control node"),
    "localhost with a port": ("localhost:2222", "localhost is the control node"),
    "127.0.0.1": ("127.0.0.1", "a loopback address"),
    "127.0.1.1": ("127.0.1.1", "a loopback address"),
    "127.0.0.2": ("127.0.0.2", "a loopback address"),
    "127.255.255.254 with a port": ("127.255.255.254:22", "a loopback address"),
    "::1": ("[::1]", "a loopback address"),
    "::1 spelt long": ("[0:0:0:0:0:0:0:1]:2222", "a loopback address"),
    "IPv4-mapped loopback": ("[::ffff:127.0.0.1]", "a loopback address"),
    "0.0.0.0": ("0.0.0.0", "the unspecified address"),
    "::": ("[::]", "the unspecified address"),
    "this network": ("0.1.2.3", '"this network"'),
    "host name": ("labhost", "this control node's own name"),
    "FQDN any case": ("LabHost.Example.org.", "this control node's own name"),
    "own IPv4 address": ("192.0.2.10", "an address of this control node"),
    "own IPv6 address spelt otherwise": ("[2001:DB8:0::10]:22", "an address of this control node"),
    "name resolving to an own address": ("alias.example.org", "it resolves to 192.0.2.10, an address of"),
    "name resolving to an own IPv6 address": ("v6alias.example.org:2222", "an address of this control node"),
    "name resolving to loopback": ("lo.example.org", "it resolves to 127.0.1.1, a loopback address"),
    "name resolving to mapped loopback": ("mapped.example.org", "a loopback address"),
    "name resolving to 0.0.0.0": ("zero.example.org", "the unspecified address"),
}


@pytest.mark.parametrize(("host", "why"), CONTROL_NODE_HOSTS.values(), ids=CONTROL_NODE_HOSTS.keys())
def test_a_host_that_is_the_control_node_is_refused(host: str, why: str) -> None:
    found = problems(csv_text(f"alice,{A},pc-01.example.org,", f"bob,{B},{host},"))
    assert len(found) == 1, found
    shown = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    assert found[0].startswith(f'roster.csv line 3: host "{shown}" is the control node ('), found
    assert why in found[0]
    assert "leave host empty for a local VM" in found[0]


BAD_HOSTS = {
    "leading dash": ("-Fevil.conf", 'it starts with "-"'),
    "leading dash, option": ("-oProxyCommand=sh", 'it starts with "-"'),
    "user@": ("root@pc-01.example.org", 'it holds "@"'),
    "slash": ("pc-01.example.org/x", 'it holds "/"'),
    "URL": ("ssh://pc-01.example.org", 'it holds "/"'),
    "space": ("pc 01", "it holds whitespace"),
    "tab": ("pc\t01", "it holds the control character U+0009"),
    "escape": ("pc\x1b[2J01", "it holds the control character U+001B"),
    "DEL": ("pc\x7f01", "it holds the control character U+007F"),
    "other character": ("pc=01", "it is not a host name"),
    "empty label": ("pc..example.org", "it is not a host name"),
    "leading dot": (".pc", "it is not a host name"),
    "label ending in dash": ("pc-.example.org", "it is not a host name"),
    "too long": ("a" * 64 + ".example.org", "it is not a host name"),
    "IPv4 short": ("127.1", "127.1 is not an IPv4 address as four decimal numbers"),
    "IPv4 as a number": ("2130706433", "is not an IPv4 address as four decimal numbers"),
    "IPv4 in hex": ("0x7f000001", "is not an IPv4 address as four decimal numbers"),
    "IPv4 in octal": ("0177.0.0.1", "is not an IPv4 address as four decimal numbers"),
    "IPv4 leading zero": ("010.0.0.1", "is not an IPv4 address as four decimal numbers"),
    "five numbers": ("1.2.3.4.5", "is not an IPv4 address"),
    "bare IPv6": ("2001:db8::3", "an IPv6 address must be in brackets"),
    "IPv6 zone": ("[fe80::1%eth0]", "an IPv6 zone"),
    "IPv4 in brackets": ("[192.0.2.7]", "is not an IPv6 address"),
    "unclosed bracket": ("[2001:db8::3", "brackets go around an IPv6 address only"),
    "bracket inside": ("pc[1]", "brackets go around an IPv6 address only"),
    "two ports": ("pc-01:22:23", "an IPv6 address must be in brackets"),
    "port 0": ("pc-01.example.org:0", 'port "0" is not a number from 1 to 65535'),
    "port too big": ("[2001:db8::3]:65536", 'port "65536" is not a number from 1 to 65535'),
    "empty port": ("pc-01.example.org:", 'port "" is not a number'),
    "port not a number": ("pc-01.example.org:ssh", 'port "ssh" is not a number'),
    "port leading zero": ("pc-01.example.org:022", 'port "022" is not a number'),
}


@pytest.mark.parametrize(("host", "why"), BAD_HOSTS.values(), ids=BAD_HOSTS.keys())
def test_a_host_that_is_not_a_host_name_or_address_is_refused(host: str, why: str) -> None:
    found = problems(csv_text(f'alice,{A},"{host}",'))
    assert len(found) == 1, found
    assert found[0].startswith("roster.csv line 2: invalid host "), found
    assert why in found[0]
    assert "[2001:db8::3]:2222" in found[0]  # the message shows what a host may be
    assert "\n" not in found[0] and "\x1b" not in found[0]


@pytest.mark.parametrize(
    ("cell", "host", "port"),
    [
        ("pc-3.example.org", "pc-3.example.org", None),
        ("pc-3.example.org:2222", "pc-3.example.org", 2222),
        ("pc_3.lan.", "pc_3.lan.", None),
        ("198.51.100.7:22", "198.51.100.7", 22),
        ("[2001:db8::3]", "2001:db8::3", None),
        ("[2001:db8::3]:2222", "2001:db8::3", 2222),
        ("pc-3:65535", "pc-3", 65535),
    ],
)
def test_good_hosts_and_ports(cell: str, host: str, port: int | None) -> None:
    (student,) = parse(csv_text(f"alice,{A},{cell},"))
    assert (student.host, student.port) == (host, port)


def test_a_name_that_does_not_resolve_is_not_refused() -> None:
    RESOLVED.clear()
    students = parse(csv_text(f"alice,{A},pc-09.example.org,", f"bob,{B},pc-02.example.org:2222,"))
    assert [s.host for s in students] == ["pc-09.example.org", "pc-02.example.org"]
    assert sorted(RESOLVED) == ["pc-02.example.org", "pc-09.example.org"]


def test_the_same_host_and_port_twice_is_refused_however_spelt() -> None:
    found = problems(
        csv_text(
            f"alice,{A},pc-01.example.org:2222,",
            f"bob,{B},PC-01.example.org.:2222,",
            f"carol,{C},[2001:db8::3],",
            f"dave,{D},[2001:DB8:0:0::3],",
        )
    )
    assert [p.split(":")[0] for p in found] == ["roster.csv line 3", "roster.csv line 5"]
    assert 'already assigned to student "alice" (line 2)' in found[0]
    assert 'already assigned to student "carol" (line 4)' in found[1]
    # One address, two ports: two machines behind one router's port forwards.
    students = parse(csv_text(f"alice,{A},198.51.100.7:2201,", f"bob,{B},198.51.100.7:2202,"))
    assert [s.port for s in students] == [2201, 2202]


def test_every_host_problem_is_listed_with_the_others() -> None:
    found = problems(
        csv_text(
            f"alice,{A},localhost,",
            f"bob,restrict {B},pc-01.example.org,",
            f"carol,{C},pc-02.example.org:0,",
            f"dave,{D},alias.example.org,trixie",
        )
    )
    assert [p.split(":")[0] for p in found] == [f"roster.csv line {n}" for n in (2, 3, 4, 5, 5)]
    assert "is the control node" in found[0]
    assert "authorized_keys options" in found[1]
    assert 'port "0"' in found[2]
    assert 'suite "trixie" given for a student with host' in found[3]
    assert 'host "alias.example.org" is the control node (it resolves to 192.0.2.10' in found[4]


def test_a_roster_without_hosts_never_looks_at_the_control_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local fleet's roster reads no interface and resolves nothing."""

    def fail() -> cr.ControlNode:
        raise AssertionError("the control node was looked at")

    monkeypatch.setattr(cr, "this_control_node", fail)
    assert [
        s.name for s in cr.parse_roster(csv_text(f"alice,{A},,"), "r.csv", "csv", reserved=NO_PASSWD)
    ] == ["alice"]


IP_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}, {"local": "::1"}]},
        {"ifname": "eth0", "addr_info": [{"local": "198.51.100.20"}, {"local": "fe80::fc00:ff:fe00:1"}]},
        {"ifname": "ifb0", "addr_info": []},
        {"ifname": "veth0"},
    ]
)
IF_INET6 = (
    "00000000000000000000000000000001 01 80 10 80       lo\n"
    "20010db8000000000000000000000020 04 40 00 82     eth0\n"
)


def test_the_control_nodes_addresses_are_read_from_ip_and_if_inet6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cr.addresses_from_ip_json(IP_JSON) == ["127.0.0.1", "::1", "198.51.100.20", "fe80::fc00:ff:fe00:1"]
    assert cr.addresses_from_if_inet6(IF_INET6) == ["::1", "2001:db8::20"]
    # Without ip: /proc/net/if_inet6.
    if_inet6 = tmp_path / "if_inet6"
    if_inet6.write_text(IF_INET6)
    monkeypatch.setattr(cr.shutil, "which", lambda name: None)
    assert cr.interface_addresses(str(if_inet6)) == ["::1", "2001:db8::20"]
    assert cr.interface_addresses(str(tmp_path / "missing")) == []


def test_the_control_node_is_its_names_its_interfaces_and_what_its_names_resolve_to() -> None:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    resolved: list[str] = []

    def resolve(name: str) -> list[str]:
        resolved.append(name)
        return ["203.0.113.9"] if name == socket.gethostname().lower() else []

    control = cr.this_control_node(lambda: ["198.51.100.20", "fe80::1%eth0", "not an address"], resolve)
    assert control.names == names
    assert sorted(resolved) == sorted(names)
    assert control.addresses == {
        ipaddress.ip_address(text) for text in ("198.51.100.20", "fe80::1", "203.0.113.9")
    }
    found = problems_with(control, "198.51.100.20", "[fe80::1]", "203.0.113.9:22", socket.gethostname())
    assert len(found) == 4 and all("is the control node" in p for p in found), found


def problems_with(control: cr.ControlNode | None, *hosts: str) -> list[str]:
    """The problems of a roster whose students (up to four) have these hosts, checked against control
    (None: this machine)."""
    rows = [
        f"{name},{key},{host},"
        for name, key, host in zip(("alice", "bob", "carol", "dave"), KEYS.values(), hosts, strict=False)
    ]
    with pytest.raises(cr.RosterError) as refused:
        cr.parse_roster(csv_text(*rows), "r.csv", "csv", reserved=NO_PASSWD, control_node=control)
    return refused.value.problems


def test_this_control_node_is_refused_by_its_real_name_and_addresses() -> None:
    """The real reader on this machine: its host name, a loopback address and one of its interfaces'
    addresses are refused; a name that cannot resolve is not."""
    own = [
        text for text in cr.interface_addresses() if not ipaddress.ip_address(text.split("%")[0]).is_loopback
    ]
    hosts = [socket.gethostname(), "127.0.1.1"] + [f"[{own[0]}]" if ":" in own[0] else own[0]] * bool(own)
    found = problems_with(None, *hosts)
    assert len(found) == len(hosts) and all("is the control node" in p for p in found), found
    (student,) = cr.parse_roster(csv_text(f"alice,{A},pc-01.invalid,"), "r.csv", "csv", reserved=NO_PASSWD)
    assert student.host == "pc-01.invalid"


# --- keys: one bare public key line ---------------------------------------------------------------------

KEY_TYPE, KEY_BODY, KEY_COMMENT = A.split(" ")
ED25519_PUBLIC = base64.b64decode(KEY_BODY)[4 + len(KEY_TYPE) + 4 :]


def wire(*fields: bytes) -> str:
    """The base64 of SSH wire-format strings (uint32 length, then the bytes)."""
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


BAD_KEYS = {
    "command option": (f'command="/bin/sh" {A}', 'authorized_keys options before the key type ("command='),
    "restrict": (f"restrict {A}", 'authorized_keys options before the key type ("restrict")'),
    "from option": (f'from="10.0.0.0/8" {A}', 'options before the key type ("from='),
    "two options": (f"no-pty,no-port-forwarding {A}", 'options before the key type ("no-pty,no-port'),
    "option glued to the type": (f"no-pty,{A}", 'options before the key type ("no-pty,")'),
    "tab separator": (f"{KEY_TYPE}\t{KEY_BODY} {KEY_COMMENT}", "the control character U+0009"),
    "escape in comment": (f"{A} \x1b[2Jowned", "the control character U+001B"),
    "NUL in comment": (f"{A}\x00x", "the control character U+0000"),
    "DEL in comment": (f"{A}\x7f", "the control character U+007F"),
    "BEL": (f"{A} \x07", "the control character U+0007"),
    "C1 control": (f"{A} \x85next", "the control character U+0085"),
    "line separator": (f"{A} \u2028next", "the control character U+2028"),
    "carriage return": (f"{A}\rssh-ed25519 x", "spans several lines"),
}


@pytest.mark.parametrize(("key", "message"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_a_key_with_options_or_control_characters_is_refused(key: str, message: str) -> None:
    found = problems(csv_text(f'alice,"{key}",,'))
    assert len(found) == 1, found
    assert found[0].startswith("roster.csv line 2: ssh_public_key"), found
    assert message in found[0]
    assert not any(ord(char) < 0x20 or ord(char) == 0x7F for char in found[0]), found


def test_a_key_ssh_keygen_accepts_but_the_lab_does_not_is_refused(tmp_path: Path) -> None:
    """Certificates and DSA keys are keys to ssh-keygen -l, not a student's key to the lab."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")],
        input="y\n",
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / "alice.pub").write_text(A + "\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "alice", str(tmp_path / "alice.pub")],
        capture_output=True,
        check=True,
    )
    certificate = (tmp_path / "alice-cert.pub").read_text().strip()
    found = problems(csv_text(f"alice,{certificate},,"))
    assert len(found) == 1 and "key type ssh-ed25519-cert-v01@openssh.com is not accepted" in found[0], found
    dsa = subprocess.run(
        ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(tmp_path / "dsa")],
        capture_output=True,
        check=False,
    )
    if dsa.returncode == 0:
        found = problems(csv_text(f"alice,{(tmp_path / 'dsa.pub').read_text().strip()},,"))
        assert len(found) == 1 and "key type ssh-dss is not accepted" in found[0], found


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (f"ssh-rsa {KEY_BODY} x", 'its key data is not a ssh-rsa key (it names "ssh-ed25519")'),
        (
            f"ssh-ed25519 {wire(b'ssh-rsa', b'x' * 32)} x",
            'its key data is not a ssh-ed25519 key (it names "ssh-rsa")',
        ),
        (f"ssh-ed25519 {wire(b'ssh-ed2551', ED25519_PUBLIC)}", "its key data is not a ssh-ed25519 key"),
        ("ssh-ed25519 AAAA x", "its key data is not a ssh-ed25519 key"),
        ("ssh-ed25519 AAA", "its key data is not base64"),
        (f"ssh-ed25519 {KEY_BODY}= x", "its key data is not base64"),
        ("ssh-ed25519 !!!! x", "its key data is not base64"),
        (f"ssh-ed448 {KEY_BODY} x", "does not start with an accepted key type"),
        (f"ssh-ed25519-cert-v01@openssh.com {KEY_BODY}", "key type ssh-ed25519-cert-v01@openssh.com is not"),
        (f"ssh-dss {KEY_BODY}", "key type ssh-dss is not accepted"),
        (KEY_BODY, "does not start with an accepted key type"),
    ],
    ids=[
        "rsa named, ed25519 inside",
        "ed25519 named, rsa inside",
        "type cut",
        "empty type",
        "short base64",
        "extra padding",
        "not base64",
        "unknown type",
        "certificate",
        "dsa",
        "no type",
    ],
)
def test_key_format_problem(key: str, message: str) -> None:
    problem = cr.key_format_problem(key)
    assert problem is not None and message in problem, problem


def test_every_accepted_key_type_passes_the_format_check() -> None:
    assert cr.key_format_problem(A) is None
    assert cr.key_format_problem(f"{KEY_TYPE}  {KEY_BODY}   a comment with  spaces") is None
    for key_type in cr.ACCEPTED_KEY_TYPES:
        assert cr.key_format_problem(f"{key_type} {wire(key_type.encode(), b'k' * 32)} c") is None
    # A security key's line (sk-ssh-ed25519: type, public key, application), which ssh-keygen reads too.
    sk_type = "sk-ssh-ed25519@openssh.com"
    sk = f"{sk_type} {wire(sk_type.encode(), ED25519_PUBLIC, b'ssh:')} alice@yubikey"
    assert [s.ssh_public_key for s in parse(csv_text(f"alice,{sk},,"))] == [sk]


# --- the inventory host name is a path component ------------------------------------------------------


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "-x", "alice\n", "", "Alice", "a..b"])
def test_an_inventory_host_name_is_never_a_path(name: str) -> None:
    """parse_roster() never makes such a Student; inventory_entries() refuses one from anywhere else."""
    with pytest.raises(cr.RosterError) as refused:
        cr.inventory_entries([cr.Student("bob", B, 2), cr.Student(name, A, 3)])
    assert refused.value.problems == [
        f"student {json.dumps(name)} (line 3) cannot be an inventory host name:"
        f" it must be {cr.USER_NAME_RULE}"
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


def test_a_host_with_a_port_sets_ansible_port_and_one_without_does_not() -> None:
    students = parse(
        csv_text(
            f"alice,{A},pc-3.example.org:2222,",
            f"bob,{B},[2001:db8::3]:2222,",
            f"carol,{C},[2001:db8::4],",
            f"dave,{D},pc-4.example.org,",
        )
    )
    hostvars = {entry.name: entry.variables for entry in cr.inventory_entries(students)}
    assert {name: (v["ansible_host"], v.get("ansible_port")) for name, v in hostvars.items()} == {
        "alice": ("pc-3.example.org", 2222),
        "bob": ("2001:db8::3", 2222),
        "carol": ("2001:db8::4", None),
        "dave": ("pc-4.example.org", None),
    }
    assert "lab_vm_ssh_port" not in hostvars["alice"]


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


def test_plugin_sets_the_port_of_a_roster_host(tmp_path: Path) -> None:
    roster = tmp_path / "class.csv"
    roster.write_text(
        csv_text(f"alice,{A},198.51.100.7:2222,", f"bob,{B},[2001:db8::7]:2201,", f"carol,{C},,")
    )
    inventory = InventoryData()
    load_plugin().parse(inventory, DataLoader(), str(write_config(tmp_path, str(roster))), cache=False)
    hostvars = {name: inventory.get_host(name).get_vars() for name in ("alice", "bob", "carol")}
    assert (hostvars["alice"]["ansible_host"], hostvars["alice"]["ansible_port"]) == ("198.51.100.7", 2222)
    assert (hostvars["bob"]["ansible_host"], hostvars["bob"]["ansible_port"]) == ("2001:db8::7", 2201)
    assert hostvars["carol"]["ansible_port"] == 2301


def test_plugin_refuses_the_control_node_and_adds_nothing(tmp_path: Path) -> None:
    roster = tmp_path / "class.csv"
    roster.write_text(csv_text(f"alice,{A},,", f"bob,{B},localhost,", f"carol,{C},127.0.1.1:2222,"))
    inventory = InventoryData()
    with pytest.raises(AnsibleParserError) as refused:
        load_plugin().parse(inventory, DataLoader(), str(write_config(tmp_path, str(roster))), cache=False)
    assert inventory.hosts == {}
    assert 'class.csv line 3: host "localhost" is the control node' in str(refused.value)
    assert 'class.csv line 4: host "127.0.1.1" is the control node (a loopback address)' in str(refused.value)


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
        # ansible_local: {} is Ansible's (inject_facts_as_vars off still lists it), not the roster's.
        host: {key: plain(value) for key, value in variables.items() if key != "ansible_local"}
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
