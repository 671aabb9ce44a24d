#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run ansible-test (sanity, units) on this checkout: make sanity, make units.

ansible-test wants three things this project does not give it as it is:

* a path ``.../ansible_collections/chardev_lab/lab/``: it reads its real current directory (the link in
  ``.collections/`` does not count), and inside a git checkout it lists the files with git. The files git
  knows (tracked, and untracked ones it does not ignore) are copied to such a path outside the checkout,
  fresh for each run (kept when the run fails).
* the Python versions the collection declares (tests/config.yml: modules on the targets' 3.9 to 3.13,
  the controller's plugins on 3.11 and up): pyenv's interpreters are put on PATH where they exist; a
  version this machine lacks is skipped by ansible-test with a warning.
* pip in the virtual environments it makes (``--venv``): ansible-test downloads pypa's get-pip.py
  bootstrap from a server of its own, which this machine cannot reach. Its documented way out is a copy
  of that script in its cache; the copy here is a stand-in that installs the same pinned pip from the
  package index through the interpreter's own ``ensurepip`` (tools/get_pip_bootstrap.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ("chardev_lab", "lab")
BOOTSTRAP = ROOT / "tools" / "get_pip_bootstrap.py"


def tree_root() -> Path:
    """Where this run's copy goes: a directory of its own outside the checkout, so that runs at the same
    time (make sanity and make units) never share or remove each other's copy."""
    top = Path(tempfile.mkdtemp(prefix="chardev-lab-ansible-test-"))
    return top / "ansible_collections" / COLLECTION[0] / COLLECTION[1]


def known_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def copy_tree(dest: Path) -> None:
    for name in known_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)


def install_bootstrap() -> None:
    """The stand-in get-pip.py, under every name ansible-test may ask for (one per pinned pip)."""
    from ansible_test._internal.python_requirements import get_venv_packages

    class _Python:  # get_venv_packages reads only .version
        version = f"{sys.version_info.major}.{sys.version_info.minor}"

    pip_version = get_venv_packages(_Python())["pip"]  # type: ignore[arg-type]
    cache = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists() or cache.read_bytes() != BOOTSTRAP.read_bytes():
        shutil.copyfile(BOOTSTRAP, cache)


def python_path() -> str:
    versions = sorted((Path.home() / ".pyenv" / "versions").glob("3.*/bin"))
    return os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", ""), *map(str, versions)]
    )


def main(argv: list[str]) -> int:
    dest = tree_root()
    copy_tree(dest)
    install_bootstrap()
    env = dict(os.environ, PATH=python_path())
    command = [str(Path(sys.executable).parent / "ansible-test"), *argv]
    print(f"ansible-test in {dest}: {' '.join(argv)}", flush=True)
    returncode = subprocess.run(command, cwd=dest, env=env, check=False).returncode
    if returncode == 0:
        shutil.rmtree(dest.parents[2])
    else:
        print(f"ansible-test failed; its copy and tests/output stay in {dest}", flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
