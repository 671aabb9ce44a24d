"""Helpers of the classroom scenario's tests: the roster's students, their test keys, SSH as a student."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lab_testinfra import fleet_dir


def project() -> Path:
    return Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def scenario() -> Path:
    return Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])


def _plain(value):
    """ansible-inventory --list marks the roster's strings unsafe ({"__ansible_unsafe": "..."})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def roster_vars(name: str) -> dict:
    """A student's host variables as the roster gives them (what molecule's own inventory lacks)."""
    return roster_inventory()["_meta"]["hostvars"][name]


def roster_inventory() -> dict:
    """The inventory the roster alone gives (ansible-inventory over inventory/roster.yml)."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-inventory")),
            "-i",
            str(project() / "inventory/roster.yml"),
            "--list",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=project(),
        env={**os.environ, "ANSIBLE_CONFIG": str(project() / "ansible.cfg")},
    )
    assert done.returncode == 0, done.stderr
    return _plain(json.loads(done.stdout))


def student_key(name: str) -> Path:
    """A private test key (molecule/classroom/keys/), copied with mode 0600 as ssh requires."""
    copy = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "student-keys" / name
    if not copy.exists():
        copy.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(scenario() / "keys" / name, copy)
        copy.chmod(0o600)
    return copy


def ssh_options(key: str) -> list[str]:
    """ssh with one key only, host-key checking on against the fleet's known_hosts, never prompting."""
    return [
        "-i",
        str(student_key(key)),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={fleet_dir() / 'known_hosts'}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=60",
    ]


def run_ssh(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def ssh_as(
    key: str, user: str, port: int, *command: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """ssh to a local VM as user with one key."""
    return run_ssh(["ssh", "-p", str(port), *ssh_options(key), *extra, f"{user}@127.0.0.1", *command])
