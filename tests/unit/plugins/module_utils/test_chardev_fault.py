"""Unit tests for plugins/module_utils/chardev_fault.py: the module's layout, the oopses in the kernel
log, the BTF reader and the sentence that puts them together.

The kernel log excerpts (tests/unit/data/kernels/<suite>/) follow the shape of each line as the Debian
5.10, 6.1 and 6.12 kernels print it (addresses and register values are made up, apart from the 6.1 pair
measured in the lab). The BTF blobs
are built here by a tiny encoder; the real /sys/kernel/btf/vmlinux of this machine, and pahole's reading
of it, are used when present.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_fault import (
    SYMBOL_TYPES,
    Btf,
    BtfError,
    capture_layout,
    explain,
    parse_faults,
    parse_kallsyms,
    parse_layout,
    parse_sections,
)
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    FakeHost,
    kernel_fields,
    kernel_lines,
    kernel_text,
)

VMLINUX = "/sys/kernel/btf/vmlinux"

# ---------------------------------------------------------------------------------------------------------
# A tiny BTF encoder (linux/include/uapi/linux/btf.h)
# ---------------------------------------------------------------------------------------------------------

# BTF_KIND_* as numbered in linux/include/uapi/linux/btf.h
K = {
    "INT": 1,
    "PTR": 2,
    "ARRAY": 3,
    "STRUCT": 4,
    "UNION": 5,
    "ENUM": 6,
    "FWD": 7,
    "TYPEDEF": 8,
    "VOLATILE": 9,
}
K.update({"CONST": 10, "RESTRICT": 11, "FUNC": 12, "FUNC_PROTO": 13, "VAR": 14, "DATASEC": 15, "FLOAT": 16})
K.update({"DECL_TAG": 17, "TYPE_TAG": 18, "ENUM64": 19})


class BtfBuilder:
    """Types are added in order; each add returns its type id (ids count from 1, 0 is void)."""

    def __init__(self, order: str = "<") -> None:
        self.order = order
        self.records: list[bytes] = []
        self.strings = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}

    def s(self, name: str) -> int:
        if name not in self.offsets:
            self.offsets[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self.offsets[name]

    def add(
        self, kind: str, name: str = "", vlen: int = 0, kflag: int = 0, ref: int = 0, extra: bytes = b""
    ) -> int:
        info = (kflag << 31) | (K[kind] << 24) | vlen
        self.records.append(struct.pack(self.order + "III", self.s(name), info, ref) + extra)
        return len(self.records)

    def u32(self, *values: int) -> bytes:
        return struct.pack(self.order + "I" * len(values), *values)

    def int_(
        self, name: str, size: int, bits: int | None = None, offset: int = 0, signed: bool = False
    ) -> int:
        encoding = (int(signed) << 24) | (offset << 16) | (8 * size if bits is None else bits)
        return self.add("INT", name, ref=size, extra=self.u32(encoding))

    def ptr(self, target: int) -> int:
        return self.add("PTR", ref=target)

    def typedef(self, name: str, target: int) -> int:
        return self.add("TYPEDEF", name, ref=target)

    def array(self, elem: int, index: int, nelems: int) -> int:
        return self.add("ARRAY", extra=self.u32(elem, index, nelems))

    def struct(
        self, name: str, size: int, members: list[tuple[str, int, int, int]], union: bool = False
    ) -> int:
        """members: (name, type, bit offset, bitfield size); kind_flag is set by any bitfield size."""
        kflag = int(any(bits for _name, _type, _offset, bits in members))
        extra = b"".join(
            self.u32(self.s(m_name), m_type, (bits << 24) | offset if kflag else offset)
            for m_name, m_type, offset, bits in members
        )
        return self.add("UNION" if union else "STRUCT", name, len(members), kflag, size, extra)

    def func_proto(self, ret: int, params: list[int]) -> int:
        return self.add(
            "FUNC_PROTO", vlen=len(params), ref=ret, extra=b"".join(self.u32(0, p) for p in params)
        )

    def build(self) -> bytes:
        types = b"".join(self.records)
        header = struct.pack(
            self.order + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings)
        )
        return header + types + bytes(self.strings)


def kernel_types(b: BtfBuilder) -> dict[str, int]:
    """The types a file_operations needs, with the typedef chains and the __user type tag of real kernels."""
    t: dict[str, int] = {}
    t["int"] = b.int_("int", 4, signed=True)
    t["uint"] = b.int_("unsigned int", 4)
    t["long"] = b.int_("long int", 8, signed=True)
    t["ulong"] = b.int_("long unsigned int", 8)
    t["llong"] = b.int_("long long int", 8, signed=True)
    t["char"] = b.int_("char", 1, signed=True)
    t["ssize_t"] = b.typedef("ssize_t", b.typedef("__kernel_ssize_t", t["long"]))
    t["size_t"] = b.typedef("size_t", b.typedef("__kernel_size_t", t["ulong"]))
    t["loff_t"] = b.typedef("loff_t", b.typedef("__kernel_loff_t", t["llong"]))
    t["file"] = b.add("FWD", "file")
    t["inode"] = b.add("FWD", "inode")
    t["module"] = b.add("FWD", "module")
    t["file *"] = b.ptr(t["file"])
    t["inode *"] = b.ptr(t["inode"])
    t["char __user *"] = b.ptr(b.add("TYPE_TAG", "user", ref=t["char"]))
    t["const char __user *"] = b.ptr(b.add("TYPE_TAG", "user", ref=b.add("CONST", ref=t["char"])))
    t["loff_t *"] = b.ptr(t["loff_t"])
    t["read"] = b.ptr(
        b.func_proto(t["ssize_t"], [t["file *"], t["char __user *"], t["size_t"], t["loff_t *"]])
    )
    t["write"] = b.ptr(
        b.func_proto(t["ssize_t"], [t["file *"], t["const char __user *"], t["size_t"], t["loff_t *"]])
    )
    t["llseek"] = b.ptr(b.func_proto(t["loff_t"], [t["file *"], t["loff_t"], t["int"]]))
    t["open"] = b.ptr(b.func_proto(t["int"], [t["inode *"], t["file *"]]))
    t["fl_owner_t"] = b.typedef("fl_owner_t", b.ptr(0))
    t["flush"] = b.ptr(b.func_proto(t["int"], [t["file *"], t["fl_owner_t"]]))
    t["void fn"] = b.ptr(b.func_proto(0, [t["file *"]]))  # stands in for the members not spelled out
    return t


# struct file_operations as Debian 6.1 lays it out (x86_64): owner 0x0, llseek 0x8, read 0x10 ... flush 0x78.
FOPS_6_1 = [
    "owner", "llseek", "read", "write", "read_iter", "write_iter", "iopoll", "iterate", "iterate_shared",
    "poll", "unlocked_ioctl", "compat_ioctl", "mmap", "mmap_supported_flags", "open", "flush", "release",
]  # fmt: skip
# 6.12 added fop_flags (4 bytes and a hole) after owner: llseek 0x10, read 0x18; iterate is gone.
FOPS_6_12 = [
    "owner", "fop_flags", "llseek", "read", "write", "read_iter", "write_iter", "iopoll", "iterate_shared",
    "poll", "unlocked_ioctl", "compat_ioctl", "mmap", "open", "flush", "release",
]  # fmt: skip


def fops_btf(names: list[str], order: str = "<") -> bytes:
    b = BtfBuilder(order)
    t = kernel_types(b)
    typed = {
        "owner": b.ptr(t["module"]),
        "fop_flags": b.typedef("fop_flags_t", t["uint"]),
        "mmap_supported_flags": t["ulong"],
    }
    members, offset = [], 0
    for name in names:
        member_type = typed.get(name) or t.get(name) or t["void fn"]
        members.append((name, member_type, offset * 8, 0))
        offset += 4 if name == "fop_flags" else 8
        offset = (offset + 7) // 8 * 8
    b.struct("file_operations", 0x100, members)
    return b.build()


def demo_btf(order: str = "<") -> bytes:
    """One of every kind, then structs that exercise member_at."""
    b = BtfBuilder(order)
    t = kernel_types(b)
    # kinds member_at never looks at, before the structs: the walk must step over each exactly.
    b.add("ENUM", "colour", 2, ref=4, extra=b.u32(b.s("RED"), 0, b.s("BLUE"), 1))
    b.add("ENUM64", "big", 1, ref=8, extra=b.u32(b.s("HUGE"), 1, 2))
    b.add("VOLATILE", ref=t["int"])
    b.add("RESTRICT", ref=t["char __user *"])
    b.add("FLOAT", "double", ref=8)
    func = b.add("FUNC", "chardev_read", 1, ref=b.func_proto(t["ssize_t"], [t["file *"]]))
    var = b.add("VAR", "jiffies", ref=t["ulong"], extra=b.u32(1))
    b.add("DATASEC", ".data", 1, ref=8, extra=b.u32(var, 0, 8))
    b.add("DECL_TAG", "tagged", ref=func, extra=struct.pack(order + "i", -1))
    u16 = b.int_("short unsigned int", 2)
    char8 = b.array(t["char"], t["int"], 8)
    anon = b.struct("", 8, [("b", t["long"], 0, 0), ("c", char8, 0, 0)], union=True)
    inner = b.struct("inner", 8, [("x", u16, 0, 0), ("y", u16, 16, 0), ("z", t["uint"], 32, 0)])
    handler_t = b.typedef("handler_t", b.add("CONST", ref=t["read"]))
    varargs = b.ptr(
        b.add("FUNC_PROTO", vlen=2, ref=t["int"], extra=b.u32(b.s("fmt"), t["const char __user *"], 0, 0))
    )
    table = b.ptr(b.array(t["int"], t["int"], 4))
    b.struct(
        "demo",
        64,
        [
            ("a", t["int"], 0, 0),  # 0..3, then a hole 4..7
            ("", anon, 64, 0),  # 8..15
            ("lo", t["uint"], 128, 3),  # byte 16, bits 0-2
            ("hi", t["uint"], 131, 5),  # byte 16, bits 3-7
            ("mid", t["uint"], 136, 12),  # bytes 17-18; 19 is padding
            ("read", t["read"], 192, 0),  # 24..31
            ("cb", handler_t, 256, 0),  # 32..39
            ("named", inner, 320, 0),  # 40..47
            ("printf", varargs, 384, 0),  # 48..55
            ("table", table, 448, 0),  # 56..63
        ],
    )
    # The old bitfield encoding (kind_flag clear): the INT carries the bit count and offset.
    nibble = b.int_("unsigned int", 4, bits=4, offset=0)
    b.struct("legacy", 8, [("whole", t["uint"], 0, 0), ("nib", nibble, 36, 0)])
    return b.build()


# ---------------------------------------------------------------------------------------------------------
# The BTF reader
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Btf:
    return Btf(demo_btf())


@pytest.mark.parametrize(
    ("offset", "member", "size", "bitfield", "type_"),
    [
        (0, "a", 4, False, "int"),
        (3, "a", 4, False, "int"),
        (8, "b", 8, False, "long int"),  # the anonymous union: its first member wins, no path segment
        (15, "b", 8, False, "long int"),
        (16, "lo", 1, True, "unsigned int"),
        (17, "mid", 2, True, "unsigned int"),
        (18, "mid", 2, True, "unsigned int"),
        (24, "read", 8, False, "ssize_t (*)(struct file *, char *, size_t, loff_t *)"),
        (32, "cb", 8, False, "handler_t"),
        (40, "named.x", 2, False, "short unsigned int"),
        (42, "named.y", 2, False, "short unsigned int"),
        (44, "named.z", 4, False, "unsigned int"),
        (48, "printf", 8, False, "int (*)(const char *, ...)"),
        (56, "table", 8, False, "int (*)[4]"),
    ],
)
def test_member_at(demo: Btf, offset: int, member: str, size: int, bitfield: bool, type_: str) -> None:
    found = demo.member_at("demo", offset)
    assert found is not None
    assert (found["struct"], found["member"], found["size"], found["bitfield"], found["type"]) == (
        "demo",
        member,
        size,
        bitfield,
        type_,
    )


def test_member_at_details(demo: Btf) -> None:
    read = demo.member_at("demo", 0x18)
    assert read == {
        "struct": "demo",
        "member": "read",
        "offset": 0x18,
        "size": 8,
        "type": "ssize_t (*)(struct file *, char *, size_t, loff_t *)",
        "bitfield": False,
        "bit_offset": 0xC0,
        "bit_size": 64,
        "pointer": True,
    }
    assert demo.member_at("demo", 32)["pointer"]  # typedef -> const -> pointer
    assert not demo.member_at("demo", 40)["pointer"]
    hi = demo.member_at("demo", 16)
    assert (hi["member"], hi["bit_offset"], hi["bit_size"]) == (
        "lo",
        128,
        3,
    )  # the first bitfield in the byte
    assert demo.member_at("demo", 17)["bit_offset"] == 136


def test_member_at_padding_end_and_unknown(demo: Btf) -> None:
    assert demo.member_at("demo", 4) is None  # the hole after a
    assert demo.member_at("demo", 19) is None  # after the bitfields
    assert demo.member_at("demo", 64) is None  # past the end
    assert demo.member_at("demo", -1) is None
    assert demo.member_at("no_such_struct", 0) is None
    assert demo.member_at("struct demo", 0)["member"] == "a"


def test_legacy_bitfield_encoding(demo: Btf) -> None:
    nib = demo.member_at("legacy", 4)
    assert (nib["member"], nib["bitfield"], nib["bit_offset"], nib["bit_size"], nib["size"]) == (
        "nib",
        True,
        36,
        4,
        1,
    )
    assert demo.member_at("legacy", 5) is None


def test_sizes_resolve_through_typedefs_and_modifiers(demo: Btf) -> None:
    ids = {demo.name(i): i for i in range(1, len(demo)) if demo.name(i)}
    assert demo.sizeof(ids["ssize_t"]) == 8
    assert demo.sizeof(ids["handler_t"]) == 8  # typedef -> const -> pointer
    assert demo.sizeof(ids["inner"]) == 8
    assert demo.sizeof(ids["file"]) is None  # a forward declaration has no size
    assert demo.sizeof(0) is None
    assert demo.pointer_size == 8
    assert demo.struct_size("demo") == 64
    assert demo.find_struct("demo") == ids["demo"]
    assert demo.find_struct("file") is None  # only a FWD
    assert demo.byte_order == "little"


def test_big_endian_btf_reads_the_same() -> None:
    little, big = Btf(demo_btf("<")), Btf(demo_btf(">"))
    assert big.byte_order == "big"
    for offset in range(64):
        assert big.member_at("demo", offset) == little.member_at("demo", offset)


def test_bad_btf_is_refused_clearly() -> None:
    with pytest.raises(BtfError, match="starts with the bytes 7f 45, not the magic 0xeb9f"):
        Btf(b"\x7fELF" + bytes(40))
    with pytest.raises(BtfError, match="shorter than"):
        Btf(b"\x9f\xeb\x01")
    data = bytearray(demo_btf())
    data[2] = 2
    with pytest.raises(BtfError, match="version 2"):
        Btf(bytes(data))
    b = BtfBuilder()
    b.int_("int", 4)
    b.records.append(struct.pack("<III", 0, 25 << 24, 0))
    with pytest.raises(BtfError, match="unknown BTF kind 25 at type id 2"):
        Btf(b.build())
    with pytest.raises(BtfError, match="truncated"):
        Btf(demo_btf()[:-40])


# ---------------------------------------------------------------------------------------------------------
# The module's layout
# ---------------------------------------------------------------------------------------------------------

BOOT_ID = "0f9e3c1c-8d44-4b4e-9d7c-6a1f0d3b2e11"

# chardev's sections and its kallsyms lines on Debian 6.1.
SECTIONS_6_1 = kernel_fields("bookworm", "sys-module-chardev-sections.txt")
KALLSYMS_6_1 = kernel_text("bookworm", "proc-kallsyms.txt")


def fake_root(tmp_path: Path, sections: dict[str, str] | None, kallsyms: str) -> str:
    """A booted 6.1 host below tmp_path with these kallsyms lines: chardev loaded with these sections, or
    not loaded (None)."""
    host = FakeHost(tmp_path)
    host.boot_id(BOOT_ID)
    host.release("6.1.0-18-amd64")
    host.write("/proc/kallsyms", kallsyms)
    if sections is not None:
        host.module(None, sections, kallsyms)
    return str(tmp_path)


def test_parse_kallsyms_keeps_only_the_module_and_skips_zeros() -> None:
    symbols = parse_kallsyms(KALLSYMS_6_1 + "0000000000000000 t hidden\t[chardev]\n")
    assert [s["name"] for s in symbols] == [
        "chardev_open",
        "chardev_release",
        "chardev_read",
        "chardev_write",
        "cleanup_module",
        "chardev_fops",
        "__this_module",
        "major",
    ]
    assert symbols[5] == {"address": 0xFFFFFFFFC0A651A0, "type": "r", "name": "chardev_fops"}
    assert parse_kallsyms(KALLSYMS_6_1, module="other") == [
        {"address": 0xFFFFFFFFC0A50000, "type": "t", "name": "other_fn"}
    ]


def test_parse_sections() -> None:
    assert parse_sections({".text": "0xffffffffc0a63000\n", ".bss": "0x0000000000000000", "x": "junk"}) == {
        ".text": 0xFFFFFFFFC0A63000
    }


def test_capture_layout_round_trips_through_json(tmp_path: Path) -> None:
    record = capture_layout(fake_root(tmp_path, SECTIONS_6_1, KALLSYMS_6_1))
    assert record["readable"] is True
    assert record["reason"] is None
    assert (record["module"], record["boot_id"], record["kernel"]) == ("chardev", BOOT_ID, "6.1.0-18-amd64")
    assert record["sections"][".rodata"] == "0xffffffffc0a65000"
    assert {"name": "chardev_fops", "type": "r", "address": "0xffffffffc0a651a0"} in record["symbols"]
    layout, why = parse_layout(json.dumps(record))
    assert why is None
    assert layout["sections"][".rodata"] == 0xFFFFFFFFC0A65000
    assert layout["symbols"][5] == {"name": "chardev_fops", "type": "r", "address": 0xFFFFFFFFC0A651A0}
    assert parse_layout(layout) == (layout, None)  # already parsed: unchanged


def test_capture_layout_when_kallsyms_hides_addresses(tmp_path: Path) -> None:
    zeroed = re.sub(r"^[0-9a-f]{16}", "0" * 16, KALLSYMS_6_1, flags=re.M)
    record = capture_layout(fake_root(tmp_path, SECTIONS_6_1, zeroed))
    assert record["readable"] is True  # the sections still place it
    assert record["symbols"] == []
    assert "kallsyms addresses of chardev read as zero" in record["reason"]


def test_capture_layout_when_nothing_is_readable(tmp_path: Path) -> None:
    zeroed = re.sub(r"^[0-9a-f]{16}", "0" * 16, KALLSYMS_6_1, flags=re.M)
    record = capture_layout(fake_root(tmp_path, dict.fromkeys(SECTIONS_6_1, "0x0000000000000000"), zeroed))
    assert record["readable"] is False
    assert "section addresses read as zero" in record["reason"]
    assert parse_layout(record)[0] is None
    assert "no addresses of chardev" in parse_layout(record)[1]


def test_capture_layout_when_not_loaded(tmp_path: Path) -> None:
    record = capture_layout(fake_root(tmp_path, None, KALLSYMS_6_1.replace("[chardev]", "[gone]")))
    assert record["readable"] is False
    assert "chardev is not loaded" in record["reason"]
    json.dumps(record)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_capture_layout_with_root_only_section_files(tmp_path: Path) -> None:
    root = fake_root(tmp_path, SECTIONS_6_1, KALLSYMS_6_1)
    for path in (tmp_path / "sys/module/chardev/sections").iterdir():
        path.chmod(0)
    record = capture_layout(root)
    assert record["sections"] == {}
    assert "section files unreadable" in record["reason"]


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ("{not json", "not JSON"),
        ("[]", "not a layout record"),
        (42, "not a layout record"),
        ({"sections": {}}, "names no module"),
        ({"module": "chardev", "sections": [], "symbols": []}, "malformed"),
        ({"module": "chardev", "readable": False, "reason": "not root"}, "no addresses of chardev: not root"),
    ],
)
def test_parse_layout_refuses_bad_records(record: Any, why: str) -> None:
    layout, reason = parse_layout(record)
    assert layout is None
    assert why in reason


# ---------------------------------------------------------------------------------------------------------
# The kernel log
# ---------------------------------------------------------------------------------------------------------

# Debian 6.1, the measured crash: the read oops, then the recursive one in filp_close (->flush).
LOG_6_1 = kernel_lines("bookworm", "dmesg-read-crash-measured.txt")
# Debian 5.10, with syslog priorities in front of the timestamps.
LOG_5_10 = kernel_lines("bullseye", "dmesg-r-read-crash.txt")
# Debian 6.12: "UID: 0" before PID, "Oops: Oops:", and .read at chardev_fops+0x18.
LOG_6_12 = kernel_lines("trixie", "dmesg-read-crash.txt")
# Calling a freed function: the page fault is at RIP itself, which no symbol covers any more.
LOG_FETCH = kernel_lines("bookworm", "dmesg-instruction-fetch.txt")
# Other oopses, none in chardev's memory: old spellings (before 5.1), a NULL pointer, a #GP.
LOG_OTHERS = kernel_lines("before-5.1", "log-oopses-elsewhere.txt") + kernel_lines(
    "bookworm", "log-oopses-elsewhere.txt"
)


def test_parse_faults_6_1() -> None:
    first, second = parse_faults(LOG_6_1)
    assert first == {
        "index": 0,
        "role": "primary",
        "kind": "page_fault",
        "headline": "BUG: unable to handle page fault for address: ffffffffc0a651b0",
        "address": 0xFFFFFFFFC0A651B0,
        "access": "read",
        "access_mode": "kernel",
        "error_code": 0,
        "error_text": "not-present page",
        "oops_number": 1,
        "rip": "0010:vfs_read+0x8a/0x2f0",
        "rip_function": "vfs_read",
        "rip_offset": 0x8A,
        "rip_size": 0x2F0,
        "rip_module": None,
        "rip_address": None,
        "cpu": 0,
        "uid": None,
        "pid": 1633,
        "comm": "python3",
        "last_unloaded": "chardev",
        "fixing_recursive_fault": False,
    }
    assert (second["role"], second["address"], second["rip_function"], second["rip_offset"]) == (
        "recursive",
        0xFFFFFFFFC0A65218,
        "filp_close",
        0x1D,
    )
    assert (second["oops_number"], second["pid"], second["fixing_recursive_fault"]) == (2, 1633, True)


def test_parse_faults_5_10_with_priorities() -> None:
    first, second = parse_faults(LOG_5_10)
    assert (first["address"], first["pid"], first["comm"], first["rip_function"]) == (
        0xFFFFFFFFC06EA1B0,
        845,
        "chardev-victim",
        "vfs_read",
    )
    assert (first["role"], second["role"], second["fixing_recursive_fault"]) == ("primary", "recursive", True)
    assert first["last_unloaded"] == "chardev"


def test_parse_faults_6_12_uid_and_double_oops() -> None:
    first, second = parse_faults(LOG_6_12)
    assert (first["uid"], first["pid"], first["comm"], first["oops_number"]) == (0, 1633, "chardev-victim", 1)
    assert first["address"] == 0xFFFFFFFFC0A651B8
    assert (second["role"], second["oops_number"]) == ("recursive", 2)


def test_parse_faults_raw_rip_is_an_instruction_fetch() -> None:
    (fault,) = parse_faults(LOG_FETCH)
    assert (fault["rip_address"], fault["rip_function"], fault["access"], fault["error_code"]) == (
        0xFFFFFFFFC0A63060,
        None,
        "instruction fetch",
        0x10,
    )


def test_parse_faults_old_spellings_null_and_gp() -> None:
    paging, old_null, null, gp = parse_faults("\n".join(LOG_OTHERS))
    assert (paging["kind"], paging["address"], paging["access"], paging["error_code"]) == (
        "page_fault",
        0xFFFF8881DEADBEEF,
        "write",  # no "#PF:" line before 5.1: read from the Oops error code (bit 1)
        2,
    )
    assert (paging["rip_function"], paging["rip_offset"], paging["comm"]) == ("memcpy_erms", 6, "kworker/2:1")
    assert (old_null["kind"], old_null["address"], old_null["oops_number"]) == ("null_pointer", 0x10, 2)
    assert (null["kind"], null["address"], null["access"], null["comm"]) == (
        "null_pointer",
        8,
        "write",
        "my prog",
    )
    assert (gp["kind"], gp["address"], gp["oops_number"], gp["rip_function"]) == (
        "general_protection",
        None,
        4,
        "list_del",
    )
    assert [f["role"] for f in (paging, old_null, null, gp)] == ["primary"] * 4


def test_parse_faults_bare_oops_and_nothing() -> None:
    assert parse_faults([]) == []
    assert parse_faults(["[  1.0] chardev: loaded", "Fixing recursive fault but reboot is needed!"]) == []
    (fault,) = parse_faults(
        ["kernel: something odd", "Oops: 0000 [#1] SMP", "CPU: 0 PID: 5 Comm: x Not tainted"]
    )
    assert (fault["kind"], fault["oops_number"], fault["pid"], fault["address"]) == ("oops", 1, 5, None)


# ---------------------------------------------------------------------------------------------------------
# explain(): the sentence
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def layout_6_1(tmp_path: Path) -> dict[str, Any]:
    return capture_layout(fake_root(tmp_path, SECTIONS_6_1, KALLSYMS_6_1))


def test_explain_the_6_1_crash_end_to_end(layout_6_1: dict[str, Any]) -> None:
    btf = Btf(fops_btf(FOPS_6_1))
    first, second = (explain(f, layout_6_1, btf, SYMBOL_TYPES) for f in parse_faults(LOG_6_1))
    assert first == {
        "address": "0xffffffffc0a651b0",
        "module": "chardev",
        "symbol": "chardev_fops",
        "offset": 0x10,
        "section": ".rodata",
        "struct": "file_operations",
        "member": "read",
        "member_type": "ssize_t (*)(struct file *, char *, size_t, loff_t *)",
        "text": (
            "the kernel read chardev_fops+0x10, the .read pointer of the module's struct file_operations, "
            "in memory freed when chardev was unloaded"
        ),
    }
    assert (second["offset"], second["member"], second["member_type"]) == (
        0x78,
        "flush",
        "int (*)(struct file *, fl_owner_t)",
    )
    assert second["text"] == (
        "the kernel read chardev_fops+0x78, the .flush pointer of the module's struct file_operations, "
        "in memory freed when chardev was unloaded"
    )


def test_explain_6_12_needs_that_kernels_btf(layout_6_1: dict[str, Any]) -> None:
    fault = parse_faults(LOG_6_12)[0]
    assert explain(fault, layout_6_1, Btf(fops_btf(FOPS_6_12)), SYMBOL_TYPES)["member"] == "read"
    # the 6.1 layout would name the wrong member: offsets must come from the kernel that oopsed
    assert explain(fault, layout_6_1, Btf(fops_btf(FOPS_6_1)), SYMBOL_TYPES)["member"] == "write"


def test_explain_without_btf_or_types(layout_6_1: dict[str, Any]) -> None:
    fault = parse_faults(LOG_6_1)[0]
    no_btf = explain(fault, layout_6_1, None, SYMBOL_TYPES)
    assert (no_btf["struct"], no_btf["member"], no_btf["member_type"]) == ("file_operations", None, None)
    bare = explain(fault, layout_6_1)
    assert (bare["symbol"], bare["offset"], bare["struct"]) == ("chardev_fops", 0x10, None)
    assert bare["text"] == (
        "the kernel read chardev_fops+0x10 in chardev's .rodata, in memory freed when chardev was unloaded"
    )


def test_explain_instruction_fetch_in_freed_code(layout_6_1: dict[str, Any]) -> None:
    result = explain(parse_faults(LOG_FETCH)[0], layout_6_1, Btf(fops_btf(FOPS_6_1)), SYMBOL_TYPES)
    assert (result["symbol"], result["offset"], result["section"], result["struct"]) == (
        "chardev_read",
        0,
        ".text",
        None,
    )
    # no "[last unloaded: chardev]" in this excerpt: the sentence does not claim the unload
    assert result["text"] == (
        "the kernel fetched an instruction at chardev_read+0x0 in chardev's .text, "
        "in memory that belonged to chardev when its layout was recorded"
    )


def test_explain_faults_elsewhere(layout_6_1: dict[str, Any]) -> None:
    paging, _old_null, null, gp = parse_faults(LOG_OTHERS)
    outside = explain(paging, layout_6_1)
    assert (outside["address"], outside["module"], outside["symbol"], outside["section"]) == (
        "0xffff8881deadbeef",
        None,
        None,
        None,
    )
    assert outside["text"] == (
        "the kernel wrote 0xffff8881deadbeef, which is not in chardev's memory: this fault happened elsewhere"
    )
    assert explain(null, layout_6_1)["module"] is None
    no_address = explain(gp, layout_6_1)
    assert no_address["address"] is None
    assert "gives no faulting address for this general protection fault" in no_address["text"]


def test_explain_edges_of_the_layout(layout_6_1: dict[str, Any]) -> None:
    def at(address: int) -> dict[str, Any]:
        return explain({"address": address, "access": "read", "last_unloaded": "chardev"}, layout_6_1)

    before = at(0xFFFFFFFFC0A65010)  # .rodata, before chardev_fops
    assert (before["section"], before["symbol"], before["module"]) == (".rodata", None, "chardev")
    assert before["text"] == (
        "the kernel read 0xffffffffc0a65010, 0x10 bytes into chardev's .rodata before any of its symbols, "
        "in memory freed when chardev was unloaded"
    )
    # in .rodata.str1.1, past chardev_fops: the section bounds the symbol
    assert (at(0xFFFFFFFFC0A652A8)["section"], at(0xFFFFFFFFC0A652A8)["symbol"]) == (".rodata.str1.1", None)
    assert at(0xFFFFFFFFC0A67410)["symbol"] == "major"
    assert at(0xFFFFFFFFC0A6C000 + 0xFFFF)["section"] == ".init.text"
    assert at(0xFFFFFFFFC0A6C000 + 0x10000)["module"] is None  # 64 KiB past the last section's start
    assert at(0xFFFFFFFFC0A62FFF)["module"] is None  # just below .text


def test_explain_without_sections_uses_symbols(layout_6_1: dict[str, Any]) -> None:
    layout = dict(layout_6_1, sections={})
    result = explain(parse_faults(LOG_6_1)[0], layout, Btf(fops_btf(FOPS_6_1)), SYMBOL_TYPES)
    assert (result["symbol"], result["offset"], result["section"], result["member"]) == (
        "chardev_fops",
        0x10,
        None,
        "read",
    )


def test_explain_past_the_struct_and_in_padding(layout_6_1: dict[str, Any]) -> None:
    fault = {"address": 0xFFFFFFFFC0A651A0 + 0x100, "access": "read", "last_unloaded": "chardev"}
    btf = Btf(fops_btf(FOPS_6_12))
    # without .rodata.str1.1, which starts right where a 256-byte chardev_fops would end
    sections = {name: start for name, start in layout_6_1["sections"].items() if name != ".rodata.str1.1"}
    past = explain(fault, dict(layout_6_1, sections=sections), btf, SYMBOL_TYPES)
    assert (past["symbol"], past["member"]) == ("chardev_fops", None)
    assert "past the end of the module's struct file_operations (256 bytes)" in past["text"]
    hole = explain(dict(fault, address=0xFFFFFFFFC0A651A0 + 0xC), layout_6_1, btf, SYMBOL_TYPES)
    assert hole["member"] is None
    assert "padding between the members" in hole["text"]


def test_explain_refuses_unusable_layouts(layout_6_1: dict[str, Any]) -> None:
    fault = parse_faults(LOG_6_1)[0]
    other_boot = explain(fault, layout_6_1, boot_id="another-boot")
    assert (other_boot["module"], other_boot["symbol"]) == (None, None)
    assert "recorded in another boot" in other_boot["text"]
    assert explain(fault, layout_6_1, boot_id=BOOT_ID + "\n")["symbol"] == "chardev_fops"
    hidden = explain(fault, {"module": "chardev", "readable": False, "reason": "kptr_restrict"})
    assert hidden["module"] is None
    assert hidden["text"] == (
        "the kernel read 0xffffffffc0a651b0, but chardev's addresses are unknown "
        "(the layout holds no addresses of chardev: kptr_restrict)"
    )
    assert "addresses are unknown (no layout was recorded)" in explain(fault, None)["text"]


# ---------------------------------------------------------------------------------------------------------
# The real BTF of this machine's kernel
# ---------------------------------------------------------------------------------------------------------

needs_vmlinux = pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=VMLINUX + " is not readable")


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf.from_file(VMLINUX)


@needs_vmlinux
def test_real_btf_parses_quickly() -> None:
    started = time.perf_counter()
    btf = Btf.from_file(VMLINUX)
    assert btf.member_at("file_operations", 0) is not None
    assert time.perf_counter() - started < 5  # about 0.2 s on the development machine


@needs_vmlinux
def test_real_file_operations(vmlinux: Btf) -> None:
    names = {
        offset: (vmlinux.member_at("file_operations", offset) or {}).get("member")
        for offset in range(0, 0x20, 8)
    }
    assert names[0] == "owner"
    # Up to 6.11: llseek 0x8, read 0x10 (the measured 6.1 oops). 6.12 put fop_flags after owner.
    if names[8] == "fop_flags":
        assert (names[0x10], names[0x18]) == ("llseek", "read")
    else:
        assert (names[8], names[0x10]) == ("llseek", "read")
    release = Path("/proc/sys/kernel/osrelease").read_text()
    if release.startswith("6.1."):
        assert (names[8], names[0x10]) == ("llseek", "read")
    read = next(vmlinux.member_at("file_operations", o) for o in names if names[o] == "read")
    assert read["type"] == "ssize_t (*)(struct file *, char *, size_t, loff_t *)"
    assert read["pointer"]


def pahole_members(struct_name: str) -> list[tuple[str, int, int]]:
    """(name, offset, size) of the top-level members pahole prints for a struct of the running kernel."""
    done = subprocess.run(
        ["pahole", "-C", struct_name, VMLINUX], capture_output=True, text=True, timeout=60, check=True
    )
    members = []
    for line in done.stdout.splitlines():
        found = re.match(r"^\t(\S.*?);\s*/\*\s*(\d+)\s+(\d+)\s*\*/", line)  # one tab: top level, no bitfields
        if found:
            name = re.search(r"\(\*(\w+)\)\(|(\w+)(?:\[\d+\])*$", found.group(1))
            members.append((name.group(1) or name.group(2), int(found.group(2)), int(found.group(3))))
    return members


@needs_vmlinux
@pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole (package dwarves) is not installed")
def test_real_file_operations_agrees_with_pahole(vmlinux: Btf) -> None:
    members = pahole_members("file_operations")
    assert len(members) > 20
    for name, offset, size in members:
        for byte in (offset, offset + size - 1):
            found = vmlinux.member_at("file_operations", byte)
            assert (found["member"], found["offset"], found["size"]) == (name, offset, size), (name, byte)


@needs_vmlinux
@pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole (package dwarves) is not installed")
def test_explain_with_the_real_btf(vmlinux: Btf, layout_6_1: dict[str, Any]) -> None:
    read_offset = next(offset for name, offset, _size in pahole_members("file_operations") if name == "read")
    fault = dict(parse_faults(LOG_6_1)[0], address=0xFFFFFFFFC0A651A0 + read_offset)
    result = explain(fault, layout_6_1, vmlinux, SYMBOL_TYPES)
    assert (result["symbol"], result["offset"], result["member"]) == ("chardev_fops", read_offset, "read")
    assert result["text"].startswith(f"the kernel read chardev_fops+0x{read_offset:x}, the .read pointer")
