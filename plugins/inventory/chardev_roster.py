# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible inventory plugin: a classroom roster (CSV or YAML) becomes the lab's fleet."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: chardev_roster
short_description: The lab's fleet from a classroom roster (CSV or YAML)
description:
  - Reads the roster an instructor gives, one student per row, and makes one inventory host per student,
    named after the student (so C(--limit alice) works).
  - A student whose C(host) is empty gets a local QEMU VM. The host joins the groups C(lab) and its
    child C(lab_vms), with C(ansible_port) and C(lab_vm_ssh_port) set to the VM's forwarded
    SSH port (O(first_port), O(first_port)+1, ... in roster order, counting only the students without
    a host) and C(lab_vm_suite) when the row gives a C(suite). The connection settings (the loopback
    address, the fleet's key, its known_hosts) come from C(group_vars/lab_vms.yml) next to the plugin's
    config file.
  - A student with a C(host) gets that real machine. The host joins C(lab) and its child C(classroom),
    with C(ansible_host) set to the machine's name or address.
  - Every host gets C(lab_student) (the student's name) and C(lab_student_ssh_key) (the student's public
    key line).
  - "The CSV roster has a header line naming its columns: C(student) (required), C(ssh_public_key)
    (required), C(host) (optional), C(suite) (optional). Blank lines and lines starting with C(#) are
    skipped; line numbers in messages are the file's own. A file ending in C(.csv) is read as CSV."
  - "The YAML roster (a file ending in C(.yml) or C(.yaml)) is either a list of mappings with the same
    keys as the CSV columns, or a mapping with the single key C(students) holding that list."
  - "The roster is checked whole before any host is added; a bad roster is refused with every problem
    listed, each with its file and line number. Problems: no student rows; an unknown column or key; a
    missing required column; a duplicate student; a student name that is not a valid Debian user name
    (V(^[a-z][a-z0-9_-]{0,31}$)); a reserved name (root, Debian's system accounts and groups, any
    account with a uid below 1000 in this control node's C(/etc/passwd), and the inventory's own group
    names); a key that C(ssh-keygen -l) rejects, a cell with more than one key, or a private key; two
    students on the same host (compared case-insensitively); a C(suite) other than V(bullseye),
    V(bookworm) or V(trixie); a C(suite) given for a student with a C(host) (it only chooses the kernel
    of a local VM)."
  - "The config file's name must end in C(roster.yml) or C(roster.yaml) and it must contain
    C(plugin: chardev_lab.lab.chardev_roster); the C(auto) inventory plugin then loads this plugin from
    the collection."
author:
  - chardev-lab contributors (@chardev-lab)
requirements:
  - C(ssh-keygen) (OpenSSH) on the control node, to check the public keys.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description:
      - The name of this plugin; it marks the file as a config file of this plugin.
    type: str
    required: true
    choices: [chardev_lab.lab.chardev_roster]
  roster:
    description:
      - Path of the roster file, CSV (C(.csv)) or YAML (C(.yml), C(.yaml)).
      - A relative path is relative to the current directory of the Ansible command, not to the config
        file. C(make lab ROSTER=...) passes an absolute path.
    type: path
    required: true
    env:
      - name: CHARDEV_LAB_ROSTER
  first_port:
    description:
      - Forwarded SSH port of the first local VM; the next local VMs get the following ports, in roster
        order. Students with a C(host) take no port.
      - Keep the range clear of other fleets' ports (C(inventory/local.yml) starts at 2201).
    type: int
    default: 2301
    env:
      - name: CHARDEV_LAB_FIRST_PORT
notes:
  - Group and host variables files (C(group_vars/), C(host_vars/)) next to the config file apply, as for
    any inventory source; that is how C(inventory/group_vars/lab_vms.yml) reaches the roster's VMs.
  - Pass the config file with C(-i), not the whole C(inventory/) directory.
"""

EXAMPLES = r"""
# inventory/roster.yml holds only "plugin: chardev_lab.lab.chardev_roster": the roster's path comes from
# CHARDEV_LAB_ROSTER. inventory/myclass.roster.yml: a fixed roster, VMs from port 2401, and a group
# per explicit suite:
plugin: chardev_lab.lab.chardev_roster
roster: inventory/myclass.csv
first_port: 2401
keyed_groups:
  - key: lab_vm_suite
    prefix: suite

# The roster itself, CSV:
#   student,ssh_public_key,host,suite
#   alice,ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop,,bullseye
#   dave,ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... dave@laptop,student-04.example.org,
# Or YAML:
#   students:
#     - student: alice
#       ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop"
#       suite: bullseye
"""

# Ansible wants DOCUMENTATION and EXAMPLES before the imports (ansible-test's
# "import-before-documentation"), hence E402 on each import.
import csv  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from ansible.errors import AnsibleError, AnsibleParserError  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable  # noqa: E402
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import SUITES  # noqa: E402

NAME = "chardev_lab.lab.chardev_roster"

COLUMNS = ("student", "ssh_public_key", "host", "suite")
REQUIRED_COLUMNS = ("student", "ssh_public_key")
FIRST_PORT = 2301


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
USER_NAME_RULE = (
    r"a Debian user name: ^[a-z][a-z0-9_-]{0,31}$ (a lower-case letter, then up to 31 lower-case "
    "letters, digits, _ or -)"
)
# Debian's static accounts (base-passwd) and the usual package-made system accounts.
SYSTEM_ACCOUNTS = _words(
    "root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats nobody "
    "_apt systemd-network systemd-resolve systemd-timesync systemd-coredump systemd-journal-remote "
    "messagebus sshd polkitd tss uuidd avahi dnsmasq statd ntp ntpsec postfix tcpdump usbmux rtkit "
    "colord pulse saned lightdm sddm geoclue hplip dhcpcd nm-openvpn speech-dispatcher libvirt-qemu "
    "_rpc _chrony _laurel mysql postgres redis bind systemd-oom dbus"
)
# Debian's static groups (base-passwd): a user of that name would clash with the group.
SYSTEM_GROUPS = _words(
    "adm tty disk kmem dialout fax voice cdrom floppy tape sudo audio dip operator src shadow utmp video "
    "sasl plugdev staff users nogroup input kvm render sgx netdev crontab wheel admin"
)
# Names the inventory itself uses: a host must not share a group's name.
INVENTORY_NAMES = frozenset({"all", "ungrouped", "localhost", "lab", "lab_vms", "classroom"})
HOST_NAME = re.compile(r"^[A-Za-z0-9._:\[\]-]+$")
KEY_TYPES = (
    r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)(?:-cert-v01@openssh\.com)?"
)
KEY_START = re.compile(rf"(?:^|\s){KEY_TYPES}\s+AAAA")
PRIVATE_KEY = re.compile(r"PRIVATE KEY|PuTTY-User-Key-File", re.IGNORECASE)
LINE_IN_PROBLEM = re.compile(r" line (\d+): ")
PLUGIN_LINE = re.compile(r"^plugin:\s*['\"]?chardev_lab\.lab\.chardev_roster['\"]?\s*(?:#.*)?$", re.MULTILINE)

KeyCheck = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Student:
    """One roster row, checked."""

    name: str
    ssh_public_key: str
    line: int
    host: str | None = None
    suite: str | None = None


@dataclass(frozen=True)
class HostEntry:
    """What the inventory gets for one student: the host, its group (under lab) and its variables."""

    name: str
    group: str
    variables: dict[str, Any] = field(default_factory=dict)


class RosterError(Exception):
    """A refused roster, with every problem found (one line each, file and line number first)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(refusal_message(source, self.problems))


def refusal_message(roster: str, problems: list[str]) -> str:
    """What the user reads: one headline, then one line per problem."""
    count = len(problems)
    return (
        f"chardev_roster: roster {roster} refused, no host added"
        f" ({count} problem{'s' if count != 1 else ''}):\n" + "\n".join(problems)
    )


@dataclass(frozen=True)
class _Row:
    line: int
    cells: dict[str, str]
    lines: dict[str, int] = field(default_factory=dict)  # YAML: the line of each key

    def at(self, source: str, column: str = "") -> str:
        return f"{source} line {self.lines.get(column, self.line)}"


def reserved_names(passwd_text: str = "") -> dict[str, str]:
    """Every name a student must not have, with the reason; passwd_text is an /etc/passwd whose
    accounts with a uid below 1000 are reserved too."""
    reasons = {name: "a Debian system account" for name in SYSTEM_ACCOUNTS}
    reasons.update({name: "a Debian system group" for name in SYSTEM_GROUPS})
    reasons.update({name: "a group or host name of the inventory itself" for name in INVENTORY_NAMES})
    for entry in passwd_text.splitlines():
        fields = entry.split(":")
        if len(fields) >= 3 and fields[2].isdigit() and int(fields[2]) < 1000:
            reasons.setdefault(
                fields[0], f"an account with uid {fields[2]} in this control node's /etc/passwd"
            )
    return reasons


def control_node_reserved_names(passwd: str = "/etc/passwd") -> dict[str, str]:
    """reserved_names() with this machine's /etc/passwd (none if it cannot be read)."""
    try:
        with open(passwd, encoding="utf-8", errors="replace") as handle:
            return reserved_names(handle.read())
    except OSError:
        return reserved_names()


def check_ssh_public_key(key: str) -> str | None:
    """None if key is one OpenSSH public key line that `ssh-keygen -l` accepts, else what is wrong."""
    if PRIVATE_KEY.search(key):
        return "ssh_public_key is a PRIVATE key: never share it; give the public key (the .pub file)"
    starts = len(KEY_START.findall(key))
    if starts > 1:
        return f"ssh_public_key holds {starts} keys: give exactly one public key per student"
    if "\n" in key or "\r" in key:
        return "ssh_public_key spans several lines: give one OpenSSH public key line (the .pub file)"
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        return "ssh-keygen is not installed on the control node (Debian: apt-get install openssh-client)"
    with tempfile.TemporaryDirectory(prefix="chardev-roster-") as tmp:
        path = os.path.join(tmp, "key.pub")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(key + "\n")
        proc = subprocess.run(
            [ssh_keygen, "-l", "-f", path], capture_output=True, text=True, timeout=30, check=False
        )
    if proc.returncode != 0:
        shown = key if len(key) <= 40 else key[:37] + "..."
        return f'ssh_public_key "{shown}" is not a public key (ssh-keygen -l rejects it)'
    if len(proc.stdout.strip().splitlines()) > 1:
        return "ssh_public_key holds several keys: give exactly one public key per student"
    return None


def roster_format(path: str) -> str:
    """csv or yaml, from the file's name."""
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".yml", ".yaml")):
        return "yaml"
    raise RosterError(
        os.path.basename(path), [f"{os.path.basename(path)}: unknown roster format: name it *.csv or *.yml"]
    )


