"""The collection as a user outside the repository gets it: `ansible-galaxy collection build`, an install
into an empty collections directory, and a playbook written elsewhere that uses its module and role by
FQCN from the installed copy (not from the checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PLAYBOOK = """\
- name: Use the installed collection
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Probe this machine (read-only)
      chardev_lab.lab.lab_status_probe:
      register: probe

    - name: Show what the probe read
      ansible.builtin.debug:
        msg: "probe: kernel {{ probe.kernel }}, chardev loaded {{ probe.module_loaded }}"

    - name: The chardev role refuses the control node
      block:
        - name: Run the role's guard
          ansible.builtin.include_role:
            name: chardev_lab.lab.chardev
            tasks_from: guard
      rescue:
        - name: Say it was refused
          ansible.builtin.debug:
            msg: "refused: {{ ansible_failed_result.refusals | map(attribute='reason') | join(',') }}"
"""


def outside_env(collections: Path) -> dict[str, str]:
    """No project ansible.cfg, no checkout on any path: only the installed collection and the `ansible`
    package's own collections (community.general, ... on sys.path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHONPATH"))}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{env['PATH']}")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("collection")
    built = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", root, REPO],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = next(root.glob("chardev_lab-lab-*.tar.gz"))
    collections = root / "collections"
    env = outside_env(collections)
    # Ansible Galaxy is out of reach here: the dependencies come with the `ansible` package, so they
    # are not resolved (--no-deps); sys.path is not scanned, so that nothing counts as installed already.
    install = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", collections, tarball],
        capture_output=True,
        text=True,
        check=False,
        env=dict(env, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false"),
        cwd=root,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return tarball, collections


def test_the_tarball_holds_the_collection_and_none_of_the_local_state(installed: tuple[Path, Path]) -> None:
    tarball, _collections = installed
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    # The build turns galaxy.yml into MANIFEST.json.
    for wanted in (
        "MANIFEST.json",
        "meta/runtime.yml",
        "plugins/modules/chardev_build.py",
        "plugins/module_utils/chardev_build_store.py",
        "roles/chardev/tasks/main.yml",
        "files/chardev/chardev.c",
        "playbooks/chardev.yml",
    ):
        assert wanted in names, wanted
    for name in names:
        assert not name.startswith((".venv", ".lab", ".collections", ".git/", "tests/output")), name


def test_a_playbook_outside_the_repository_uses_the_installed_collection(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _tarball, collections = installed
    env = outside_env(collections)
    doc = subprocess.run(
        [BIN / "ansible-doc", "--json", "chardev_lab.lab.lab_status_probe"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    where = json.loads(doc.stdout)["chardev_lab.lab.lab_status_probe"]["doc"]["filename"]
    assert where.startswith(str(collections)), where
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    run = subprocess.run(
        [
            BIN / "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "play.yml",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "probe: kernel " in out, out
    assert "refused: " in out and "control_node" in out, out
    assert str(REPO) not in out.replace(str(collections), ""), out
