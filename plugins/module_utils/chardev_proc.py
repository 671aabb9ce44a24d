# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading /proc and /sys of a target: /proc/devices, a task's stat, wchan, stack and cmdline.

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

import dataclasses

from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import PROC_DEVICES


class ProcDevicesError(ValueError):
    """/proc/devices holds a line that is not "<major> <name>" or a section header."""


@dataclasses.dataclass(frozen=True)
class ProcDevices:
    """The two sections of /proc/devices, as (major, name) pairs in file order."""

    char: tuple[tuple[int, str], ...]
    block: tuple[tuple[int, str], ...]

    def char_majors(self, name: str) -> list[int]:
        """The majors registered as a character device under name, in file order (block devices are
        ignored)."""
        return [major for major, entry in self.char if entry == name]


def parse_proc_devices(text: str) -> ProcDevices:
    """Parse /proc/devices. Lines are "<major> <name>"; names may contain '/' (e.g. "/dev/vc/0")."""
    sections: dict[str, list[tuple[int, str]]] = {"char": [], "block": []}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "Character devices:":
            current = "char"
            continue
        if line == "Block devices:":
            current = "block"
            continue
        if current is None:
            raise ProcDevicesError(f"unexpected line before any section in {PROC_DEVICES}: {raw!r}")
        number, _sep, name = line.partition(" ")
        if not number.isdigit() or not name.strip():
            raise ProcDevicesError(f"unexpected line in {PROC_DEVICES}: {raw!r}")
        sections[current].append((int(number), name.strip()))
    return ProcDevices(char=tuple(sections["char"]), block=tuple(sections["block"]))
