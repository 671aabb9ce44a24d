# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The crash state of a host: the one place that knows where the lab's run files live (run_files,
pidfiles_for), what the crash record and the taint baseline hold (parse_record, parse_taint_baseline,
taint_baseline_entry), which load of chardev is in the kernel (module_instance, same_instance), and what
they and the kernel mean together (crash_state).

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_fault import parse_sections
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    parse_kernel_log,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    MODES,
    ROLE_READER,
    ROLE_VICTIM,
    gather_tasks,
    task_to_dict,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    TAINT_DIE,
    TAINT_LAB,
    parse_oops_count,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    RUN_DIR,
    SYSFS_MODULES,
    TAINT_BASELINE_PATH,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import (
    ModuleFailure,
    System,
    describe_os_error,
)

# The role's files on the target live in one run directory, normally on tmpfs (a reboot clears them):
#   crashed.json     the record: written with state "unloading" BEFORE the rmmod (so an interrupted run
#                    is known), completed with state "crashed" and the evidence after it;
#   victim.pid, reader.pid   "PID STARTTIME" of the victim and (splice mode) its pipe reader;
#   ready, trigger, victim.log, chardev_victim.py   the victim program's files.
# The record is the lab's own word; the kernel's word wins over it: taint flag D, an oops count above
# zero or a recursive fault in the kernel log since boot mean "crashed", whatever the record says, so a
# lost record never leads to a second crash of a damaged kernel.
# Every record names the boot it was written in (boot_id) and counts for that boot only: a run directory
# that is not a tmpfs keeps it across a reboot, and a crash of an earlier boot must not mark the host
# crashed for ever. A record without a boot id (written before records had one, or broken) counts on a
# tmpfs, where it can only be of this boot, and nowhere else.
# The mark also names the load of chardev the victim opened (module_instance): after the rmmod the victim
# holds a file whose code is freed, and signalling it runs that code (its release) and crashes the kernel.
# A loaded chardev is no proof that the victim's module is still there (it may have been loaded again
# since), so a victim is signalled only while the very load it opened is still in the kernel.

RECORD_NAME = "crashed.json"
RECORD_UNLOADING = "unloading"
RECORD_CRASHED = "crashed"

#: What a crash run leaves behind, by phase:
#:   fresh     nothing: the host may be crashed;
#:   leftover  a victim of an interrupted run still holds the device, and the load of chardev it opened
#:             (the mark's, or the layout's before the mark) is still in the kernel: stop it, then fresh;
#:   armed     a live victim whose load of chardev is gone, or not known to be there (a run interrupted
#:             between rmmod and trigger, perhaps with chardev loaded again since): the kernel is intact,
#:             and the next use of the file, or its close when the victim is signalled, crashes it; the
#:             victim is never signalled, and the run goes on from the trigger instead of building and
#:             loading again;
#:   recover   the kernel crashed but the record is not complete (interrupted, failed or lost): gather the
#:             evidence again and complete the record; never crash again;
#:   done      the record is complete: report it.
PHASES = ("fresh", "leftover", "armed", "recover", "done")


def utc_now() -> str:
    """The time now, as the records write it (not datetime.UTC: the target's Python may be 3.9)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def read_json(path: str) -> Any:
    """A JSON file's content, or None when it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: Mapping[str, Any], what: str = "a file of the lab") -> None:
    """Write atomically (a crash or an interrupt never leaves half a record). An OS error (a full
    filesystem, a path that may not be written) raises the ModuleFailure that names what could not be
    written, where, and what to do; the half-written temporary file is removed."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ModuleFailure(describe_os_error(f"writing {what} {path}", exc)) from exc


def run_files(run_dir: str = RUN_DIR) -> dict[str, str]:
    """The crash role's files in its run directory on the target, by name."""
    return {
        "record": os.path.join(run_dir, RECORD_NAME),
        ROLE_VICTIM: os.path.join(run_dir, "victim.pid"),
        ROLE_READER: os.path.join(run_dir, "reader.pid"),
        "ready": os.path.join(run_dir, "ready"),
        "trigger": os.path.join(run_dir, "trigger"),
        "log": os.path.join(run_dir, "victim.log"),
        "program": os.path.join(run_dir, "chardev_victim.py"),
        # Where the crash variant lived (sections, kallsyms), captured before any rmmod: the fault's
        # address is explained against it (chardev_fault.explain).
        "layout": os.path.join(run_dir, "layout.json"),
        # The kernel settings the lesson changed for this boot, with their values before.
        "settings": os.path.join(run_dir, "settings-before.json"),
    }


def pidfiles_for(mode: str, run_dir: str = RUN_DIR) -> dict[str, str]:
    """The pidfile of each watched task: the victim, and in splice mode its pipe reader."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    files = run_files(run_dir)
    roles = (ROLE_VICTIM, ROLE_READER) if mode == "splice" else (ROLE_VICTIM,)
    return {role: files[role] for role in roles}


def parse_record(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The crash record and why it could not be read: (None, None) without one; ({}, why) for a broken one."""
    if text is None:
        return None, None
    try:
        record = json.loads(text)
    except ValueError as exc:
        return {}, f"not JSON ({exc})"
    if not isinstance(record, dict):
        return {}, "not a JSON object"
    return record, None


