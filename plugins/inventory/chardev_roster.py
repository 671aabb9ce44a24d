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
    with C(ansible_host) set to the machine's name or address. A C(host) is a host name, an IPv4
    address (V(192.0.2.7)) or an IPv6 address in brackets (V([2001:db8::7])), optionally followed by
    C(:port) (V(pc-3.example.org:2222), V([2001:db8::3]:2222)); a port sets C(ansible_port) too,
    without one Ansible's (and ssh_config's) default port applies.
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
    names); a key that C(ssh-keygen -l) rejects, a cell with more than one key, or a private key; a key
    line that is not exactly C(<type> <base64> [comment]) (authorized_keys options before the type such
    as C(command=), C(from=), C(restrict) or C(no-pty); a control character anywhere, tab and carriage
    return included; a type other than V(ssh-ed25519), V(ssh-rsa), V(ecdsa-sha2-nistp256),
    V(ecdsa-sha2-nistp384), V(ecdsa-sha2-nistp521), V(sk-ssh-ed25519@openssh.com) and
    V(sk-ecdsa-sha2-nistp256@openssh.com); base64 that does not decode to a key of the type the line
    names); a C(host) that is not a host name, an IPv4 address or a bracketed IPv6 address with an
    optional C(:port) from 1 to 65535 (so no leading C(-), whitespace, control character, C(@) or C(/));
    a C(host) that is the control node itself (C(localhost), a loopback address such as V(127.0.1.1) or
    V(::1), an unspecified address V(0.0.0.0) or V(::), this machine's host name or FQDN, or a name
    that resolves to one of this machine's addresses); two students on the same host and port (names
    compared case-insensitively, addresses as addresses); a C(suite) other than V(bullseye),
    V(bookworm) or V(trixie); a C(suite) given for a student with a C(host) (it only chooses the kernel
    of a local VM)."
  - "The control node's addresses are its interfaces' (C(ip -j addr), or without C(ip) the IPv6 ones of
    C(/proc/net/if_inet6)) and those its host name and FQDN resolve to. A C(host) name is resolved
    with the system's resolver when the inventory is read; a name that does not resolve is B(not)
    refused (the machine may be reachable only later, or only through C(ssh_config)): the
    M(chardev_lab.lab.chardev_guard) module still refuses the control node on the target, whatever the
    inventory says."
  - "The config file's name must end in C(roster.yml) or C(roster.yaml) and it must contain
    C(plugin: chardev_lab.lab.chardev_roster); the C(auto) inventory plugin then loads this plugin from
    the collection."
author:
  - chardev-lab contributors (@chardev-lab)
