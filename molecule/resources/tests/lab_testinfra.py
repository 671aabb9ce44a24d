"""Helpers shared by the scenarios' testinfra tests (on PYTHONPATH through the molecule base config)."""

from __future__ import annotations

import os
from pathlib import Path


def fleet_dir() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "fleet"


def evidence(host, *commands: str) -> str:
    """Run read-only commands on the host and return their output, for assertion messages."""
    out = []
    for command in commands:
        result = host.run(command)
        out.append(f"$ {command}\n{result.stdout}{result.stderr}")
    return "\n".join(out)


def on_target(host, code: str, *args: str) -> dict:
    """Run a Python snippet on the target (as root) and return the JSON it prints."""
    import json
    import shlex

    command = "python3 -c " + shlex.quote(code) + "".join(" " + shlex.quote(a) for a in args)
    result = host.run(command)
    assert result.rc == 0, f"{command}\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def phase() -> str:
    """'crashed' after converge, 'reset' once the side_effect (playbooks/reset.yml) ran."""
    marker = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "phase"
    return marker.read_text().strip() if marker.exists() else "crashed"


def run_playbook(playbook: str, *args: str, timeout: int = 1200):
    """Run a project playbook against this scenario's instances, as molecule itself would."""
    import subprocess

    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    # molecule exports ANSIBLE_FORCE_COLOR, which beats NOCOLOR: turn both off for parseable output.
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    command = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        str(project / playbook),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
