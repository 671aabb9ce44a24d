# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a destination is this machine: by its addresses, never by how it is spelled.

127.0.1.1, 127.0.0.2, 0.0.0.0, ::ffff:127.0.0.1, a name that resolves to one of them, or one of this
machine's own interface addresses all reach the machine itself, like 127.0.0.1 and localhost do. Used by
lab_vm_instance to refuse a relay of an isolated VM that would lead back to the control node.

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable

# "This network" (RFC 1122): Linux connects 0.0.0.0/8 to the machine itself; none of it is a host.
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# Where Linux lists the machine's addresses: IPv4 in the routing trie (the "/32 host LOCAL" entries),
# IPv6 one per line (32 hex digits first). Both readable by any user.
FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"


def as_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """text as an address (an IPv6 zone dropped, an IPv4-mapped IPv6 address as its IPv4 address), or
    None when it is not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def addresses_from_fib_trie(text: str) -> list[str]:
    """The machine's own IPv4 addresses in /proc/net/fib_trie: each "|-- a.b.c.d" leaf followed by a
    "/32 host LOCAL" line."""
    found: list[str] = []
    leaf = ""
    for line in text.splitlines():
        match = re.match(r"\s*\|-- ([0-9.]+)\s*$", line)
        if match:
            leaf = match.group(1)
        elif leaf and re.match(r"\s*/32 host LOCAL\b", line) and leaf not in found:
            found.append(leaf)
    return found


def addresses_from_if_inet6(text: str) -> list[str]:
    """The machine's own IPv6 addresses in /proc/net/if_inet6 (32 hex digits first on each line)."""
    return [
        str(ipaddress.IPv6Address(int(fields[0], 16)))
        for fields in (line.split() for line in text.splitlines())
        if fields and re.fullmatch(r"[0-9a-fA-F]{32}", fields[0])
    ]


def own_addresses(
    read_text: Callable[[str, str], str | None],
) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This machine's interface addresses; read_text(path, default) reads a file (System.read_text)."""
    texts = [
        *addresses_from_fib_trie(read_text(FIB_TRIE, "") or ""),
        *addresses_from_if_inet6(read_text(IF_INET6, "") or ""),
    ]
    return frozenset(address for address in map(as_address, texts) if address is not None)


def resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to (an address resolves to itself), as a TCP client would try them.
    OSError (socket.gaierror) when it does not resolve."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # a label longer than 63 characters
        raise socket.gaierror(socket.EAI_NONAME, str(exc)) from exc
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in found]


def this_machine(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    own: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
) -> str:
    """Why address reaches this machine (or a service only this machine can reach), or ""."""
    if address is None:
        return ""
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address, which connects to this machine"
    if address.version == 4 and address in THIS_NETWORK:
        return 'an address of 0.0.0.0/8, "this network", never another machine'
    if address.is_link_local:
        return "a link-local address (169.254.0.0/16 or fe80::/10, where a cloud's metadata service is)"
    if address in frozenset(own):
        return "one of this machine's own addresses"
    return ""
