"""What the tests of the collection share, one of each:

* FakeHost, a lab host's files under a directory (/proc and its tasks, /sys, /run/chardev-lab, the
  records), with a fake kill and a FakeClock; StatusHost, the same as the lab_status probe reads it;
* FakeKernel, a kernel log that grows as a test says, with a SysRq trigger and a FakeClock;
* FakeClock, time that moves only when slept; FakeStatvfs, a filesystem's free space; stat_line();
* run_module(), a module's main() run as Ansible runs it; failing_writes(); capture_warnings(); option();
* run_playbook() and task_name(): ansible-playbook on the collection, and its json report's task names;
* the kernel output captured per kernel (tests/unit/data/kernels/<suite>/, described in its README.md)
  and the other data files; the environment for Ansible's own tools run on this collection.

Imported by its collection name, ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes, in each of
ansible-test's contexts (modules, module_utils, controller) and by plain pytest: so it needs nothing but
the standard library, pytest, ansible.module_utils and the collection's target-side code.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    HUNG_TASK_TIMEOUT_FILE,
    SYSRQ_TRIGGER_FILE,
    kernel_diagnostics,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    RUN_DIR,
    TAINT_BASELINE_PATH,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System
from ansible_collections.chardev_lab.lab.plugins.modules import lab_status_probe

# --- where things are ----------------------------------------------------------------------------------

#: The collection's root: the checkout, or the copy of it that ansible-test runs in.
COLLECTION_ROOT = Path(__file__).resolve().parents[3]
#: The directory that holds ansible_collections/chardev_lab/lab, as this module was imported from it
#: (.collections/ of the checkout in the virtualenv, ansible-test's tree under ansible-test).
COLLECTIONS_PATH = Path(os.path.abspath(__file__)).parents[6]
DATA = COLLECTION_ROOT / "tests" / "unit" / "data"
ROSTERS = DATA / "rosters"


# --- captured output -----------------------------------------------------------------------------------


def data_text(*parts: str) -> str:
    """A data file of tests/unit/data, as text."""
    return DATA.joinpath(*parts).read_text()


def kernel_text(suite: str, name: str) -> str:
    """What a kernel printed (or a file of /proc or /sys held): tests/unit/data/kernels/<suite>/<name>."""
    return data_text("kernels", suite, name)


def kernel_lines(suite: str, name: str) -> list[str]:
    """The same, one string per line, without the line ends: how a kernel log reader returns it."""
    return kernel_text(suite, name).splitlines()


def kmsg_records(suite: str, name: str) -> list[str]:
    """/dev/kmsg records, as its read()s return them: "prio,seq,usec,flags;text\\n", each followed by
    its dictionary lines (a line that starts with a space belongs to the record before it)."""
    records: list[str] = []
    for line in kernel_text(suite, name).splitlines(keepends=True):
        if line.startswith(" ") and records:
            records[-1] += line
        else:
            records.append(line)
    return records


def kernel_fields(suite: str, name: str) -> dict[str, str]:
    """A directory of one-value files (/sys/module/chardev/sections/*) kept as "name value" lines."""
    return dict(line.split(None, 1) for line in kernel_lines(suite, name))


# --- the facts of a lab host ---------------------------------------------------------------------------

BOOT_ID = "0b7c6c3e-1f0e-4d43-9a0e-5b2b1c7e8f90"
OTHER_BOOT_ID = "7d0f3a1e-2b4c-4e5d-8f60-718293a4b5c6"
# Bits of /proc/sys/kernel/tainted: P (proprietary module), D (oops), O (out-of-tree), E (unsigned).
TAINT_P = 1
TAINT_D = 1 << 7
TAINT_O = 1 << 12
TAINT_E = 1 << 13
#: chardev loaded and no oops: out of tree, unsigned (12288).
TAINT_LAB = TAINT_O | TAINT_E
#: After the lab's crash (12416).
TAINT_AFTER_CRASH = TAINT_D | TAINT_O | TAINT_E
# Flags of /proc/<pid>/stat (field 9).
PF_EXITING = 0x4
PF_KTHREAD = 0x00200000
USER_FLAGS = 0x00400100
KTHREAD_FLAGS = 0x00208040


def stat_line(
    pid: int, comm: str, state: str, starttime: int = 4242, ppid: int = 1, flags: int = USER_FLAGS
) -> str:
    """A /proc/<pid>/stat line with every field up to 22 (starttime) and a few after it."""
    return (
        f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 {starttime} 0 0\n"
    )


class FakeClock:
    """A clock that moves only when slept: every sleep is recorded, none is waited."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeStatvfs:
    """What os.statvfs returns for a filesystem with this many bytes free (to anyone, in 4 KiB blocks)."""

    def __init__(self, free: int) -> None:
        self.f_frsize = 4096
        self.f_bavail = free // 4096


class FakeSystem(System):
    """The one fake of a module's system: its files below root (a tmp_path tree, FakeHost's root) and its
    commands scripted. runner(argv, check_rc=..., **kwargs) -> (rc, stdout, stderr) answers each command
    (None: any command fails the test); commands records them all, warnings what the module warned."""

    def __init__(self, root: Path | str, runner: Any = None) -> None:
        super().__init__(module=None, root=str(root))
        self.runner = runner
        self.commands: list[list[str]] = []
        self.warnings: list[str] = []

    def run(self, argv: Sequence[str], check_rc: bool = False, **kwargs: Any) -> tuple[int, str, str]:
        self.commands.append(list(argv))
        assert self.runner is not None, f"unexpected command: {list(argv)}"
        return self.runner(list(argv), check_rc=check_rc, **kwargs)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class FakeHost:
    """A lab host's files below root: /proc, /sys, /run/chardev-lab (or run_dir), /var/lib/chardev-lab.

    It starts empty (booted() gives a running kernel's basic files); each method writes one fact. kill()
    stands in for os.kill: it records the signal, and a task in killable goes away; clock() and sleep()
    for the time (a FakeClock).
    """

    def __init__(self, root: Path, run_dir: str = RUN_DIR) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.run = self.path(run_dir)
        self.run.mkdir(parents=True, exist_ok=True)
        self.kills: list[tuple[int, int]] = []
        self.killable: set[int] = set()
        self.starttimes: dict[int, int] = {}
        self.time = FakeClock()

    @classmethod
    def booted(cls, root: Path, release: str = "6.1.0-56-amd64", **kwargs: Any) -> FakeHost:
        """A host whose kernel is running: its boot id and release, the hung-task detector at 120 s (not
        panicking), kallsyms without chardev."""
        host = cls(root, **kwargs)
        host.boot_id(BOOT_ID)
        host.release(release)
        host.write("/proc/sys/kernel/hung_task_timeout_secs", "120\n")
        host.write("/proc/sys/kernel/hung_task_panic", "0\n")
        host.write("/proc/kallsyms", "ffffffff81000000 T _stext\n")
        return host

    def system(self, runner: Any = None) -> FakeSystem:
        """The FakeSystem of this host, for a module's run() or main()."""
        return FakeSystem(self.root, runner)

    # files

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self, path: str, text: str) -> Path:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def write_bytes(self, path: str, data: bytes) -> Path:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def remove(self, path: str) -> None:
        self.path(path).unlink()

    def read_json(self, path: str) -> Any:
        return json.loads(self.path(path).read_text())

    # the kernel

    def boot_id(self, value: str) -> None:
        self.write("/proc/sys/kernel/random/boot_id", f"{value}\n")

    def release(self, value: str) -> None:
        self.write("/proc/sys/kernel/osrelease", f"{value}\n")

    def tainted(self, value: int) -> None:
        self.write("/proc/sys/kernel/tainted", f"{value}\n")

    def oops_count(self, value: int) -> None:
        self.write("/sys/kernel/oops_count", f"{value}\n")

    # tasks

    def task(
        self,
        pid: int,
        comm: str,
        state: str,
        wchan: str = "0",
        cmdline: bytes | Sequence[str] = b"",
        stack: str | None = "",
        starttime: int | None = None,
        ppid: int = 1,
        flags: int = USER_FLAGS,
        fds: Mapping[int, str] | None = None,
    ) -> Path:
        """A task in /proc: stat, wchan, cmdline (bytes, or the arguments), stack (None: no such file, a
        kernel without CONFIG_STACKTRACE) and fd/ links; its start time defaults to 30000 + pid."""
        starttime = 30000 + pid if starttime is None else starttime
        self.starttimes[pid] = starttime
        proc = self.path(f"/proc/{pid}")
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "stat").write_text(stat_line(pid, comm, state, starttime, ppid, flags))
        (proc / "wchan").write_text(wchan)
        if not isinstance(cmdline, bytes):
            cmdline = b"".join(arg.encode() + b"\0" for arg in cmdline)
        (proc / "cmdline").write_bytes(cmdline)
        if stack is not None:
            (proc / "stack").write_text(stack)
        if fds is not None:
            (proc / "fd").mkdir()
            for fd, target in fds.items():
                (proc / "fd" / str(fd)).symlink_to(target)
        return proc

    def shell(self, pid: int = 1633, state: str = "S", holds: bool = True, **kwargs: Any) -> Path:
        """The student's Python shell, holding /dev/chardev open as fd 3 (or not)."""
        fds = {0: "/dev/pts/1", 1: "/dev/pts/1", 2: "/dev/pts/1"}
        if holds:
            fds[3] = "/dev/chardev"
        kwargs.setdefault("cmdline", ["python3"])
        kwargs.setdefault("wchan", "do_select" if state == "S" else "0")
        kwargs.setdefault("starttime", 4242)
        return self.task(pid, "python3", state, ppid=1600, fds=fds, **kwargs)

    def real_task(self, pid: int) -> None:
        """A real process seen through the fake /proc (a symbolic link to /proc/<pid>)."""
        self.path(f"/proc/{pid}").symlink_to(f"/proc/{pid}")

    def entry(self, pid: int) -> str:
        """ "PID STARTTIME" of a task, as chardev_victim.py writes it into its PID files."""
        return f"{pid} {self.starttimes[pid]}\n"

    def pidfile(self, name: str, text: str) -> str:
        path = self.run / name
        path.write_text(text)
        return str(path)

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))
        if pid in self.killable:
            shutil.rmtree(self.path(f"/proc/{pid}"))

    @property
    def now(self) -> float:
        return self.time.now

    def clock(self) -> float:
        return self.time.clock()

    def sleep(self, seconds: float) -> None:
        self.time.sleep(seconds)

    # the chardev module

    def module_loaded(self, loaded: bool = True) -> None:
        module = self.path("/sys/module/chardev")
        if loaded:
            module.mkdir(parents=True, exist_ok=True)
        elif module.exists():
            module.rmdir()

    def module(
        self,
        variant: str | None = "crash",
        sections: Mapping[str, str] | None = None,
        kallsyms: str | None = None,
    ) -> None:
        """chardev loaded (its version names the variant; None: no version file), with its sections and
        the kallsyms lines (those of the bookworm sample unless given)."""
        self.module_loaded()
        if variant is not None:
            self.write("/sys/module/chardev/version", f"1.0-{variant}\n")
        if sections is None:
            sections = kernel_fields("bookworm", "sys-module-chardev-sections.txt")
        self.path("/sys/module/chardev/sections").mkdir(exist_ok=True)
        for name, address in sections.items():
            self.write(f"/sys/module/chardev/sections/{name}", address + "\n")
        self.write(
            "/proc/kallsyms", kernel_text("bookworm", "proc-kallsyms.txt") if kallsyms is None else kallsyms
        )

    def rmmod(self) -> None:
        shutil.rmtree(self.path("/sys/module/chardev"))
        self.write("/proc/kallsyms", "ffffffff81000000 T _stext\n")

    # the lab's records

    def record(self, data: Any) -> None:
        """The crash record (crashed.json): JSON of data, or data as it is when it is text."""
        (self.run / "crashed.json").write_text(data if isinstance(data, str) else json.dumps(data))

    def read_record(self) -> dict[str, Any]:
        return json.loads((self.run / "crashed.json").read_text())

    def baseline(self, data: Any) -> Path:
        return self.write(TAINT_BASELINE_PATH, data if isinstance(data, str) else json.dumps(data))

    @property
    def baseline_path(self) -> Path:
        return self.path(TAINT_BASELINE_PATH)


class StatusHost(FakeHost):
    """A host as the lab_status probe reads it: the kernel, chardev and its device node (lstat() is the
    probe's fake lstat), the tasks, the crash record; probe() runs the probe on it."""

    #: The crash record of a 6.1 read crash.
    RECORD: Mapping[str, Any] = {
        "mode": "read",
        "crashed_at": "2026-11-26T09:12:03+00:00",
        "kernel_release": "6.1.0-56-amd64",
        "as_expected": True,
        "tasks": [{"role": "victim", "pid": 1576}],
    }
    PROBE_DEFAULTS: Mapping[str, Any] = {
        "device": "/dev/chardev",
        "crash_run_dir": "/run/chardev-lab",
        "stuck_comm_prefixes": ["chardev", "python", "cat"],
        "max_tasks": 50,
    }

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.nodes: dict[str, Any] = {}
        #: The kernel log the probe reads (the real one is never read by these tests).
        self.log: list[str] = []

    @classmethod
    def everyday(cls, root: Path) -> StatusHost:
        """Every host has ordinary tasks that are never stuck: init sleeping, a kworker in D (I/O), a
        python in S (the probe itself, an Ansible module), and cat running."""
        host = cls(root)
        host.task(1, "systemd", "S", "do_epoll_wait")
        host.task(57, "kworker/0:1", "D", "blk_mq_get_tag")
        host.task(900, "python3", "S", "do_select")
        host.task(901, "cat", "R")
        return host

    def make_ready(self) -> StatusHost:
        """The lab is ready: 6.1 with the safe variant loaded (taint O E, no oops) and its node."""
        self.kernel("6.1.0-56-amd64", tainted=TAINT_LAB, oops_count=0)
        self.chardev("safe")
        self.node(240)
        return self

    def make_crashed(self) -> StatusHost:
        """After the 6.1 splice crash: the victim in X, the reader in D, the crash record."""
        self.kernel("6.1.0-56-amd64", tainted=TAINT_AFTER_CRASH, oops_count=2)
        self.task(1576, "python3", "X")
        self.task(1577, "chardev-reader", "D", "pipe_read")
        self.record()
        return self

    def kernel(
        self, release: str, tainted: int = 0, oops_count: int | None = None, headers: bool = True
    ) -> None:
        self.release(release)
        self.tainted(tainted)
        if oops_count is not None:
            self.oops_count(oops_count)
        if headers:
            self.path(f"/lib/modules/{release}/build").mkdir(parents=True)

    def chardev(self, variant: str, major: int = 240) -> None:
        """chardev loaded: its version, and its major in /proc/devices (bookworm's)."""
        self.write("/sys/module/chardev/version", f"1.0-{variant}\n")
        devices = kernel_text("bookworm", "proc-devices.txt")
        self.write("/proc/devices", devices.replace("240 chardev", f"{major} chardev"))

    def node(self, major: int, minor: int = 0, path: str = "/dev/chardev", kind: int = stat.S_IFCHR) -> None:
        self.nodes[str(self.path(path))] = SimpleNamespace(
            st_mode=kind | 0o644, st_rdev=os.makedev(major, minor)
        )

    def lstat(self, path: str) -> Any:
        if path in self.nodes:
            return self.nodes[path]
        raise FileNotFoundError(path)

    def record(self, data: Any = None) -> None:
        super().record(dict(self.RECORD) if data is None else data)

    def probe(self, **params: Any) -> dict[str, Any]:
        return lab_status_probe.probe(
            self.system(), {**self.PROBE_DEFAULTS, **params}, self.lstat, lambda: self.log
        )


class FakeKernel:
    """A kernel log that grows as the test says, the kernel's files under root, a fake clock and sleep.

    scheduled: {n: lines} appends lines at the n-th read of the log (1-based). A "w\\n" written to the
    fake proc/sysrq-trigger appends sysrq_dump to the log dump_lag reads later. tainted: the value of
    proc/sys/kernel/tainted (None: no such file); by default a crashed kernel's (taint D).
    """

    def __init__(
        self,
        root: Path,
        log: list[str] | None = None,
        scheduled: dict[int, list[str]] | None = None,
        sysrq_dump: list[str] | None = None,
        dump_lag: int = 0,
        timeout: str | None = "10\n",
        tainted: int | None = TAINT_AFTER_CRASH,
    ) -> None:
        self.root = root
        self.log = list(log or [])
        self.scheduled = dict(scheduled or {})
        self.sysrq_dump = sysrq_dump
        self.dump_lag = dump_lag
        self.reads = 0
        self.time = FakeClock()
        (root / "proc/sys/kernel").mkdir(parents=True)
        if timeout is not None:
            (root / HUNG_TASK_TIMEOUT_FILE).write_text(timeout)
        if tainted is not None:
            (root / "proc/sys/kernel/tainted").write_text(f"{tainted}\n")
        self.trigger = root / SYSRQ_TRIGGER_FILE
        self.trigger.write_text("")  # a plain file stands for /proc/sysrq-trigger

    @property
    def now(self) -> float:
        return self.time.now

    @property
    def sleeps(self) -> list[float]:
        return self.time.sleeps

    def clock(self) -> float:
        return self.time.clock()

    def sleep(self, seconds: float) -> None:
        self.time.sleep(seconds)

    def read_lines(self) -> list[str]:
        self.reads += 1
        for at in sorted(self.scheduled):
            if at <= self.reads:
                self.log.extend(self.scheduled.pop(at))
        if self.sysrq_dump is not None and self.trigger.is_file() and self.trigger.read_text() == "w\n":
            if self.dump_lag:
                self.dump_lag -= 1
            else:
                self.log.extend(self.sysrq_dump)
                self.sysrq_dump = None
        return list(self.log)

    def diagnose(self, stuck: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """kernel_diagnostics() of these stuck tasks on this kernel (waiting 30 s unless told)."""
        kwargs.setdefault("wait", 30.0)
        return kernel_diagnostics(
            stuck, self.read_lines, root=str(self.root), clock=self.clock, sleep=self.sleep, **kwargs
        )


# --- running a module ----------------------------------------------------------------------------------


def run_module(
    module: ModuleType,
    args: Mapping[str, Any],
    capsys: pytest.CaptureFixture[str],
    system: System | None = None,
) -> dict[str, Any]:
    """The module's main() with these arguments, as Ansible runs it (on system, a FakeSystem, when
    given): its result, and an exit status that agrees with it (1 when failed, else 0)."""
    with patch_module_args(dict(args)), pytest.raises(SystemExit) as exited:
        if system is None:
            module.main()
        else:
            module.main(system)
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert exited.value.code == (1 if result.get("failed") else 0), result
    return result


def failing_writes(monkeypatch: pytest.MonkeyPatch, module: ModuleType, part: str, error: int) -> None:
    """From now on, module's open() of a path holding part for writing fails with errno error (a full
    filesystem, a directory that may not be written: root passes permission checks, so they are faked)."""
    real_open = open

    def failing_open(name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if part in str(name) and any(flag in mode for flag in "wax+"):
            raise OSError(error, os.strerror(error), str(name))
        return real_open(name, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", failing_open, raising=False)


def capture_warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What modules pass to AnsibleModule.warn() from now on (its own record is process-wide state whose
    format changes between versions)."""
    warned: list[str] = []
    monkeypatch.setattr(AnsibleModule, "warn", lambda _self, warning: warned.append(warning))
    return warned


def option(cmd: Sequence[str], name: str) -> list[str]:
    """The values of every `name VALUE` in a command line (QEMU's options)."""
    return [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == name]


# --- Ansible's own tools on this collection ------------------------------------------------------------


def ansible_command(tool: str) -> str:
    """An Ansible command-line tool: the virtualenv's, or the one on PATH (ansible-test's)."""
    beside = Path(sys.executable).with_name(tool)
    found = str(beside) if beside.exists() else shutil.which(tool)
    assert found, f"{tool} not found"
    return found


def ansible_env(clean: bool = False, **extra: str) -> dict[str, str]:
    """The environment for an Ansible tool run on this collection: the project's ansible.cfg and the
    collection where it is (ansible.cfg's .collections/ is not in ansible-test's copy), no colours.
    clean: without the caller's other ANSIBLE_* and CHARDEV_LAB_* variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not (clean and name.startswith(("ANSIBLE_", "CHARDEV_LAB_")))
    }
    env.update(
        ANSIBLE_CONFIG=str(COLLECTION_ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    env.update(extra)
    return env


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that imports the collection by its name, as the tests do."""
    paths = [str(COLLECTIONS_PATH), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def run_playbook(
    inventory: Path,
    playbook: Path,
    *args: str,
    extra_vars: Mapping[str, Any],
    cwd: Path,
    timeout: int = 300,
    env: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """ansible-playbook on this collection (ansible_env, plus env) with the json callback: its exit
    status, its report and its whole output."""
    proc = subprocess.run(
        [
            ansible_command("ansible-playbook"),
            "-i",
            str(inventory),
            str(playbook),
            "-e",
            json.dumps(extra_vars),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", **(env or {})),
        cwd=cwd,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr


def task_name(task: Mapping[str, Any]) -> str:
    """A task's name in the json callback's report, without the "chardev_lab.lab.<role> : " before a
    role's tasks."""
    return str(task["task"]["name"]).split(" : ", 1)[-1]
