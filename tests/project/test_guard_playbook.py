"""The chardev guard refusing this machine for real: ansible-playbook with the project's ansible.cfg,
the inventory `localhost ansible_connection=local`, and the chardev role.

Kept safe even if the guard were broken: the role's sources point to an empty directory (a build
could not even start), the build directory is a temporary one that must stay absent, the crash
variant only goes through the chardev role (which builds and loads, and never unloads a module in
use) and in --check mode. The chardev_crash role is not run here: it alone would crash this kernel.
The ssh-like cases (same boot id over ssh, containers and chroots on another machine) are in
tests/unit/plugins/modules/test_chardev_guard.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import run_playbook, task_name

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE_TASKS = REPO_ROOT / "roles" / "chardev" / "tasks"
REFUSAL = "The chardev guard refuses this host"
GUARD_TASK = "Refuse the control node, a container, a chroot or an unsafe host name, read on the target"
REMOVED_TASK = "Refuse chardev_allow_control_node, which no longer exists"
OPT_IN_TASK = "Refuse the crash variant on a host that did not opt in to the crash"
FORGED_FACTS_TASK = "Refuse a host whose facts name the lab's variables"
# What a student with root makes their machine answer: a module result whose facts opt the host in
# (the playbook's library/, standing in for any module the doctored host runs).
FORGED_FACTS_MODULE = """#!/usr/bin/python
import json
print(json.dumps({"changed": False, "ansible_facts": {"chardev_crash_allowed": True}}))
"""


def tasks_of(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text()))


# Every task of the role after the guard's include, and every task that builds: none may start.
AFTER_GUARD = [
    task["name"]
    for task in tasks_of(ROLE_TASKS / "main.yml")
    if task.get("ansible.builtin.include_tasks") != "guard.yml"
] + [task["name"].split("{{")[0].strip() for task in tasks_of(ROLE_TASKS / "build.yml")]


class Lab:
    """A temporary inventory, playbook directory and build directory for one run."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.build_dir = tmp_path / "build"  # chardev_build_dir: must never be created
        self.no_sources = tmp_path / "no-sources"  # chardev_source_dir: nothing to build from
        self.no_sources.mkdir()
        self.inventory = tmp_path / "inventory.ini"
        self.inventory.write_text(
            f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        )

    def playbook(self, tasks: list[dict[str, Any]]) -> Path:
        path = self.tmp / "playbook.yml"
        play = {
            "name": "Try the chardev role on the control node",
            "hosts": "localhost",
            "gather_facts": False,
        }
        path.write_text(yaml.safe_dump([{**play, "tasks": tasks}], sort_keys=False))
        return path

    def run(
        self, tasks: list[dict[str, Any]], *extra: str, env: dict[str, str] | None = None, **extra_vars: Any
    ) -> tuple[int, dict[str, Any], str]:
        extra_vars = {
            "chardev_state": "present",
            "chardev_build_dir": str(self.build_dir),
            "chardev_source_dir": str(self.no_sources),
            **extra_vars,
        }
        # The project's ansible.cfg, which finds the collection.
        return run_playbook(
            self.inventory,
            self.playbook(tasks),
            *extra,
            extra_vars=extra_vars,
            cwd=self.tmp,
            timeout=120,
            env=env,
        )


def tasks_run(report: dict[str, Any]) -> list[str]:
    return [task_name(task) for play in report["plays"] for task in play["tasks"]]