requirements:
  - C(ssh-keygen) (OpenSSH) on the control node, to check the public keys.
  - C(ip) (iproute2) on the control node, to read its interfaces' addresses (without it, only its IPv6
    addresses and those of its host name are known).
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
#   erin,ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... erin@laptop,[2001:db8::5]:2222,
# Or YAML:
#   students:
#     - student: alice
#       ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop"
#       suite: bullseye
"""

# Ansible wants DOCUMENTATION and EXAMPLES before the imports (ansible-test's
# "import-before-documentation"), hence E402 on each import.
import base64  # noqa: E402
import binascii  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import unicodedata  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
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
# A roster host: a DNS name (labels of letters, digits, "_" and "-", never starting or ending with "-"),
# a dotted-quad IPv4 address or a bracketed IPv6 address, then an optional port.
HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"{HOST_LABEL}(?:\.{HOST_LABEL})*\.?")
BRACKETED_HOST = re.compile(r"\[([^\]]*)\](?::(.*))?")
PORT = re.compile(r"[1-9][0-9]{0,4}")
HOST_RULE = (
    "give a host name, an IPv4 address or an IPv6 address in brackets, optionally followed by :port"
    " (pc-3.example.org, 192.0.2.7, [2001:db8::7], pc-3.example.org:2222, [2001:db8::3]:2222)"
)
# Every name that is the machine itself (RFC 6761: localhost and all names under it).
LOCALHOST = "localhost"
# "This network" (RFC 1122): Linux connects 0.0.0.0 to the machine itself; none of it is a host.
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# Any key type OpenSSH knows (certificates and DSA included): to count the keys in a cell and to find
# options written before a key.
KEY_TYPES = (
    r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)(?:-cert-v01@openssh\.com)?"
)
KEY_START = re.compile(rf"(?:^|\s){KEY_TYPES}\s+AAAA")
KEY_ANYWHERE = re.compile(rf"{KEY_TYPES}\s+AAAA")
# The key types a student's key may have: plain keys, no DSA (OpenSSH dropped it), no certificates.
ACCEPTED_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
# <type> <base64> [comment], separated by spaces (control characters, tabs included, are refused first).
KEY_LINE = re.compile(r"(\S+) +(\S+)(?: +(.*))?")
BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
PRIVATE_KEY = re.compile(r"PRIVATE KEY|PuTTY-User-Key-File", re.IGNORECASE)
LINE_IN_PROBLEM = re.compile(r" line (\d+): ")
PLUGIN_LINE = re.compile(r"^plugin:\s*['\"]?chardev_lab\.lab\.chardev_roster['\"]?\s*(?:#.*)?$", re.MULTILINE)

KeyCheck = Callable[[str], "str | None"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: name -> the addresses it resolves to ([] when it does not resolve).
Resolver = Callable[[str], "list[str]"]


@dataclass(frozen=True)
class Student:
    """One roster row, checked."""

    name: str
    ssh_public_key: str
    line: int
    host: str | None = None  # the machine's name or address (an IPv6 address without its brackets)
    suite: str | None = None
    port: int | None = None  # the roster's :port after the host, if any


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


def _shown(text: str, width: int = 40) -> str:
    """text quoted for a one-line message, cut to about width, every control character escaped (JSON
    escapes only those below U+0020)."""
    quoted = json.dumps(text if len(text) <= width else text[: width - 3] + "...", ensure_ascii=False)
    return "".join(f"\\u{ord(char):04x}" if _is_control(char) else char for char in quoted)


def _is_control(char: str) -> bool:
    """A character that breaks a line or hides text: C0 and C1 controls, DEL, line and paragraph
    separators."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _control_character(text: str) -> str | None:
    """The first control character of text (_is_control), as U+XXXX, or None."""
    for char in text:
        if _is_control(char):
            return f"U+{ord(char):04X}"
    return None


def key_text_problem(key: str) -> str | None:
    """What no key line may hold, whatever ssh-keygen says: line breaks, control characters, and
    authorized_keys options before the key type; None if there is none."""
    if "\n" in key or "\r" in key:
        return "ssh_public_key spans several lines: give one OpenSSH public key line (the .pub file)"
    control = _control_character(key)
    if control is not None:
        return (
            f"ssh_public_key {_shown(key)} holds the control character {control}: give the .pub file's line"
            " unchanged (spaces only between its parts, no tab or escape sequence in the comment)"
        )
    # authorized_keys options (command="...", from=..., restrict, no-pty, ...) would set what the
    # student's login may do: the lab writes the account's authorized_keys itself, from a bare key.
    found = KEY_ANYWHERE.search(key)
    if found is not None and found.start() > 0 and key.split(" ", 1)[0] not in ACCEPTED_KEY_TYPES:
        return (
            f"ssh_public_key has authorized_keys options before the key type"
            f" ({_shown(key[: found.start()].strip())}): give only the key line, <type> <base64> [comment]"
        )
    return None


def key_format_problem(key: str) -> str | None:
    """None if key is exactly "<type> <base64> [comment]" with an accepted type whose base64 decodes to
    a key blob of that same type (SSH wire format: uint32 length, then the type), else what is wrong."""
    line = KEY_LINE.fullmatch(key)
    key_type = line.group(1) if line else key.split(" ", 1)[0]
    accepted = ", ".join(ACCEPTED_KEY_TYPES)
    if line is not None and key_type not in ACCEPTED_KEY_TYPES and re.fullmatch(KEY_TYPES, key_type):
        return f"ssh_public_key: key type {key_type} is not accepted: give a plain public key ({accepted})"
    if line is None or key_type not in ACCEPTED_KEY_TYPES:
        return (
            f"ssh_public_key {_shown(key)} does not start with an accepted key type ({accepted}):"
            " give one OpenSSH public key line, <type> <base64> [comment]"
        )
    body = line.group(2)
    try:
        blob = base64.b64decode(body, validate=True) if BASE64.fullmatch(body) else b""
    except binascii.Error:
        blob = b""
    # Only the one canonical spelling: what decodes and encodes back to the same text.
    if not blob or base64.b64encode(blob).decode("ascii") != body:
        return (
            f"ssh_public_key {_shown(key)}: its key data is not base64: give the .pub file's line unchanged"
        )
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    named = blob[4 : 4 + length] if length >= 0 else b""
    if length != len(key_type) or named != key_type.encode("ascii"):
        return (
            f"ssh_public_key {_shown(key)}: its key data is not a {key_type} key"
            f" (it names {_shown(named.decode('ascii', 'replace'))}): give the .pub file's line unchanged"
        )
    return None


