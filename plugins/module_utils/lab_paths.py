# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the lab's things are on a target (and the suites a local VM can run): the one place that spells
them out. Modules use these constants in their code and their argument_spec defaults; each module's
DOCUMENTATION states the same literal defaults (validate-modules checks that they match).

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