def _csv_rows(text: str, source: str, problems: list[str]) -> tuple[int, list[_Row]]:
    """The header's line and the data rows of a CSV roster; header problems go to problems."""
    # Comments and blank lines become empty lines, so the reader's line numbers stay the file's.
    kept = "".join(
        "\n" if (not line.strip() or line.lstrip().startswith("#")) else line
        for line in text.splitlines(keepends=True)
    )
    reader = csv.reader(io.StringIO(kept))
    header: list[str] | None = None
    header_line = 1
    rows: list[_Row] = []
    previous = 0
    for record in reader:
        line = previous + 1
        previous = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in record]
            header_line = line
            continue
        cells = [cell.strip() for cell in record]
        if len(cells) > len(header):
            problems.append(
                f"{source} line {line}: {len(cells)} cells but the header names {len(header)} columns"
                " (a comma inside a key's comment? quote the cell)"
            )
            continue
        rows.append(_Row(line, dict(zip(header, cells, strict=False))))
    if header is None:
        return header_line, []
    seen: set[str] = set()
    for name in header:
        if name in seen:
            problems.append(f'{source} line {header_line}: column "{name}" appears twice in the header')
        seen.add(name)
        if name not in COLUMNS:
            problems.append(
                f'{source} line {header_line}: unknown column "{name}" (known: {", ".join(COLUMNS)})'
            )
    for name in REQUIRED_COLUMNS:
        if name not in header:
            problems.append(f'{source} line {header_line}: the header lacks the required column "{name}"')
    return header_line, rows