def check_ssh_public_key(key: str) -> str | None:
    """None if key is one OpenSSH public key line, "<type> <base64> [comment]", that `ssh-keygen -l`
    accepts and that key_text_problem() and key_format_problem() find nothing in, else what is wrong."""
    if PRIVATE_KEY.search(key):
        return "ssh_public_key is a PRIVATE key: never share it; give the public key (the .pub file)"
    starts = len(KEY_START.findall(key))
    if starts > 1:
        return f"ssh_public_key holds {starts} keys: give exactly one public key per student"
    text_problem = key_text_problem(key)
    if text_problem is not None:
        return text_problem
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
    # ssh-keygen accepts more than a bare key line (certificates, DSA keys): narrow it down.
    return key_format_problem(key)


@dataclass(frozen=True)
class RosterHost:
    """A roster's host, checked: what ansible_host gets, the port if the roster gives one, and the
    address when the host is an IP address."""

    host: str
    port: int | None = None
    address: IPAddress | None = None

    def identity(self) -> tuple[str, int | None]:
        """What two students must not share: the address (however it is spelt) or the name (any case,
        without a trailing dot), with the port."""
        return (str(self.address) if self.address else self.host.lower().rstrip("."), self.port)


def parse_host(text: str) -> RosterHost:
    """The roster's host cell as a RosterHost, or ValueError saying what is wrong."""
    control = _control_character(text)
    if control is not None:
        raise ValueError(f"it holds the control character {control}")
    if any(char.isspace() for char in text):
        raise ValueError("it holds whitespace")
    if text.startswith("-"):
        raise ValueError('it starts with "-", which ssh would read as an option')
    if "@" in text:
        raise ValueError('it holds "@": give the machine only (the login user is the inventory\'s)')
    if "/" in text:
        raise ValueError('it holds "/": give the machine only, not a URL or a path')
    bracketed = BRACKETED_HOST.fullmatch(text)
    if bracketed is not None:
        host, port = bracketed.group(1), bracketed.group(2)
        try:
            address: IPAddress | None = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address (and brackets hold only one)") from None
        if "%" in host:
            raise ValueError("an IPv6 zone (%...) is not accepted: give a global or unique local address")
    elif "[" in text or "]" in text:
        raise ValueError("brackets go around an IPv6 address only: [2001:db8::3] or [2001:db8::3]:2222")
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address must be in brackets, [2001:db8::3] or [2001:db8::3]:2222")
    else:
        host, colon, port = text.partition(":")
        port = port if colon else None
        address = None
        if re.fullmatch(r"[0-9.]+", host) or _is_inet_aton(host):
            try:
                address = ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"{host} is not an IPv4 address as four decimal numbers (a.b.c.d, no leading zeros)"
                ) from None
        elif len(host) > 253 or not HOST_NAME.fullmatch(host):
            raise ValueError('it is not a host name (letters, digits, "-" and "_" in dot-separated labels)')
    if port is None:
        return RosterHost(host, None, address)
    if not PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"port {_shown(port)} is not a number from 1 to 65535 (decimal, no leading zero)")
    return RosterHost(host, int(port), address)


def _is_inet_aton(text: str) -> bool:
    """Whether the C library reads text as an IPv4 address (0x7f.1, 2130706433, 127.1, 0177.0.0.1):
    spellings that name an address without looking like one."""
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def _address(text: str) -> IPAddress | None:
    """text as an address (an IPv6 zone dropped, an IPv4-mapped IPv6 address as its IPv4 address)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve_name(name: str) -> list[str]:
    """The addresses the system's resolver gives name (what ssh would connect to); [] if it does not
    resolve."""
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in found]


def addresses_from_ip_json(text: str) -> list[str]:
    """The addresses in `ip -j addr`'s output."""
    return [
        str(info["local"])
        for link in json.loads(text)
        if isinstance(link, dict)
        for info in link.get("addr_info", [])
        if isinstance(info, dict) and "local" in info
    ]


