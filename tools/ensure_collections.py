#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install the collections of requirements.yml that the virtualenv does not already have.

The "ansible" package from requirements.txt ships community.general, community.crypto and
ansible.posix, so on a machine without access to Ansible Galaxy nothing needs downloading. Only a
collection that is missing, or older than requirements.yml asks, is handed to ansible-galaxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from ansible.module_utils.compat.version import LooseVersion

ROOT = Path(__file__).resolve().parent.parent


def installed_collections(galaxy: str) -> dict[str, str]:
    out = subprocess.run(
        [galaxy, "collection", "list", "--format", "json"], check=True, capture_output=True, text=True
    ).stdout
    found: dict[str, str] = {}
    for collections in json.loads(out).values():
        for name, info in collections.items():
            version = info.get("version", "0")
            if name not in found or LooseVersion(version) > LooseVersion(found[name]):
                found[name] = version
    return found


def satisfied(spec: str, version: str) -> bool:
    """Only the ">=X" and "==X" forms are used in requirements.yml."""
    spec = spec.strip()
    if spec.startswith(">="):
        return LooseVersion(version) >= LooseVersion(spec[2:])
    if spec.startswith("=="):
        return version == spec[2:]
    return spec in ("", "*")


def missing(requirements: list[dict], installed: dict[str, str]) -> list[str]:
    wanted = []
    for req in requirements:
        name, spec = req["name"], str(req.get("version", "*"))
        if name not in installed or not satisfied(spec, installed[name]):
            wanted.append(f"{name}:{spec}")
    return wanted


def main() -> int:
    galaxy = str(Path(sys.executable).parent / "ansible-galaxy")
    requirements = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    todo = missing(requirements, installed_collections(galaxy))
    if not todo:
        print("collections: all of requirements.yml are installed")
        return 0
    print(f"collections: installing {' '.join(todo)} from Ansible Galaxy")
    return subprocess.run([galaxy, "collection", "install", *todo], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
