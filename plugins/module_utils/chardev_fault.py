# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Name the memory a chardev oops touched: the module's layout, the oopses, the kernel's own BTF.

After ``rmmod`` of the crash variant, the open file's ``f_op`` still points at ``chardev_fops`` in the
freed module, and the kernel log only says "unable to handle page fault for address: ffffffffc0a651b0".
To tell a student *which* memory that was, three things are put together:

* the module's layout, recorded while it was still loaded: ``/sys/module/chardev/sections/*`` (where
  each section starts) and the ``[chardev]`` lines of ``/proc/kallsyms`` (where each symbol starts),
  see :func:`capture_layout`;
* the oopses in the kernel log: faulting address, kind of access, RIP, task, see :func:`parse_faults`;
* the kernel's own type information, ``/sys/kernel/btf/vmlinux``, to turn "chardev_fops+0x10" into "the
  .read pointer of struct file_operations", see :class:`Btf`. Member offsets change between kernel
  versions (6.12 added ``fop_flags`` after ``owner``, moving ``.read`` from 0x10 to 0x18), so they are
  always read from the BTF of the kernel at hand, never from a table typed in here.

:func:`explain` combines them into one sentence. Whatever cannot be established is None, never guessed.

It runs on the managed node too, whose Python may be as old as 3.9 (Debian 11): stdlib only, no
``match``, and ``X | None`` only inside annotations (postponed by the ``__future__`` import).
"""

from __future__ import annotations

import json
import os
import re
import struct
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    RECURSIVE_FAULT_MARKER,
    strip_log_prefix,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

#: The struct type of the module's data symbols that the kernel dereferences. The module is built out of
#: tree without BTF of its own (no CONFIG_DEBUG_INFO_BTF_MODULES pass over it), so nothing on the node
#: says that the symbol ``chardev_fops`` is a ``struct file_operations``: this map says it, and the
#: kernel's BTF then supplies the layout of that struct (the offsets, which do change between kernels).
SYMBOL_TYPES = {"chardev_fops": "file_operations"}

#: How far past a section's or a symbol's start an address may be and still be claimed for it. sysfs
#: gives no section sizes and kallsyms no symbol sizes; chardev's sections are all far smaller than this.
MAX_REACH = 64 * 1024

BTF_PATH = "/sys/kernel/btf/vmlinux"


# ---------------------------------------------------------------------------------------------------------
# The module's layout, recorded while it is loaded
# ---------------------------------------------------------------------------------------------------------

# "ffffffffc0a651a0 r chardev_fops\t[chardev]" (the module column may carry more after the name)
_KALLSYMS_RE = re.compile(r"^([0-9a-fA-F]+)\s+(\S)\s+(\S+)\s+\[([^\]\s]+)\]")


def _parse_address(text: Any) -> int | None:
    """An address written as "0xffffffffc0a65000", "ffffffffc0a65000" or an int; None if unreadable."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text if text >= 0 else None
    if not isinstance(text, str):
        return None
    text = text.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if not text or not re.fullmatch(r"[0-9a-f]+", text):
        return None
    return int(text, 16)


def parse_kallsyms(text: str, module: str = "chardev") -> list[dict[str, Any]]:
    """The ``[module]`` symbols of /proc/kallsyms text, sorted by address: [{"address": int, "type", "name"}].

    Zero addresses (a reader without CAP_SYSLOG, or kptr_restrict) are skipped: they locate nothing.
    """
    symbols = []
    tag = "[" + module + "]"
    for line in text.splitlines():
        if tag not in line:
            continue
        found = _KALLSYMS_RE.match(line.strip())
        if not found or found.group(4) != module:
            continue
        address = int(found.group(1), 16)
        if address:
            symbols.append({"address": address, "type": found.group(2), "name": found.group(3)})
    symbols.sort(key=lambda symbol: (symbol["address"], symbol["name"]))
    return symbols