def addresses_from_if_inet6(text: str) -> list[str]:
    """The addresses in /proc/net/if_inet6 (32 hex digits first on each line)."""
    return [
        str(ipaddress.IPv6Address(int(fields[0], 16)))
        for fields in (line.split() for line in text.splitlines())
        if fields and re.fullmatch(r"[0-9a-fA-F]{32}", fields[0])
    ]


def interface_addresses(if_inet6: str = "/proc/net/if_inet6") -> list[str]:
    """This machine's interfaces' addresses: `ip -j addr`, else (no iproute2, or one without -j) the
    IPv6 addresses of /proc/net/if_inet6."""
    ip = shutil.which("ip")
    if ip is not None:
        try:
            proc = subprocess.run(
                [ip, "-j", "addr", "show"], capture_output=True, text=True, timeout=30, check=False
            )
            if proc.returncode == 0:
                return addresses_from_ip_json(proc.stdout)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        with open(if_inet6, encoding="ascii", errors="replace") as handle:
            return addresses_from_if_inet6(handle.read())
    except OSError:
        return []


@dataclass(frozen=True)
class ControlNode:
    """This control node as the roster sees it: its own names (lower case, no trailing dot), its own
    addresses, and the resolver that turns a roster's host name into addresses."""

    names: frozenset[str]
    addresses: frozenset[IPAddress]
    resolve: Resolver = resolve_name

    def problem(self, host: RosterHost, resolved: list[str] | None = None) -> str | None:
        """What makes host the control node ("a loopback address", ...), or None; resolved: the
        addresses of a host name (resolved here when not given)."""
        if host.address is None:
            name = host.host.lower().rstrip(".")
            if name == LOCALHOST or name.endswith("." + LOCALHOST):
                return "localhost is the control node"
            if name in self.names:
                return "it is this control node's own name"
            resolved = self.resolve(host.host) if resolved is None else resolved
            for text in resolved:
                why = self.address_problem(_address(text))
                if why is not None:
                    return f"it resolves to {text}, {why}"
            return None
        return self.address_problem(_address(str(host.address)))

    def address_problem(self, address: IPAddress | None) -> str | None:
        """Why address is the control node, or None."""
        if address is None:
            return None
        if address.is_loopback:
            return "a loopback address"
        if address.is_unspecified:
            return "the unspecified address, which connects to this machine"
        if address.version == 4 and address in THIS_NETWORK:
            return 'an address of 0.0.0.0/8, "this network", never another machine'
        if address in self.addresses:
            return "an address of this control node"
        return None


def this_control_node(
    read_addresses: Callable[[], Iterable[str]] = interface_addresses, resolve: Resolver = resolve_name
) -> ControlNode:
    """This machine: its host name and FQDN, its interfaces' addresses (read_addresses) and the
    addresses those names resolve to."""
    names = {name.lower().rstrip(".") for name in (socket.gethostname(), socket.getfqdn()) if name}
    texts = [*read_addresses(), *(text for name in sorted(names) for text in resolve(name))]
    addresses = frozenset(address for address in map(_address, texts) if address is not None)
    return ControlNode(frozenset(names), addresses, resolve)