def failure(report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The one task that failed on localhost, and its result."""
    failed = [
        (task_name(task), task["hosts"]["localhost"])
        for play in report["plays"]
        for task in play["tasks"]
        if task["hosts"].get("localhost", {}).get("failed")
    ]
    assert len(failed) == 1, failed
    return failed[0]


def assert_nothing_built(lab: Lab, rc: int, report: dict[str, Any], output: str) -> None:
    assert rc != 0
    assert report["stats"]["localhost"]["failures"] == 1
    assert not lab.build_dir.exists()
    for name in AFTER_GUARD:
        assert name not in output, f"{name!r} ran after the guard"


ROLE = "chardev_lab.lab.chardev"
CHARDEV_ROLE = [{"name": "Include the chardev role", "ansible.builtin.include_role": {"name": ROLE}}]


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def test_the_chardev_role_refuses_the_control_node(lab: Lab) -> None:
    """A real run (not --check) of the safe variant stops at the guard."""
    rc, report, output = lab.run(CHARDEV_ROLE)
    name, result = failure(report)
    assert name == GUARD_TASK
    assert result["msg"].startswith(REFUSAL)
    assert "ansible_connection is local" in result["msg"]
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert f"boot id {boot_id} on both the target and the control node" in result["msg"]
    assert result["boot_id"] == result["controller_boot_id"] == boot_id
    assert REMOVED_TASK in tasks_run(report)  # the removed variable was checked first, and was not set
    assert_nothing_built(lab, rc, report, output)


def test_the_crash_variant_is_refused_even_with_allow_container(lab: Lab) -> None:
    rc, report, output = lab.run(
        CHARDEV_ROLE,
        "--check",
        chardev_variant="crash",
        chardev_allow_container=True,
        chardev_crash_allowed=True,
    )
    name, result = failure(report)
    assert name == GUARD_TASK
    assert result["msg"].startswith(f"{REFUSAL} for the crash variant")
    assert "the control node's own kernel" in result["msg"]
    assert_nothing_built(lab, rc, report, output)


def test_the_removed_allow_control_node_is_refused(lab: Lab) -> None:
    rc, report, output = lab.run(CHARDEV_ROLE, chardev_allow_control_node=True)
    name, result = failure(report)
    assert name == REMOVED_TASK
    assert "no longer exists" in result["msg"]
    assert "make lab" in result["msg"]
    assert GUARD_TASK not in tasks_run(report)
    assert_nothing_built(lab, rc, report, output)


def test_the_guard_entry_point_refuses_the_control_node(lab: Lab) -> None:
    """The entry point chardev_crash includes (tasks_from: guard), asked for the crash variant."""
    tasks = [
        {
            "name": "Include the chardev guard",
            "ansible.builtin.include_role": {"name": ROLE, "tasks_from": "guard"},
            "vars": {"chardev_variant": "crash"},
        }
    ]
    rc, report, output = lab.run(tasks, "--check", chardev_crash_allowed=True)
    name, result = failure(report)
    assert name == GUARD_TASK
    assert result["msg"].startswith(f"{REFUSAL} for the crash variant")
    assert_nothing_built(lab, rc, report, output)


def test_the_crash_variant_is_refused_on_a_host_that_did_not_opt_in(lab: Lab) -> None:
    """make lesson (-e chardev_variant=crash) on a host without chardev_crash_allowed: refused on the
    control node, before the module runs (and before the build)."""
    rc, report, output = lab.run(CHARDEV_ROLE, "--check", chardev_variant="crash")
    name, result = failure(report)
    assert name == OPT_IN_TASK
    assert "did not opt in to the crash (chardev_crash_allowed is false)" in result["msg"]
    assert GUARD_TASK not in tasks_run(report)
    assert_nothing_built(lab, rc, report, output)


@pytest.mark.parametrize("inject", ["false", "true"])
def test_facts_that_opt_a_host_in_are_refused(lab: Lab, inject: str) -> None:
    """A host whose module result brings facts named after the lab's variables (chardev_crash_allowed):
    refused at the next guard, with the project's inject_facts_as_vars off and with Ansible's default
    (on, where such a fact would outrank the inventory's false)."""
    library = lab.tmp / "library"
    library.mkdir()
    (library / "forged_facts.py").write_text(FORGED_FACTS_MODULE)
    tasks = [
        {"name": "Run a module the host answers with forged facts", "forged_facts": {}},
        {
            "name": "Include the chardev guard",
            "ansible.builtin.include_role": {"name": ROLE, "tasks_from": "guard"},
            "vars": {"chardev_variant": "crash"},
        },
    ]
    rc, report, output = lab.run(
        tasks, "--check", env={"ANSIBLE_INJECT_FACTS_AS_VARS": inject}, chardev_crash_allowed=False
    )
    name, result = failure(report)
    assert name == FORGED_FACTS_TASK, output
    assert "(chardev_crash_allowed)" in result["msg"]
    assert OPT_IN_TASK not in tasks_run(report) and GUARD_TASK not in tasks_run(report)
    assert_nothing_built(lab, rc, report, output)


def test_the_guard_entry_point_validates_its_arguments(lab: Lab) -> None:
    tasks = [
        {
            "name": "Include the chardev guard",
            "ansible.builtin.include_role": {"name": ROLE, "tasks_from": "guard"},
            "vars": {"chardev_variant": "oops"},
        }
    ]
    rc, report, output = lab.run(tasks, "--check")
    name, result = failure(report)
    assert name.startswith("Validating arguments against arg spec 'guard'")
    assert "chardev_variant" in result["msg"] and "oops" in result["msg"]
    assert GUARD_TASK not in tasks_run(report)
    assert_nothing_built(lab, rc, report, output)
