"""Unit tests for plugins/module_utils/lab_net.py: this machine's addresses from /proc/net (as Linux 6.1
writes them), and which addresses reach this machine, whatever their spelling."""

from __future__ import annotations

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils import lab_net
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import data_text

# A control node with 192.0.2.2/24 and fd00::2 on eth0 (tests/unit/data/proc-net/README.md).
FIB_TRIE = data_text("proc-net", "fib_trie.txt")
IF_INET6 = data_text("proc-net", "if_inet6.txt")


def test_addresses_from_proc_net() -> None:
    assert lab_net.addresses_from_fib_trie(FIB_TRIE) == ["127.0.0.1", "192.0.2.2"]
    assert lab_net.addresses_from_if_inet6(IF_INET6) == ["::1", "fd00::2", "fe80::fc:ff:fe00:1"]
    files = {lab_net.FIB_TRIE: FIB_TRIE, lab_net.IF_INET6: IF_INET6}
    own = lab_net.own_addresses(files.get)
    assert sorted(map(str, own)) == ["127.0.0.1", "192.0.2.2", "::1", "fd00::2", "fe80::fc:ff:fe00:1"]
    assert lab_net.own_addresses(lambda path, default: default) == frozenset()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.0.1.1", "a loopback address"),
        ("127.0.0.2", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("0.1.2.3", '"this network"'),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("192.0.2.2", "one of this machine's own addresses"),
        ("fd00::2", "one of this machine's own addresses"),
        ("203.0.113.80", ""),
        ("2001:db8::80", ""),
        ("deb.example", ""),  # not an address: the caller resolves names
    ],
)
def test_this_machine(text: str, why: str) -> None:
    own = {lab_net.as_address("192.0.2.2"), lab_net.as_address("fd00::2")}
    assert why in lab_net.this_machine(lab_net.as_address(text), own)
    assert bool(lab_net.this_machine(lab_net.as_address(text), own)) == bool(why)


def test_resolve_a_literal_needs_no_dns() -> None:
    assert lab_net.resolve("127.0.1.1", 80) == ["127.0.1.1"]
