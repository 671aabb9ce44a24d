"""Helpers shared by the scenarios' testinfra tests (on PYTHONPATH through the molecule base config)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path


def fleet_dir() -> Path:
    """The scenario's lab_state_dir (.config/molecule/config.yml; the classroom's CHARDEV_LAB_STATE_DIR):
    the fleet's keys and VMs, results/, status/."""
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
    command = "python3 -c " + shlex.quote(code) + "".join(" " + shlex.quote(a) for a in args)
    result = host.run(command)
    assert result.rc == 0, f"{command}\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def phase() -> str:
    """The phase the scenario's playbooks wrote into the marker (molecule/crash: converge.yml writes the
    first, side_effect.yml each next one); "" when there is none."""
    marker = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "phase"
    return marker.read_text().strip() if marker.exists() else ""


@dataclasses.dataclass
class Run:
    """One ansible-playbook run, its JSON report (ansible.builtin.json callback) and its output."""

    command: list[str]
    rc: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            return {}

    def results(self, host: str) -> list[tuple[str, dict]]:
        """(task name, result) for every task the host ran, in order."""
        return [
            (task["task"]["name"], task["hosts"][host])
            for play in self.report.get("plays", [])
            for task in play["tasks"]
            if host in task["hosts"]
        ]

    def stats(self, host: str) -> dict:
        return self.report.get("stats", {}).get(host, {})

    def failure(self, host: str) -> str:
        """The messages of the host's failed or unreachable tasks."""
        return "\n".join(
            f"{name}: {result.get('msg', '')}"
            for name, result in self.results(host)
            if result.get("failed") or result.get("unreachable")
        )

    def messages(self, host: str) -> str:
        """Every message the host's tasks gave (debug output included)."""
        return "\n".join(str(result.get("msg", "")) for _name, result in self.results(host))

    def task(self, host: str, name: str) -> dict:
        """The result of the task called name (a role's tasks are reported as "role : name")."""
        return next(
            (result for task, result in self.results(host) if name in (task, task.split(" : ", 1)[-1])), {}
        )

    def __str__(self) -> str:
        """Evidence for an assertion message: the tasks, how they ended, and the output's tail."""
        lines = [f"$ {' '.join(self.command)}", f"rc={self.rc}"]
        for host, stats in self.report.get("stats", {}).items():
            lines.append(f"{host}: {stats}")
            for name, result in self.results(host):
                status = next(
                    (s for s in ("unreachable", "failed", "skipped", "changed") if result.get(s)), "ok"
                )
                msg = str(result.get("msg", "")).strip()
                lines.append(f"  [{status}] {name}" + (f": {msg[:4000]}" if msg and status != "ok" else ""))
        if not self.report:
            lines.append("stdout (tail):\n" + "\n".join(self.stdout.splitlines()[-40:]))
        lines.append("stderr (tail):\n" + "\n".join(self.stderr.splitlines()[-20:]))
        return "\n".join(lines)


def inventory_args() -> list[str]:
    """molecule's inventory, and the classroom roster's when the scenario has one (CHARDEV_LAB_ROSTER):
    the inventories molecule itself gives ansible-playbook."""
    args = ["-i", str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)]
    if os.environ.get("CHARDEV_LAB_ROSTER"):
        args += ["-i", str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "inventory/roster.yml")]
    return args


def run_playbook(host, playbook: Path, *args: str, timeout: int = 1200) -> Run:
    """ansible-playbook against molecule's inventory (and its group_vars/host_vars), with the ansible.cfg
    molecule generated, limited to the host under test (host None: every host), reported by the json
    callback. molecule exports ANSIBLE_FORCE_COLOR, which beats NOCOLOR: both are turned off for
    parseable output."""
    limit = ["-l", host.backend.get_hostname()] if host is not None else []
    command = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        *inventory_args(),
        *limit,
        str(playbook),
        *args,
    ]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    cwd = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )
    return Run(command, done.returncode, done.stdout, done.stderr)