def read_boot_id(host: System) -> str | None:
    """This boot's id (/proc/sys/kernel/random/boot_id), or None when it cannot be read."""
    return (host.read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None


def module_instance(root: str = "/", module: str = "chardev") -> dict[str, Any] | None:
    """Which load of the module is in the kernel now: {"sysfs_ino", "text"}; None when it is not loaded.

    sysfs_ino: the inode number of /sys/module/<module>, which sysfs (kernfs) gives each new directory
    from a cyclic counter, so a load after an unload gets another one; text: the address of
    its .text section as hex text (None when it reads as zero: not root, or kptr_restrict), a second
    witness (a new load may reuse the freed address, so it is not enough alone).
    """
    host = System(root=root)
    try:
        ino = os.stat(host.path(f"{SYSFS_MODULES}/{module}")).st_ino
    except OSError:
        return None
    text = parse_sections({".text": host.read_text(f"{SYSFS_MODULES}/{module}/sections/.text") or ""})
    return {"sysfs_ino": ino, "text": f"0x{text['.text']:x}" if text else None}


def same_instance(opened: Any, loaded: Mapping[str, Any] | None) -> bool:
    """Whether the load of chardev a victim opened (a recorded module_instance(), or a layout's
    {"text"}) is the one loaded now. Only what both name is compared, and at least one thing must be:
    what cannot be told is not the same (the victim is then never signalled)."""
    if not isinstance(opened, Mapping) or not loaded:
        return False
    keys = [
        key for key in ("sysfs_ino", "text") if opened.get(key) is not None and loaded.get(key) is not None
    ]
    return bool(keys) and all(opened[key] == loaded[key] for key in keys)


def opened_instance(
    record: Mapping[str, Any] | None, layout: Any, boot_id: str | None
) -> dict[str, Any] | None:
    """The load of chardev the victim opened: the one the mark names (written just before the rmmod),
    else, for a run interrupted before its mark, the one whose layout operation=prepare recorded in this
    boot just before the victim started (a mark of an older role names none); None when neither tells."""
    if record and record.get("state") == RECORD_UNLOADING and "module" in record:
        # A mark that found no chardev loaded names none: its victim's module is not known to be there.
        return dict(record["module"]) if isinstance(record["module"], Mapping) else None
    if isinstance(layout, Mapping) and boot_id and layout.get("boot_id") == boot_id:
        text = parse_sections({".text": (layout.get("sections") or {}).get(".text")})
        if text:
            return {"text": f"0x{text['.text']:x}"}
    return None


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")
#: Filesystems whose files a reboot removes.
VOLATILE_FILESYSTEMS = ("tmpfs", "ramfs")


def filesystem_type(path: str, mountinfo: str | None) -> str | None:
    """The type of the filesystem that holds path (an absolute path, which need not exist), from
    /proc/self/mountinfo text: the last mount whose mount point is path or one of its parents (a later
    line mounts over an earlier one); None without mountinfo or a mount that holds it."""
    found = None
    best = -1
    path = os.path.normpath(path)
    for line in (mountinfo or "").splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), fields[4])
        after = line.split(" - ", 1)[1].split()
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and after and len(point) >= best:
            best, found = len(point), after[0]
    return found


def run_dir_volatile(host: System, run_dir: str) -> bool | None:
    """Whether a reboot clears the run directory (a tmpfs, as /run normally is): None when it cannot be
    told (no /proc/self/mountinfo)."""
    fstype = filesystem_type(run_dir, host.read_text("/proc/self/mountinfo"))
    return None if fstype is None else fstype in VOLATILE_FILESYSTEMS


def record_staleness(
    record: Mapping[str, Any] | None, boot_id: str | None, volatile: bool | None
) -> str | None:
    """Why a crash record is of another boot, or None when it counts for this one. A record names its boot;
    one without a boot id (older, or broken) counts where a reboot clears it, or where that is not known
    (the safe side of before)."""
    if record is None:
        return None
    recorded = record.get("boot_id")
    if isinstance(recorded, str) and recorded:
        if boot_id and recorded != boot_id:
            return f"written in another boot ({recorded}; this boot is {boot_id})"
        return None
    if volatile is False:
        return "no boot id, in a run directory that is not a tmpfs (it may be of an earlier boot)"
    return None