def _control_node_problems(hosts: list[tuple[RosterHost, str]], control: ControlNode) -> list[str]:
    """One problem for each host (with where it is written) that is the control node. Names are
    resolved all at once: a slow resolver then costs its timeout once, not once per student."""
    names = sorted({host.host for host, _at in hosts if host.address is None})
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
        resolved = dict(zip(names, pool.map(control.resolve, names), strict=True))
    problems = []
    for host, at in hosts:
        why = control.problem(host, resolved.get(host.host, []))
        if why is not None:
            problems.append(
                f'{at}: host "{host.host}" is the control node ({why}): a student\'s host must be another'
                " machine; give the student's own machine, or leave host empty for a local VM"
            )
    return problems


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
    control_node: ControlNode | None = None,
) -> list[Student]:
    """The students of a roster (fmt: csv or yaml), or RosterError with every problem, each as
    "<source> line <n>: ...". control_node: the machine whose hosts are refused (this one by default,
    looked at only when a row has a host)."""
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
    host_of: dict[tuple[str, int | None], tuple[str, int]] = {}
    hosts: list[tuple[RosterHost, str]] = []
    for row in rows:
        before = len(problems)
        name = row.cells.get("student", "")
        key = row.cells.get("ssh_public_key", "")
        host = row.cells.get("host", "") or None
        suite = row.cells.get("suite", "") or None
        at_student, at_key, at_host, at_suite = (row.at(source, column) for column in COLUMNS)
        roster_host: RosterHost | None = None
        if not name:
            problems.append(f"{at_student}: missing student name")
        elif not USER_NAME.fullmatch(name):
            problems.append(
                f"{at_student}: invalid student name {_shown(name, 80)}: it must be {USER_NAME_RULE}"
            )
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
            try:
                roster_host = parse_host(host)
            except ValueError as err:
                problems.append(f"{at_host}: invalid host {_shown(host, 80)}: {err}; {HOST_RULE}")
            else:
                hosts.append((roster_host, at_host))
                if roster_host.identity() in host_of:
                    other, other_line = host_of[roster_host.identity()]
                    problems.append(
                        f'{at_host}: host "{host}" is already assigned to student "{other}"'
                        f" (line {other_line}); each student needs a machine of their own"
                    )
                else:
                    host_of[roster_host.identity()] = (name, row.line)
        if suite is not None:
            if suite not in SUITES:
                problems.append(
                    f"{at_suite}: unknown suite {_shown(suite)} (choose from {', '.join(SUITES)})"
                )
            elif host is not None:
                problems.append(
                    f"{at_suite}: suite {_shown(suite)} given for a student with host {_shown(host, 80)}:"
                    " suite only chooses the kernel of a local VM; a real host runs its own kernel"
                    " (leave suite empty)"
                )
        if len(problems) == before:
            if roster_host is None:
                students.append(Student(name, key, row.line, None, suite))
            else:
                students.append(Student(name, key, row.line, roster_host.host, suite, roster_host.port))
    if hosts:
        problems += _control_node_problems(hosts, control_node or this_control_node())
    if problems:
        raise RosterError(source, sorted(problems, key=_line_of))
    return students


def _line_of(problem: str) -> int:
    """The line number a problem message names (0 if none), to list problems in file order."""
    found = LINE_IN_PROBLEM.search(problem)
    return int(found.group(1)) if found else 0


def load_roster(
    path: str,
    *,
    reserved: dict[str, str] | None = None,
    check_key: KeyCheck = check_ssh_public_key,
    control_node: ControlNode | None = None,
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
    return parse_roster(text, source, fmt, reserved=reserved, check_key=check_key, control_node=control_node)


def inventory_host_name(student: Student) -> str:
    """The student's inventory host name. The control node puts it in paths (.lab/vms/<host>,
    .lab/access/<host>.txt), so it is one path component: a Debian user name, whatever made the
    Student (never "/", "..", or a leading "." or "-")."""
    if not USER_NAME.fullmatch(student.name):
        raise RosterError(
            "student",
            [
                f"student {_shown(student.name)} (line {student.line}) cannot be an inventory host name:"
                f" it must be {USER_NAME_RULE}"
            ],
        )
    return student.name


def inventory_entries(students: Iterable[Student], first_port: int = FIRST_PORT) -> list[HostEntry]:
    """One host per student, in roster order: local VMs (no host) in lab_vms with consecutive ports
    from first_port, real machines in classroom with ansible_host (and ansible_port when the roster
    gives one)."""
    students = list(students)
    names = [inventory_host_name(student) for student in students]
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
    for name, student in zip(names, students, strict=True):
        variables: dict[str, Any] = {
            "lab_student": student.name,
            "lab_student_ssh_key": student.ssh_public_key,
        }
        if student.host is None:
            variables["ansible_port"] = port
            variables["lab_vm_ssh_port"] = port
            if student.suite is not None:
                variables["lab_vm_suite"] = student.suite
            entries.append(HostEntry(name, "lab_vms", variables))
            port += 1
        else:
            variables["ansible_host"] = student.host
            if student.port is not None:
                variables["ansible_port"] = student.port
            entries.append(HostEntry(name, "classroom", variables))
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
