# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's taint (/proc/sys/kernel/tainted): its flags, letters and meaning, and the oops count.

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

from typing import Any

# Bit -> (letter, meaning), as in the kernel's taint_flags table (kernel/panic.c) and
# Documentation/admin-guide/tainted-kernels.rst. Bit 0 prints "P" when set and "G" when clear.
TAINT_FLAGS: dict[int, tuple[str, str]] = {
    0: ("P", "proprietary module was loaded"),
    1: ("F", "module was force loaded"),
    2: ("S", "kernel running on an out of specification system"),
    3: ("R", "module was force unloaded"),
    4: ("M", "processor reported a Machine Check Exception"),
    5: ("B", "bad page referenced or some unexpected page flags"),
    6: ("U", "taint requested by userspace application"),
    7: ("D", "kernel died recently, i.e. there was an OOPS or BUG"),
    8: ("A", "an ACPI table was overridden by user"),
    9: ("W", "kernel issued warning"),
    10: ("C", "staging driver was loaded"),
    11: ("I", "workaround for bug in platform firmware applied"),
    12: ("O", "externally-built (out-of-tree) module was loaded"),
    13: ("E", "unsigned module was loaded"),
    14: ("L", "soft lockup occurred"),
    15: ("K", "kernel has been live patched"),
    16: ("X", "auxiliary taint, defined for and used by distros"),
    17: ("T", "kernel was built with the struct randomization plugin"),
    18: ("N", "an in-kernel test has been run"),
    19: ("J", "userspace used a mutating debug operation in fwctl"),
}
TAINT_DIE = 1 << 7


def parse_tainted(text: str) -> int:
    """Parse /proc/sys/kernel/tainted (a decimal integer)."""
    return int(text.strip())


def taint_letters(value: int) -> str:
    """The letters of the set taint bits, lowest bit first, e.g. 12416 -> "DOE". Unknown bits -> "?"."""
    letters = []
    for bit in range(max(value.bit_length(), 1)):
        if value & (1 << bit):
            letters.append(TAINT_FLAGS.get(bit, ("?", ""))[0])
    return "".join(letters)


def decode_taint(value: int) -> list[dict[str, Any]]:
    """Each set taint bit as {bit, value, letter, meaning}."""
    decoded = []
    for bit in range(value.bit_length()):
        if value & (1 << bit):
            letter, meaning = TAINT_FLAGS.get(bit, ("?", "unknown taint bit"))
            decoded.append({"bit": bit, "value": 1 << bit, "letter": letter, "meaning": meaning})
    return decoded


def parse_oops_count(text: str | None) -> int | None:
    """Parse /sys/kernel/oops_count; None when the file is absent (older kernels) or unreadable."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


#: Where the taint of the kernel before the lab is kept (persistent: a reset reboots a real host).
#: Taint bits loading chardev itself sets (O out-of-tree, E unsigned): never part of a baseline.
TAINT_LAB = (1 << 12) | (1 << 13)