def _yaml_rows(text: str, source: str, problems: list[str]) -> tuple[int, list[_Row]]:
    """The data rows of a YAML roster, each with its line; structure problems go to problems."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        problems.append(f"{source}{where}: not valid YAML: {problem}")
        return 1, []
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
        return 1, []
    items = root
    if isinstance(root, yaml.MappingNode):
        keys = {key.value: value for key, value in root.value if isinstance(key, yaml.ScalarNode)}
        if set(keys) != {"students"} or len(root.value) != 1:
            problems.append(
                f"{source} line {root.start_mark.line + 1}: a YAML roster is a list of students or a"
                " mapping with the single key students"
            )
            return root.start_mark.line + 1, []
        items = keys["students"]
        if isinstance(items, yaml.ScalarNode) and items.tag.endswith(":null"):
            return root.start_mark.line + 1, []
    if not isinstance(items, yaml.SequenceNode):
        problems.append(f"{source} line {items.start_mark.line + 1}: students must be a list of mappings")
        return items.start_mark.line + 1, []
    rows: list[_Row] = []
    for item in items.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            problems.append(f"{source} line {line}: a student must be a mapping ({', '.join(COLUMNS)})")
            continue
        cells: dict[str, str] = {}
        lines: dict[str, int] = {}
        for key, value in item.value:
            key_line = key.start_mark.line + 1
            name = str(key.value)
            if not isinstance(key, yaml.ScalarNode) or name not in COLUMNS:
                problems.append(
                    f'{source} line {key_line}: unknown key "{name}" (known: {", ".join(COLUMNS)})'
                )
                continue
            if name in cells:
                problems.append(f'{source} line {key_line}: key "{name}" appears twice')
                continue
            if not isinstance(value, yaml.ScalarNode):
                problems.append(f"{source} line {key_line}: {name} must be text, not a list or mapping")
                continue
            cells[name] = "" if value.tag.endswith(":null") else str(value.value).strip()
            lines[name] = key_line
        rows.append(_Row(line, cells, lines))
    return items.start_mark.line + 1, rows


def parse_roster(
    text: str,
    source: str,
    fmt: str,
    *,
    reserved: dict[str, str] | None = None,
    check_key: KeyCheck = check_ssh_public_key,
) -> list[Student]:
    """The students of a roster (fmt: csv or yaml), or RosterError with every problem, each as
    "<source> line <n>: ..."."""
    if fmt not in ("csv", "yaml"):
        raise ValueError(f"unknown roster format {fmt!r}")
    reserved = reserved_names() if reserved is None else reserved
    text = text.removeprefix("\ufeff")  # spreadsheets write a byte order mark
    problems: list[str] = []
    first_line, rows = (_csv_rows if fmt == "csv" else _yaml_rows)(text, source, problems)
    if problems and not rows:
        raise RosterError(source, problems)
    if not rows:
        raise RosterError(source, [f"{source} line {first_line}: empty roster: no student rows"])
    if any("the header lacks" in problem for problem in problems):
        raise RosterError(source, problems)

    students: list[Student] = []
    first_of: dict[str, int] = {}
    host_of: dict[str, tuple[str, int]] = {}
    for row in rows:
        before = len(problems)
        name = row.cells.get("student", "")
        key = row.cells.get("ssh_public_key", "")
        host = row.cells.get("host", "") or None
        suite = row.cells.get("suite", "") or None
        at_student, at_key, at_host, at_suite = (row.at(source, column) for column in COLUMNS)
        if not name:
            problems.append(f"{at_student}: missing student name")
        elif not USER_NAME.match(name):
            problems.append(f'{at_student}: invalid student name "{name}": it must be {USER_NAME_RULE}')
        elif name in reserved:
            problems.append(f'{at_student}: student name "{name}" is reserved: {reserved[name]}')
        elif name in first_of:
            problems.append(f'{at_student}: duplicate student "{name}" (first on line {first_of[name]})')
        else:
            first_of[name] = row.lines.get("student", row.line)
        if not key:
            problems.append(f"{at_key}: missing ssh_public_key")
        else:
            key_problem = check_key(key)
            if key_problem:
                problems.append(f"{at_key}: {key_problem}")
        if host is not None:
            if not HOST_NAME.match(host):
                problems.append(f'{at_host}: invalid host "{host}": give a host name or an IP address')
            elif host.lower() in host_of:
                other, other_line = host_of[host.lower()]
                problems.append(
                    f'{at_host}: host "{host}" is already assigned to student "{other}" (line {other_line});'
                    " each student needs a machine of their own"
                )
            else:
                host_of[host.lower()] = (name, row.line)
        if suite is not None:
            if suite not in SUITES:
                problems.append(f'{at_suite}: unknown suite "{suite}" (choose from {", ".join(SUITES)})')
            elif host is not None:
                problems.append(
                    f'{at_suite}: suite "{suite}" given for a student with host "{host}": suite only'
                    " chooses the kernel of a local VM; a real host runs its own kernel (leave suite empty)"
                )
        if len(problems) == before:
            students.append(Student(name, key, row.line, host, suite))
    if problems:
        raise RosterError(source, sorted(problems, key=_line_of))
    return students


def _line_of(problem: str) -> int:
    """The line number a problem message names (0 if none), to list problems in file order."""
    found = LINE_IN_PROBLEM.search(problem)
    return int(found.group(1)) if found else 0


def load_roster(
    path: str, *, reserved: dict[str, str] | None = None, check_key: KeyCheck = check_ssh_public_key
) -> list[Student]:
    """parse_roster() of the file at path (messages name the file by its base name)."""
    source = os.path.basename(path)
    fmt = roster_format(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise RosterError(source, [f"{source}: cannot read the roster {path}: {reason}"]) from err
    return parse_roster(text, source, fmt, reserved=reserved, check_key=check_key)


def inventory_entries(students: Iterable[Student], first_port: int = FIRST_PORT) -> list[HostEntry]:
    """One host per student, in roster order: local VMs (no host) in lab_vms with consecutive ports
    from first_port, real machines in classroom with ansible_host."""
    students = list(students)
    vms = [student for student in students if student.host is None]
    if vms and not (first_port >= 1 and first_port + len(vms) - 1 <= 65535):
        raise RosterError(
            "first_port",
            [
                f"first_port {first_port}: {len(vms)} local VMs need ports {first_port} to"
                f" {first_port + len(vms) - 1}, outside 1-65535"
            ],
        )
    entries: list[HostEntry] = []
    port = first_port
    for student in students:
        variables: dict[str, Any] = {
            "lab_student": student.name,
            "lab_student_ssh_key": student.ssh_public_key,
        }
        if student.host is None:
            variables["ansible_port"] = port
            variables["lab_vm_ssh_port"] = port
            if student.suite is not None:
                variables["lab_vm_suite"] = student.suite
            entries.append(HostEntry(student.name, "lab_vms", variables))
            port += 1
        else:
            variables["ansible_host"] = student.host
            entries.append(HostEntry(student.name, "classroom", variables))
    return entries


def is_config_file(path: str) -> bool:
    """A config file of this plugin: named *roster.yml or *roster.yaml, with a plugin line naming it."""
    if not path.endswith(("roster.yml", "roster.yaml")):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return PLUGIN_LINE.search(handle.read()) is not None
    except OSError:
        return False


class InventoryModule(BaseInventoryPlugin, Constructable):
    """Thin wrapper: read the config, load and check the roster, add what inventory_entries() says."""

    NAME = NAME

    def verify_file(self, path: str) -> bool:
        return bool(super().verify_file(path)) and is_config_file(path)

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        try:
            self._read_config_data(path)
        except AnsibleError as err:
            if "'roster'" not in str(err):
                raise
            raise AnsibleParserError(
                f"{err} Set CHARDEV_LAB_ROSTER to the roster's path (make lab ROSTER=...)"
                f" or roster: in {path}"
            ) from None
        roster = self.get_option("roster")
        try:
            entries = inventory_entries(
                load_roster(roster, reserved=control_node_reserved_names()), self.get_option("first_port")
            )
        except RosterError as err:
            # ansible-core 2.19 prints this message whole in the warning "Failed to parse inventory with
            # 'auto' plugin", then stops (any_unparsed_is_failed) with "Completely failed to parse".
            raise AnsibleParserError(refusal_message(roster, err.problems)) from None
        strict = self.get_option("strict")
        self.inventory.add_group("lab")
        for group in ("lab_vms", "classroom"):
            self.inventory.add_group(group)
            self.inventory.add_child("lab", group)
        for entry in entries:
            self.inventory.add_host(entry.name, group=entry.group)
            for key, value in entry.variables.items():
                self.inventory.set_variable(entry.name, key, value)
            hostvars = self.inventory.get_host(entry.name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, entry.name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, entry.name, strict=strict)
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), hostvars, entry.name, strict=strict
            )
        self.display.vvv(f"chardev_roster: {roster}: {', '.join(f'{e.name} ({e.group})' for e in entries)}")