def _read_int(root: str, path: str) -> int | None:
    text = System(root=root).read_text(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def parse_taint_baseline(text: str | None) -> dict[str, Any] | None:
    """The recorded taint before the lab: {"boot_id", "tainted", "recorded_at"}; None when absent/broken."""
    record, error = parse_record(text)
    if record is None or error or not isinstance(record.get("tainted"), int):
        return None
    return record


def taint_baseline_entry(tainted: int, boot_id: str | None, module_loaded: bool, now: str) -> dict[str, Any]:
    """What to record as the taint before the lab. chardev's own bits (O, E) are left out when the module
    is already loaded (a student loaded it by hand first): they are the lab's, not the host's."""
    return {
        "boot_id": boot_id,
        "tainted": tainted & ~TAINT_LAB if module_loaded else tainted,
        "recorded_at": now,
    }


def crash_state(
    root: str = "/",
    run_dir: str = RUN_DIR,
    log_lines: Sequence[str] | None = None,
    baseline_path: str = TAINT_BASELINE_PATH,
) -> dict[str, Any]:
    """Everything the lab knows about a host's crash, from the record and from the kernel itself.

    log_lines: the kernel log (None: the recursive-fault line is not looked for). Read-only.
    Returns crashed, reasons, phase (see PHASES), record (+ record_error; None when the record is of
    another boot: stale_record and record_stale then say which and why), run_dir_volatile, the kernel's
    markers (tainted, taint_die, oops_count, recursive_fault, oops), module_loaded, module_instance (the
    load of chardev in the kernel now) and victim_module (the one the victim opened), the watched tasks
    that are still there (leftovers, identity-checked), the sysctls that would turn an oops into a panic,
    lockdown, boot_id, and the taint before the lab (taint_baseline, new_taint: the bits set since).
    """
    host = System(root=root)
    files = run_files(run_dir)
    record, record_error = parse_record(host.read_text(files["record"]))
    tainted = _read_int(root, "/proc/sys/kernel/tainted")
    oops_count = parse_oops_count(host.read_text("/sys/kernel/oops_count"))
    log = parse_kernel_log(list(log_lines or []))
    instance = module_instance(root)
    module_loaded = instance is not None
    boot_id = read_boot_id(host)
    baseline = parse_taint_baseline(host.read_text(baseline_path))
    volatile = run_dir_volatile(host, run_dir)
    # A record of another boot is left where it is (the next mark or record replaces it) and not read:
    # the kernel's own markers judge this boot.
    stale_record, record_stale = None, record_staleness(record, boot_id, volatile)
    if record_stale:
        stale_record, record, record_error = record, None, None

    reasons = []
    if record is not None:
        state = record.get("state", RECORD_CRASHED) if not record_error else "unreadable"
        reasons.append(f"crash record {files['record']} ({state})")
    if tainted is not None and tainted & TAINT_DIE:
        reasons.append("taint flag D (oops)")
    if oops_count:
        reasons.append(f"oops_count {oops_count}")
    if log.oops:
        reasons.append("oops in the kernel log")
    if log.recursive_fault:
        reasons.append("recursive fault in the kernel log")
    kernel_crashed = bool(
        (tainted is not None and tainted & TAINT_DIE) or oops_count or log.recursive_fault or log.oops
    )
    # A record that says "unloading" on an intact kernel is a run interrupted before the trigger; a
    # broken record counts as a crash (the safe side).
    crashed = kernel_crashed or (
        record is not None and (bool(record_error) or record.get("state", RECORD_CRASHED) != RECORD_UNLOADING)
    )

    leftovers = [
        task_to_dict(task)
        for task in gather_tasks(
            {role: host.path(files[role]) for role in (ROLE_VICTIM, ROLE_READER)},
            root,
            kill_test=False,
        )
        if task.state is not None
    ]
    victim_alive = any(
        task["role"] == ROLE_VICTIM and task["state"] not in ("D", "X", "Z") for task in leftovers
    )
    victim_module = opened_instance(record, read_json(host.path(files["layout"])), boot_id)
    if crashed:
        complete = bool(record and not record_error and record.get("state", RECORD_CRASHED) == RECORD_CRASHED)
        phase = "done" if complete else "recover"
    elif victim_alive and same_instance(victim_module, instance):
        phase = "leftover"
    elif victim_alive:
        # The victim's chardev is gone (or cannot be told to be there): closing its file runs freed code.
        phase = "armed"
    else:
        phase = "fresh"

    new_taint = None
    if tainted is not None:
        new_taint = tainted & ~(baseline["tainted"] if baseline else 0)
    return {
        "crashed": crashed,
        "reasons": reasons,
        "phase": phase,
        "record": record,
        "record_error": record_error,
        "record_path": files["record"],
        "stale_record": stale_record,
        "record_stale": record_stale,
        "run_dir_volatile": volatile,
        "files": files,
        "tainted": tainted,
        "taint_die": bool(tainted is not None and tainted & TAINT_DIE),
        "oops_count": oops_count,
        "oops": log.oops,
        "recursive_fault": log.recursive_fault,
        "module_loaded": module_loaded,
        "module_instance": instance,
        "victim_module": victim_module,
        "leftovers": leftovers,
        "panic_on_oops": _read_int(root, "/proc/sys/kernel/panic_on_oops"),
        "oops_limit": _read_int(root, "/proc/sys/kernel/oops_limit"),
        "lockdown": (host.read_text("/sys/kernel/security/lockdown") or "").strip() or None,
        "boot_id": boot_id,
        "taint_baseline": baseline,
        "new_taint": new_taint,
    }