def parse_sections(sections: Mapping[str, Any]) -> dict[str, int]:
    """``/sys/module/<m>/sections/<name>`` contents ({name: "0xffffffffc0a65000\\n"}) as {name: int}.

    Zero or unreadable addresses are left out.
    """
    parsed = {}
    for name, text in sections.items():
        address = _parse_address(text)
        if address:
            parsed[str(name)] = address
    return parsed


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def capture_layout(root: str = "/", module: str = "chardev") -> dict[str, Any]:
    """Where the loaded module lives, as a JSON-serialisable record (call it before ``rmmod``).

    Returns {"module", "boot_id", "kernel", "sections": {name: "0x..."},
    "symbols": [{"name", "type", "address": "0x..."}], "readable": bool, "reason": str | None}.
    ``readable`` is False when no address could be read (module not loaded, not root, kptr_restrict);
    ``reason`` then says why, and also names a partial loss (sections readable but kallsyms zeroed).
    """
    boot_id = _read_text(System(root=root).path("/proc/sys/kernel/random/boot_id"))
    kernel = _read_text(System(root=root).path("/proc/sys/kernel/osrelease"))
    problems = []

    sections_dir = System(root=root).path(f"/sys/module/{module}/sections")
    raw_sections: dict[str, str] = {}
    try:
        names = sorted(os.listdir(sections_dir))
    except FileNotFoundError:
        names = []
        problems.append(f"{module} is not loaded (no /sys/module/{module}/sections)")
    except OSError as exc:
        names = []
        problems.append(f"cannot list the module's sections: {exc.strerror or exc}")
    unreadable = 0
    for name in names:
        text = _read_text(os.path.join(sections_dir, name))
        if text is None:
            unreadable += 1
        else:
            raw_sections[name] = text
    if unreadable:
        problems.append(f"{unreadable} of {len(names)} section files unreadable (they are root-only)")
    sections = parse_sections(raw_sections)
    if raw_sections and not sections:
        problems.append("the section addresses read as zero (not root, or kptr_restrict)")

    kallsyms = _read_text(System(root=root).path("/proc/kallsyms"))
    symbols: list[dict[str, Any]] = []
    if kallsyms is None:
        problems.append("cannot read /proc/kallsyms")
    else:
        symbols = parse_kallsyms(kallsyms, module)
        if not symbols and ("[" + module + "]") in kallsyms:
            problems.append(f"the kallsyms addresses of {module} read as zero (not root, or kptr_restrict)")
        elif not symbols and names:
            problems.append(f"/proc/kallsyms lists no {module} symbols")

    readable = bool(sections or symbols)
    return {
        "module": module,
        "boot_id": boot_id.strip() if boot_id else None,
        "kernel": kernel.strip() if kernel else None,
        "sections": {name: _hex(address) for name, address in sorted(sections.items())},
        "symbols": [
            {"name": symbol["name"], "type": symbol["type"], "address": _hex(symbol["address"])}
            for symbol in symbols
        ],
        "readable": readable,
        "reason": "; ".join(problems) if problems else None,
    }


