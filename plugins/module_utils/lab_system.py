# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The system a module works on, as one small object that tests can fake.

Every module has the same shape: ``run(params, check_mode, system) -> dict``, a function of its parameters
and of this interface, and a short ``main()`` that builds the real one (``System(module)``) and turns the
result or the module's error into exit_json or fail_json. Tests pass a fake (tests/unit/plugins/fakes.py:
FakeSystem, whose root is a directory tree and whose commands are scripted).

Runs on the managed node (Python 3.9 and later): stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class ModuleFailure(Exception):
    """What a module's run() raises to fail the task: the message and the result's other keys (main()
    passes them to fail_json)."""

    def __init__(self, msg: str, **fields: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.fields = fields


def os_error_advice(exc: OSError) -> str:
    """What to do about an OS error, by its errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that filesystem (df -h shows it), then run again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "check the owner, mode and attributes of that path and of its directories (ls -ld, lsattr)"
    if exc.errno == errno.EROFS:
        return "that filesystem is mounted read-only: remount it read-write, then run again"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return "check that the path exists and is what it should be (a file or a directory)"
    return "check that path, then run again"


def describe_os_error(what: str, exc: OSError) -> str:
    """'<what> failed: <the OS error> (<path>): <what to do>', a message instead of a traceback."""
    paths = [os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f" ({' -> '.join(paths)})" if paths else ""
    return f"{what} failed: {exc.strerror or exc}{where}: {os_error_advice(exc)}"


@contextlib.contextmanager
def failing_on_os_error(what: str) -> Iterator[None]:
    """An OSError inside becomes the ModuleFailure that says what failed, where, and what to do."""
    try:
        yield
    except OSError as exc:
        raise ModuleFailure(describe_os_error(what, exc)) from exc


class System:
    """The host below ``root`` ("/" on a real system) and the commands run on it.

    module: the AnsibleModule, when there is one: commands go through its run_command (with its
    environment, logging and check_rc handling) and warnings through its warn().
    """

    def __init__(self, module: Any = None, root: str = "/") -> None:
        self.module = module
        self.root = root

    def path(self, path: str) -> str:
        """An absolute target path below root (the path itself when root is "/")."""
        return os.path.join(self.root, path.lstrip("/"))

    def read_text(self, path: str, default: str | None = None) -> str | None:
        """The text of a target file (undecodable bytes replaced), or default when it cannot be read."""
        try:
            with open(self.path(path), "rb") as handle:
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return default

    def exists(self, path: str) -> bool:
        return os.path.exists(self.path(path))

    def isdir(self, path: str) -> bool:
        return os.path.isdir(self.path(path))

    def isfile(self, path: str) -> bool:
        return os.path.isfile(self.path(path))

    def run(self, argv: Sequence[str], check_rc: bool = False, **kwargs: Any) -> tuple[int, str, str]:
        """Run a command: (rc, stdout, stderr). Through the module's run_command when there is a module
        (check_rc=True fails the task there); else subprocess, without a shell."""
        if self.module is not None:
            return self.module.run_command(list(argv), check_rc=check_rc, **kwargs)
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=check_rc)
        return proc.returncode, proc.stdout, proc.stderr

    def which(self, name: str) -> str | None:
        """The full path of a program (the module's get_bin_path, which also looks in the sbin
        directories), or None."""
        if self.module is not None:
            return self.module.get_bin_path(name)
        return shutil.which(name)

    def warn(self, message: str) -> None:
        """A warning for the task's result."""
        if self.module is not None:
            self.module.warn(message)


def execute(
    module: Any, run: Callable[[dict[str, Any], bool, System], dict[str, Any]], system: System | None = None
) -> None:
    """The main() of a module whose run() fails with ModuleFailure: run it on the real system (or on the
    one given, a fake in tests) and exit with its result."""
    try:
        result = run(module.params, module.check_mode, System(module) if system is None else system)
    except ModuleFailure as exc:
        module.fail_json(msg=exc.msg, **exc.fields)
    module.exit_json(**result)
