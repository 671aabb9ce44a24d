# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the lab's things are on a target (and the suites a local VM can run): the one place that spells
them out. Modules use these constants in their code and their argument_spec defaults; each module's
DOCUMENTATION states the same literal defaults (validate-modules checks that they match). And the one
rule for a name that becomes a path component on the control node (path_component_problem).

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

#: The lab's run directory on tmpfs (a reboot clears it): the crash record, PID files, check.json.
RUN_DIR = "/run/chardev-lab"
#: What the lab keeps across reboots.
STATE_DIR = "/var/lib/chardev-lab"
#: The taint of the kernel before the lab's first run of a boot.
TAINT_BASELINE_PATH = f"{STATE_DIR}/taint-before-lab.json"
#: The lesson marker (written when the crash lesson is prepared).
LESSON_MARKER_PATH = f"{STATE_DIR}/lesson.json"
#: The cache of chardev.ko builds, one directory per kernel release.
BUILD_CACHE_DIR = "/var/cache/chardev-lab/builds"
#: Where kernels keep their modules (and headers: <release>/build).
MODULES_DIR = "/lib/modules"
#: Where loaded modules show.
SYSFS_MODULES = "/sys/module"
#: The registered device drivers.
PROC_DEVICES = "/proc/devices"

#: The Debian suites a local VM can run (lab_vm_image's images, the roster's suite names).
SUITES = ("bullseye", "bookworm", "trixie")

#: The longest name that path_component_problem() accepts (a DNS label's limit, and QEMU's -name).
PATH_COMPONENT_MAX = 63
_PATH_COMPONENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def path_component_problem(name: object) -> str | None:
    """Why ``name`` cannot be used as one component of a path on the control node, or None when it can.

    Host names become file and directory names there (<lab_state_dir>/results/<host>.json, vms/<host>,
    accounts/<host>.json): a name is safe when it is 1 to 63 letters, digits, '.', '_' and '-', does not
    start with '.' or '-' (a hidden file, an option) and holds no '..' (a parent directory)."""
    if not isinstance(name, str) or not name:
        return "it is empty" if name in ("", None) else f"it is not text ({type(name).__name__})"
    bad = sorted(set(name) - _PATH_COMPONENT_CHARS)
    if bad:
        shown = " ".join(repr(char) for char in bad[:5])
        return f"it holds {shown}: only letters, digits, '.', '_' and '-' are allowed"
    if name[0] in ".-":
        return f"it starts with {name[0]!r}"
    if ".." in name:
        return "it holds '..'"
    if len(name) > PATH_COMPONENT_MAX:
        return f"it is {len(name)} characters long, more than {PATH_COMPONENT_MAX}"
    return None