def parse_layout(record: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A :func:`capture_layout` record (dict or JSON text) with int addresses: (layout, None) or (None, why).

    The layout has the record's keys, with ``sections`` as {name: int} and each symbol's ``address`` an
    int (symbols sorted by address). Entries whose address does not parse are dropped. An already parsed
    layout parses to itself.
    """
    if isinstance(record, (str, bytes)):
        try:
            record = json.loads(record)
        except ValueError as exc:
            return None, f"not JSON ({exc})"
    if not isinstance(record, Mapping):
        return None, "not a layout record (expected a JSON object)"
    module = record.get("module")
    if not isinstance(module, str) or not module:
        return None, "the layout record names no module"
    raw_sections = record.get("sections", {})
    raw_symbols = record.get("symbols", [])
    raw_sections = {} if raw_sections is None else raw_sections
    raw_symbols = [] if raw_symbols is None else raw_symbols
    if not isinstance(raw_sections, Mapping) or not isinstance(raw_symbols, list):
        return None, "the layout record's sections/symbols are malformed"
    sections = parse_sections(raw_sections)
    symbols = []
    for entry in raw_symbols:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        address = _parse_address(entry.get("address"))
        if address:
            kind = entry.get("type")
            kind = kind if isinstance(kind, str) else None
            symbols.append({"name": entry["name"], "type": kind, "address": address})
    symbols.sort(key=lambda symbol: (symbol["address"], symbol["name"]))
    if not sections and not symbols:
        why = record.get("reason")
        return None, f"the layout holds no addresses of {module}" + (f": {why}" if why else "")
    boot_id = record.get("boot_id")
    kernel = record.get("kernel")
    return {
        "module": module,
        "boot_id": boot_id if isinstance(boot_id, str) else None,
        "kernel": kernel if isinstance(kernel, str) else None,
        "sections": sections,
        "symbols": symbols,
        "readable": True,
        "reason": record.get("reason") if isinstance(record.get("reason"), str) else None,
    }, None


# ---------------------------------------------------------------------------------------------------------
# The oopses in the kernel log
# ---------------------------------------------------------------------------------------------------------

_AT_ADDRESS = r"(?: virtual address)? ([0-9a-fA-Fx]+)"
# Headlines, each opening one oops: (kind, pattern with the address as group 1 when there is one).
_HEADLINES = (
    # x86 since 5.1
    ("page_fault", re.compile(r"BUG: unable to handle page fault for address: ([0-9a-fA-F]+)")),
    # x86 before 5.1
    ("page_fault", re.compile(r"BUG: unable to handle kernel paging request at" + _AT_ADDRESS)),
    # since 5.1
    ("null_pointer", re.compile(r"BUG: kernel NULL pointer dereference, address: ([0-9a-fA-Fx]+)")),
    # before 5.1
    ("null_pointer", re.compile(r"BUG: unable to handle kernel NULL pointer dereference at" + _AT_ADDRESS)),
    # "general protection fault: 0000 [#1] SMP", "general protection fault, probably for non-canonical
    # address 0xdead...: 0000 [#1] ...": the CPU reports no faulting address for a #GP
    ("general_protection", re.compile(r"general protection fault\b()")),
    ("bug", re.compile(r"kernel BUG at \S+()")),
)
_OOPS_RE = re.compile(r"\bOops: (?:Oops: )?([0-9a-fA-F]+) \[#(\d+)\]")
_OOPS_NUMBER_RE = re.compile(r"\[#(\d+)\]")
_PF_ACCESS_RE = re.compile(
    r"#PF: (supervisor|user) (read access|write access|instruction fetch) in (kernel|user) mode"
)
_PF_ERROR_RE = re.compile(r"#PF: error_code\((0x[0-9a-fA-F]+)\)(?: - (.*\S))?")
# "CPU: 0 PID: 1633 Comm: python3 Tainted: G OE ..." (6.12: "CPU: 0 UID: 0 PID: 1633 Comm: ...")
_TASK_RE = re.compile(r"\bCPU: (\d+) (?:UID: (\d+) )?PID: (\d+) Comm: (.*?)(?: (?:Tainted:|Not tainted)|$)")
# "RIP: 0010:vfs_read+0x8a/0x2f0", "RIP: 0010:chardev_read+0x5/0x30 [chardev]",
# "RIP: 0010:[<ffffffff811f1c5a>]  [<ffffffff811f1c5a>] vfs_read+0x8a/0x160" (old)
_RIP_SYMBOL_RE = re.compile(
    r"\bRIP: [0-9a-fA-F]{4}:.*?([A-Za-z_.$][\w.$]*)\+0x([0-9a-fA-F]+)/0x([0-9a-fA-F]+)(?: \[(\S+?)\])?"
)
# "RIP: 0010:0xffffffffc0a65010": no symbol covers RIP, e.g. the kernel jumped into freed module code
_RIP_RAW_RE = re.compile(r"\bRIP: [0-9a-fA-F]{4}:(?:0x)?([0-9a-fA-F]{8,16})\b")
_LAST_UNLOADED_RE = re.compile(r"\[last unloaded: ([\w-]+)")
_END_TRACE = "---[ end trace"

_ACCESS_WORDS = {"read access": "read", "write access": "write", "instruction fetch": "instruction fetch"}


def _new_fault(kind: str, headline: str, address: int | None) -> dict[str, Any]:
    return {
        "index": 0,
        "role": "primary",
        "kind": kind,
        "headline": headline,
        "address": address,
        "access": None,
        "access_mode": None,
        "error_code": None,
        "error_text": None,
        "oops_number": None,
        "rip": None,
        "rip_function": None,
        "rip_offset": None,
        "rip_size": None,
        "rip_module": None,
        "rip_address": None,
        "cpu": None,
        "uid": None,
        "pid": None,
        "comm": None,
        "last_unloaded": None,
        "fixing_recursive_fault": False,
    }


def _headline(line: str) -> tuple[str, int | None] | None:
    for kind, pattern in _HEADLINES:
        found = pattern.search(line)
        if found:
            return kind, _parse_address(found.group(1)) if found.group(1) else None
    return None


def _fill(fault: dict[str, Any], line: str) -> None:
    """Record what one line of an open oops says, first occurrence wins (the RIP repeats after the trace)."""
    if fault["access"] is None:
        found = _PF_ACCESS_RE.search(line)
        if found:
            fault["access"] = _ACCESS_WORDS[found.group(2)]
            fault["access_mode"] = found.group(3)
            return
    found = _PF_ERROR_RE.search(line)
    if found:
        if fault["error_code"] is None:
            fault["error_code"] = int(found.group(1), 16)
            fault["error_text"] = found.group(2)
        return
    found = _OOPS_RE.search(line)
    if found:
        if fault["oops_number"] is None:
            fault["oops_number"] = int(found.group(2))
        if fault["error_code"] is None and fault["kind"] in ("page_fault", "null_pointer"):
            fault["error_code"] = int(found.group(1), 16)
        return
    if fault["pid"] is None:
        found = _TASK_RE.search(line)
        if found:
            fault["cpu"] = int(found.group(1))
            fault["uid"] = int(found.group(2)) if found.group(2) is not None else None
            fault["pid"] = int(found.group(3))
            fault["comm"] = found.group(4).strip() or None
            return
    if fault["rip"] is None and "RIP: " in line:
        found = _RIP_SYMBOL_RE.search(line)
        raw = _RIP_RAW_RE.search(line)
        if found:
            fault["rip"] = line[line.index("RIP: ") + 5 :].strip()
            fault["rip_function"] = found.group(1)
            fault["rip_offset"] = int(found.group(2), 16)
            fault["rip_size"] = int(found.group(3), 16)
            fault["rip_module"] = found.group(4)
        elif raw:
            fault["rip"] = line[line.index("RIP: ") + 5 :].strip()
            fault["rip_address"] = int(raw.group(1), 16)
        return
    if fault["last_unloaded"] is None:
        found = _LAST_UNLOADED_RE.search(line)
        if found:
            fault["last_unloaded"] = found.group(1)


def _finish(fault: dict[str, Any]) -> None:
    # Before 5.1 there is no "#PF:" line: the page-fault error code on the "Oops:" line says the access
    # (x86 bits: 1 write, 2 user mode, 4 instruction fetch).
    if (
        fault["access"] is None
        and fault["error_code"] is not None
        and fault["kind"] in ("page_fault", "null_pointer")
    ):
        code = fault["error_code"]
        fault["access"] = "instruction fetch" if code & 0x10 else "write" if code & 0x2 else "read"
        fault["access_mode"] = "user" if code & 0x4 else "kernel"
    # A RIP that is a bare address with a page fault at that very address: the CPU was fetching it.
    if (
        fault["access"] is None
        and fault["rip_address"] is not None
        and fault["rip_address"] == fault["address"]
    ):
        fault["access"] = "instruction fetch"


def parse_faults(lines: Iterable[str] | str) -> list[dict[str, Any]]:
    """Every oops in kernel log lines, in log order.

    Each is a dict: "index" (0-based), "role" ("primary", or "recursive" for a fault the kernel took while
    the task was already dying of an earlier one: "Fixing recursive fault" follows it, or an earlier oops
    had the same pid), "kind" ("page_fault", "null_pointer", "general_protection", "bug", "oops"),
    "headline" (the line), "address" (int, None when the kernel prints none, as for a general protection
    fault), "access" ("read", "write", "instruction fetch" or None), "access_mode" ("kernel"/"user"),
    "error_code" (int), "error_text" ("not-present page"), "oops_number" (the N of "[#N]"), "rip" (the
    text after "RIP: "), "rip_function", "rip_offset", "rip_size", "rip_module" (from "func+0x8a/0x2f0
    [mod]"), "rip_address" (int, only for a raw "RIP: 0010:0xffffffffc0a65010": no symbol covered the
    instruction, e.g. freed module code), "cpu", "uid" (6.12+), "pid", "comm", "last_unloaded" (from
    "Modules linked in: ... [last unloaded: chardev]") and "fixing_recursive_fault" (bool).
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    faults: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    closed = False
    for raw in lines:
        line = strip_log_prefix(raw.rstrip("\r\n"))
        headline = _headline(line)
        if (
            headline is None
            and _OOPS_RE.search(line)
            and (current is None or closed or current["oops_number"])
        ):
            # an "Oops:" line with no headline before it (an oops of a kind not listed above)
            headline = ("oops", None)
        if headline is not None:
            current = _new_fault(headline[0], line.strip(), headline[1])
            if headline[0] == "general_protection":
                number = _OOPS_NUMBER_RE.search(line)
                current["oops_number"] = int(number.group(1)) if number else None
            faults.append(current)
            closed = False
            if headline[0] != "oops":
                continue
        if current is None:
            continue
        if RECURSIVE_FAULT_MARKER in line:
            current["fixing_recursive_fault"] = True
            continue
        if closed:
            continue
        if _END_TRACE in line:
            closed = True
            continue
        _fill(current, line)

    seen_pids = set()
    for index, fault in enumerate(faults):
        _finish(fault)
        fault["index"] = index
        recursive = fault["fixing_recursive_fault"] or (
            fault["pid"] is not None and fault["pid"] in seen_pids
        )
        fault["role"] = "recursive" if recursive else "primary"
        if fault["pid"] is not None:
            seen_pids.add(fault["pid"])
    return faults


# ---------------------------------------------------------------------------------------------------------
# BTF: the kernel's type information (linux/include/uapi/linux/btf.h)
# ---------------------------------------------------------------------------------------------------------

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1

KIND_NAMES = (
    "UNKN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE", "CONST",
    "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG", "ENUM64",
)  # fmt: skip
(
    KIND_UNKN, KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF,
    KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC,
    KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64,
) = range(20)  # fmt: skip

# The bytes that follow each kind's 12-byte struct btf_type: a fixed part, and a part per vlen entry.
#   INT: u32 encoding | ARRAY: struct btf_array {type, index_type, nelems} | STRUCT, UNION: btf_member
#   {name_off, type, offset} | ENUM: btf_enum {name_off, s32 val} | FUNC_PROTO: btf_param {name_off, type}
#   VAR: btf_var {u32 linkage} | DATASEC: btf_var_secinfo {type, offset, size} | DECL_TAG: btf_decl_tag
#   {s32 component_idx} | ENUM64: btf_enum64 {name_off, val_lo32, val_hi32}; all others: nothing.
_FIXED_EXTRA = (0, 4, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 4, 0, 0)
_PER_VLEN = (0, 0, 0, 0, 12, 12, 8, 0, 0, 0, 0, 0, 0, 8, 0, 12, 0, 0, 0, 12)

_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
_QUALIFIER_WORDS = {KIND_CONST: "const", KIND_VOLATILE: "volatile", KIND_RESTRICT: "restrict"}
_MAX_DEPTH = 64


class BtfError(ValueError):
    """The bytes are not BTF this reader understands."""


class Btf:
    """A read-only view of raw BTF, as in /sys/kernel/btf/vmlinux (either byte order).

    One pass at construction records where each type starts; names and members are decoded on demand.
    """

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        if len(data) < 24:
            raise BtfError(f"not BTF: {len(data)} bytes, shorter than the 24-byte header")
        if data[:2] == b"\x9f\xeb":
            order = "<"
        elif data[:2] == b"\xeb\x9f":
            order = ">"
        else:
            raise BtfError(
                f"not BTF: it starts with the bytes {data[0]:02x} {data[1]:02x}, "
                f"not the magic 0x{BTF_MAGIC:04x} (9f eb little-endian, eb 9f big-endian)"
            )
        _magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "HBBIIIII", data, 0
        )
        if version != BTF_VERSION:
            raise BtfError(f"unsupported BTF version {version} (this reader knows version {BTF_VERSION})")
        self.flags = flags
        self.byte_order = "little" if order == "<" else "big"
        self._data = data
        self._u32 = struct.Struct(order + "I")
        self._3u32 = struct.Struct(order + "III")
        self._2u32 = struct.Struct(order + "II")
        types_start = hdr_len + type_off
        types_end = types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if types_end > len(data) or self._str_end > len(data) or hdr_len < 24:
            described = max(types_end, self._str_end)
            raise BtfError(f"truncated BTF: the header describes {described} bytes, there are {len(data)}")

        # Type id 0 is void and has no record; ids count from 1 in file order.
        offsets = array("L", [0])
        kinds = bytearray(1)
        fixed, per_vlen, info_of = _FIXED_EXTRA, _PER_VLEN, self._u32.unpack_from
        pos = types_start
        while pos < types_end:
            if pos + 12 > types_end:
                raise BtfError(f"truncated BTF type record at byte {pos}")
            info = info_of(data, pos + 4)[0]
            kind = (info >> 24) & 0x1F
            if kind >= len(fixed) or kind == KIND_UNKN:
                raise BtfError(
                    f"unknown BTF kind {kind} at type id {len(offsets)}: "
                    f"this reader knows kinds 1..{len(fixed) - 1} (up to ENUM64)"
                )
            offsets.append(pos)
            kinds.append(kind)
            pos += 12 + fixed[kind] + per_vlen[kind] * (info & 0xFFFF)
        if pos != types_end:
            raise BtfError("the BTF type section does not end on a type record boundary")
        self._offsets = offsets
        self._kinds = bytes(kinds)
        self._by_name: dict[str, list[int]] | None = None
        self._pointer_size: int | None = None

    @classmethod
    def from_file(cls, path: str = BTF_PATH) -> Btf:
        """Read raw BTF from a file (default: the running kernel's)."""
        with open(path, "rb") as handle:
            return cls(handle.read())

    # --- raw access -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of type ids, void (0) included."""
        return len(self._offsets)

    def kind(self, type_id: int) -> int:
        return self._kinds[type_id]

    def _header(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of a type id (void: all zeros)."""
        if type_id == 0:
            return 0, KIND_UNKN, 0, 0, 0
        name_off, info, size_or_type = self._3u32.unpack_from(self._data, self._offsets[type_id])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def string(self, offset: int) -> str:
        start = self._str_start + offset
        if offset == 0 or start >= self._str_end:
            return ""
        end = self._data.find(b"\0", start, self._str_end)
        return self._data[start : end if end >= 0 else self._str_end].decode("utf-8", errors="replace")

    def name(self, type_id: int) -> str:
        return self.string(self._header(type_id)[0])

    def _members(self, type_id: int) -> list[tuple[int, int, int]]:
        """STRUCT/UNION members, FUNC_PROTO params ((name_off, type, 0)), as (name_off, type, offset)."""
        _name_off, kind, vlen, _kflag, _size = self._header(type_id)
        base = self._offsets[type_id] + 12
        if kind in (KIND_STRUCT, KIND_UNION):
            return [self._3u32.unpack_from(self._data, base + 12 * i) for i in range(vlen)]
        if kind == KIND_FUNC_PROTO:
            return [(*self._2u32.unpack_from(self._data, base + 8 * i), 0) for i in range(vlen)]
        return []

    # --- lookups --------------------------------------------------------------------------------------

    def _index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            by_name: dict[str, list[int]] = {}
            data, start, unpack, offsets = self._data, self._str_start, self._u32.unpack_from, self._offsets
            wanted = (KIND_STRUCT, KIND_UNION, KIND_INT)
            for type_id, kind in enumerate(self._kinds):
                if kind in wanted:
                    name_off = unpack(data, offsets[type_id])[0]
                    if name_off:
                        end = data.find(b"\0", start + name_off)
                        by_name.setdefault(
                            data[start + name_off : end].decode("utf-8", "replace"), []
                        ).append(type_id)
            self._by_name = by_name
        return self._by_name

    def find_struct(self, name: str) -> int | None:
        """The type id of ``struct name`` (or ``union name``), preferring a definition with members."""
        for prefix in ("struct ", "union "):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        best = None
        for type_id in self._index().get(name.strip(), ()):
            if self._kinds[type_id] in (KIND_STRUCT, KIND_UNION):
                if self._header(type_id)[2]:
                    return type_id
                best = type_id if best is None else best
        return best

    @property
    def pointer_size(self) -> int:
        """sizeof(void *): the size of "long unsigned int" (8 on x86_64, 8 if absent)."""
        if self._pointer_size is None:
            size = 8
            for type_id in self._index().get("long unsigned int", ()):
                if self._kinds[type_id] == KIND_INT:
                    size = self._header(type_id)[4]
                    break
            self._pointer_size = size
        return self._pointer_size

    def resolve(self, type_id: int) -> int:
        """The type behind typedefs, const, volatile, restrict and type tags."""
        for _depth in range(_MAX_DEPTH):
            if type_id == 0 or self._kinds[type_id] not in _MODIFIERS:
                return type_id
            type_id = self._header(type_id)[4]
        raise BtfError(f"type modifier chain too long (a loop?) at type id {type_id}")

    def sizeof(self, type_id: int) -> int | None:
        """The size in bytes of a type; None for void, functions and forward declarations."""
        type_id = self.resolve(type_id)
        kind = self._kinds[type_id]
        if kind == KIND_PTR:
            return self.pointer_size
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._3u32.unpack_from(self._data, self._offsets[type_id] + 12)
            elem_size = self.sizeof(elem)
            return None if elem_size is None else elem_size * nelems
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT, KIND_DATASEC):
            return self._header(type_id)[4]
        return None

    def struct_size(self, name: str) -> int | None:
        type_id = self.find_struct(name)
        return None if type_id is None else self.sizeof(type_id)

    # --- C-ish type names -----------------------------------------------------------------------------

    def type_name(self, type_id: int) -> str:
        """A C declaration without a name: "ssize_t (*)(struct file *, char *, size_t, loff_t *)"."""
        return self._declare(type_id, "", 0)

    def _declare(self, type_id: int, declarator: str, depth: int) -> str:
        if depth > _MAX_DEPTH:
            return "?"
        name_off, kind, _vlen, kflag, ref = self._header(type_id)
        name = self.string(name_off)

        def plain(base: str) -> str:
            return base + (" " + declarator if declarator else "")

        if type_id == 0:
            return plain("void")
        if kind in (KIND_INT, KIND_FLOAT, KIND_TYPEDEF, KIND_FUNC):
            return plain(name or "?")
        if kind in (KIND_STRUCT, KIND_UNION, KIND_FWD, KIND_ENUM, KIND_ENUM64):
            if kind in (KIND_ENUM, KIND_ENUM64):
                word = "enum"
            elif kind == KIND_UNION or (kind == KIND_FWD and kflag):
                word = "union"
            else:
                word = "struct"
            return plain(f"{word} {name}" if name else word + " {...}")
        if kind == KIND_TYPE_TAG:  # __user, __rcu ... are annotations, not C types (pahole omits them too)
            return self._declare(ref, declarator, depth + 1)
        if kind in _QUALIFIER_WORDS:
            word = _QUALIFIER_WORDS[kind]
            if self._kinds[self.resolve_tags(ref)] == KIND_PTR:  # char *const p
                return self._declare(ref, word + (" " + declarator if declarator else ""), depth + 1)
            return word + " " + self._declare(ref, declarator, depth + 1)
        if kind == KIND_PTR:
            return self._declare(ref, "*" + declarator, depth + 1)
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._3u32.unpack_from(self._data, self._offsets[type_id] + 12)
            inner = f"({declarator})" if declarator.startswith("*") else declarator
            return self._declare(elem, f"{inner}[{nelems}]", depth + 1)
        if kind == KIND_FUNC_PROTO:
            params = []
            for param_name_off, param_type, _offset in self._members(type_id):
                if param_type == 0 and param_name_off == 0:
                    params.append("...")
                else:
                    params.append(self._declare(param_type, "", depth + 1))
            inner = f"({declarator})" if declarator.startswith("*") else declarator
            return self._declare(ref, f"{inner}({', '.join(params) or 'void'})", depth + 1)
        return plain(f"{KIND_NAMES[kind].lower()} {name}" if name else KIND_NAMES[kind].lower())

    def resolve_tags(self, type_id: int) -> int:
        """The type behind type tags only."""
        for _depth in range(_MAX_DEPTH):
            if type_id == 0 or self._kinds[type_id] != KIND_TYPE_TAG:
                return type_id
            type_id = self._header(type_id)[4]
        return type_id

    # --- members --------------------------------------------------------------------------------------

    def member_at(self, struct_name: str, offset: int) -> dict[str, Any] | None:
        """The member of ``struct struct_name`` that holds byte ``offset``, or None (padding, past the end,
        no such struct).

        Descends into nested structs and unions, anonymous or not, to the innermost member; in a union the
        first member (in declaration order) that covers the byte wins. Returns {"struct", "member" (dotted
        path of the named levels: "f_path.dentry"; anonymous levels add nothing), "offset" (bytes from the
        start of the outer struct), "size" (bytes; for a bitfield the bytes its bits touch), "type" (C-ish),
        "bitfield" (bool), "bit_offset", "bit_size" (bits, from the outer struct's start), "pointer" (bool:
        the member is a pointer, function pointers included)}.
        """
        type_id = self.find_struct(struct_name)
        if type_id is None or offset < 0:
            return None
        found = self._member_at(type_id, offset, [], 0, 0)
        if found is None:
            return None
        path, member_type, bit_offset, bit_size, is_bitfield = found
        start = bit_offset // 8
        pointer = self._kinds[self.resolve(member_type)] == KIND_PTR
        return {
            "struct": self.name(type_id),
            "member": ".".join(path),
            "offset": start,
            "size": (bit_offset + bit_size + 7) // 8 - start,
            "type": self.type_name(member_type),
            "bitfield": is_bitfield,
            "bit_offset": bit_offset,
            "bit_size": bit_size,
            "pointer": pointer,
        }

    def _member_at(
        self, type_id: int, offset: int, path: list[str], base_bits: int, depth: int
    ) -> tuple[list[str], int, int, int, bool] | None:
        if depth > _MAX_DEPTH:
            return None
        kflag = self._header(type_id)[3]
        for name_off, member_type, raw_offset in self._members(type_id):
            if kflag:
                bit_offset, bit_size = base_bits + (raw_offset & 0xFFFFFF), raw_offset >> 24
            else:
                bit_offset, bit_size = base_bits + raw_offset, 0
            target = self.resolve(member_type)
            target_kind = self._kinds[target]
            if not bit_size and target_kind == KIND_INT:
                # Old encoding (kind_flag clear): a bitfield is an INT whose bits are fewer than its size.
                encoding = self._u32.unpack_from(self._data, self._offsets[target] + 12)[0]
                nr_bits, int_offset = encoding & 0xFF, (encoding >> 16) & 0xFF
                if nr_bits != 8 * self._header(target)[4] or int_offset:
                    bit_offset, bit_size = bit_offset + int_offset, nr_bits
            is_bitfield = bit_size != 0
            if not is_bitfield:
                size = self.sizeof(member_type)
                if not size:
                    continue  # flexible array, or a member of unknown size: it covers nothing
                bit_size = 8 * size
            if not bit_offset // 8 <= offset < (bit_offset + bit_size + 7) // 8:
                continue
            name = self.string(name_off)
            member_path = [*path, name] if name else path
            if not is_bitfield and target_kind in (KIND_STRUCT, KIND_UNION):
                inner = self._member_at(target, offset, member_path, bit_offset, depth + 1)
                if inner is not None:
                    return inner
                if not name:
                    continue  # padding inside an anonymous struct: another union member may still hold it
            return member_path, member_type, bit_offset, bit_size, is_bitfield
        return None


# ---------------------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------------------

_VERBS = {"read": "read", "write": "wrote", "instruction fetch": "fetched an instruction at"}
_FAULT_WORDS = {
    "page_fault": "page fault",
    "null_pointer": "NULL pointer dereference",
    "general_protection": "general protection fault",
    "bug": "kernel BUG",
    "oops": "oops",
}


def _hex(address: int) -> str:
    return f"0x{address:016x}"


def _locate(address: int, layout: Mapping[str, Any]) -> tuple[str | None, int | None, dict[str, Any] | None]:
    """(section, offset in it, symbol entry) holding ``address`` in the layout; Nones where unknown."""
    sections = sorted((start, name) for name, start in layout["sections"].items())
    section = section_start = section_end = None
    for index, (start, name) in enumerate(sections):
        if start <= address:
            section, section_start = name, start
            later = [other for other, _name in sections[index + 1 :] if other > start]
            section_end = later[0] if later else None
    if section_start is not None:
        limit = section_start + MAX_REACH
        section_end = limit if section_end is None else min(section_end, limit)
        if address >= section_end:
            section = section_start = section_end = None
    if sections and section is None:
        return None, None, None  # outside every section of the module: its symbols cannot hold it either

    symbols = layout["symbols"]
    holder = None
    for index, symbol in enumerate(symbols):
        if symbol["address"] > address:
            break
        if section_start is not None and symbol["address"] < section_start:
            continue  # a symbol of an earlier section
        later = [other["address"] for other in symbols[index + 1 :] if other["address"] > symbol["address"]]
        end = min([symbol["address"] + MAX_REACH] + later[:1] + ([section_end] if section_end else []))
        holder = symbol if address < end else None
    return section, (address - section_start if section_start is not None else None), holder


def explain(
    fault: Mapping[str, Any],
    layout: Mapping[str, Any] | None,
    btf: Btf | None = None,
    symbol_types: Mapping[str, str] | None = None,
    boot_id: str | None = None,
) -> dict[str, Any]:
    """Which of the module's memory a fault touched, as data and as one student-facing sentence.

    ``fault`` is one entry of :func:`parse_faults`, ``layout`` a :func:`capture_layout` record (raw or
    parsed by :func:`parse_layout`), ``btf`` the BTF of the kernel that oopsed, ``symbol_types`` maps the
    module's symbols to struct names (:data:`SYMBOL_TYPES`). Pass ``boot_id`` (of the boot the log comes
    from) to refuse a layout recorded in another boot, whose addresses mean nothing now.

    Returns {"address": "0x..." or None, "module" (the module's name when the address is in its memory,
    else None), "symbol", "offset" (int, from the symbol), "section", "struct", "member", "member_type",
    "text"}. Whatever is unknown is None.
    """
    result: dict[str, Any] = {
        "address": None,
        "module": None,
        "symbol": None,
        "offset": None,
        "section": None,
        "struct": None,
        "member": None,
        "member_type": None,
        "text": "",
    }
    address = fault.get("address")
    access = fault.get("access")
    rip_address = fault.get("rip_address")
    if address is None and rip_address is not None:
        address, access = rip_address, "instruction fetch"
    elif rip_address is not None and rip_address == address:
        access = "instruction fetch"
    verb = _VERBS.get(access or "", "accessed")
    parsed, why = parse_layout(layout) if layout is not None else (None, "no layout was recorded")
    named = layout.get("module") if isinstance(layout, Mapping) else None
    module = parsed["module"] if parsed else named if isinstance(named, str) and named else "the module"

    if address is None:
        what = _FAULT_WORDS.get(fault.get("kind") or "", "fault")
        result["text"] = (
            f"the kernel log gives no faulting address for this {what}, "
            f"so it cannot be placed in {module}'s memory"
        )
        return result
    result["address"] = _hex(address)
    touched = f"the kernel {verb} {_hex(address)}"
    if parsed is None:
        result["text"] = f"{touched}, but {module}'s addresses are unknown ({why})"
        return result
    if boot_id and parsed["boot_id"] and boot_id.strip() != parsed["boot_id"]:
        result["text"] = (
            f"{touched}, but {module}'s layout was recorded in another boot, so it cannot place it"
        )
        return result

    section, section_offset, symbol = _locate(address, parsed)
    if section is None and symbol is None:
        result["text"] = f"{touched}, which is not in {module}'s memory: this fault happened elsewhere"
        return result

    result["module"] = module
    result["section"] = section
    if fault.get("last_unloaded") == module:
        freed = f"in memory freed when {module} was unloaded"
    else:
        freed = f"in memory that belonged to {module} when its layout was recorded"
    if symbol is None:
        result["text"] = (
            f"{touched}, 0x{section_offset:x} bytes into {module}'s {section} "
            f"before any of its symbols, {freed}"
        )
        return result

    offset = address - symbol["address"]
    result["symbol"] = symbol["name"]
    result["offset"] = offset
    where = [f"{symbol['name']}+0x{offset:x}"]
    struct_name = (symbol_types or {}).get(symbol["name"])
    if struct_name:
        result["struct"] = struct_name
        owner = f"the module's struct {struct_name}"
        size = btf.struct_size(struct_name) if btf is not None else None
        member = btf.member_at(struct_name, offset) if btf is not None else None
        if member is not None:
            result["member"] = member["member"]
            result["member_type"] = member["type"]
            word = "pointer" if member["pointer"] else "member"
            where.append(f"the .{member['member']} {word} of {owner}")
        elif size is not None and offset >= size:
            where.append(f"past the end of {owner} ({size} bytes)")
        elif size is not None:
            where.append(f"padding between the members of {owner}")
        else:
            where.append(f"inside {owner}")
    elif section:
        where[0] += f" in {module}'s {section}"
    result["text"] = f"the kernel {verb} " + ", ".join([*where, freed])
    return result


def explain_log(
    lines: Iterable[str] | str,
    layout: Any,
    boot_id: str | None = None,
    btf_path: str = BTF_PATH,
) -> dict[str, Any]:
    """Every oops in the kernel log explained against the module's recorded layout and the kernel's BTF.

    Returns {"faults": [parse_faults() entry + explain() keys ("text", "symbol", ...)], "primary": the
    first fault's explanation or None, "btf": None when read, else why it could not be}.
    """
    try:
        btf: Btf | None = Btf.from_file(btf_path)
        btf_problem = None
    except (OSError, BtfError) as exc:
        btf, btf_problem = None, f"cannot read {btf_path}: {exc}"
    faults = []
    for fault in parse_faults(lines):
        explained = explain(fault, layout, btf, SYMBOL_TYPES, boot_id)
        faults.append({**fault, **explained, "fault_address": explained["address"]})
    return {"faults": faults, "primary": faults[0] if faults else None, "btf": btf_problem}
