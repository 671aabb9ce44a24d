"""The example inventories of inventory/examples/ cannot reach a cloud here: check that each names an
installed inventory plugin, that its file name is one that plugin accepts, and that every key it sets is
an option that plugin documents (a misspelt option is otherwise only found against the real cloud).
The static one is loaded for real."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import ansible_command, ansible_env

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "inventory" / "examples"
# The file names each cloud plugin's verify_file() accepts.
PLUGINS = {
    "openstack.yml": ("openstack.cloud.openstack", ("openstack.yml", "openstack.yaml", "clouds.yml")),
    "aws_ec2.yml": ("amazon.aws.aws_ec2", ("aws_ec2.yml", "aws_ec2.yaml")),
}


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    """An Ansible tool of the virtualenv, from the repository root; it must succeed."""
    proc = subprocess.run(
        [ansible_command(tool), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ansible_env(),
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@cache
def plugin_doc(name: str) -> dict[str, Any]:
    return json.loads(run_tool("ansible-doc", "-t", "inventory", "--json", name).stdout)[name]["doc"]


def test_every_example_is_covered() -> None:
    assert {path.name for path in EXAMPLES.glob("*.yml")} == {"static.yml", *PLUGINS}


@pytest.mark.parametrize("file_name", sorted(PLUGINS))
def test_cloud_example_uses_only_documented_options(file_name: str) -> None:
    plugin, suffixes = PLUGINS[file_name]
    config = yaml.safe_load((EXAMPLES / file_name).read_text())
    assert config["plugin"] == plugin
    assert file_name.endswith(suffixes)
    doc = plugin_doc(plugin)
    options = doc["options"]
    assert set(config) - {"plugin"} <= set(options), set(config) - {"plugin"} - set(options)
    keyed_options = set(options["keyed_groups"]["suboptions"])
    for keyed in config.get("keyed_groups", []):
        assert set(keyed) <= keyed_options, keyed
    # What the lab needs from a cloud fleet: hosts in classroom under lab, a user, become, crash opt-in.
    assert {"parent_group": "lab"}.items() <= config["keyed_groups"][0].items()
    assert {"ansible_user", "ansible_become", "chardev_crash_allowed"} <= set(config["compose"])


def test_static_example_loads() -> None:
    def inventory(*args: str) -> str:
        proc = run_tool("ansible-inventory", "-i", str(EXAMPLES / "static.yml"), *args)
        assert "WARNING" not in proc.stderr, proc.stderr
        return proc.stdout

    graph = inventory("--graph")
    assert "@lab:\n  |  |--@classroom:\n" in graph
    listed = json.loads(inventory("--list"))
    hosts = listed["classroom"]["hosts"]
    assert len(hosts) >= 2
    assert listed["lab"]["children"] == ["classroom"]
    hostvars = listed["_meta"]["hostvars"]
    for host in hosts:
        assert {"ansible_user", "ansible_become", "chardev_crash_allowed"} <= set(hostvars[host]), host
        assert isinstance(hostvars[host]["chardev_crash_allowed"], bool)
    allowed = [host for host in hosts if hostvars[host]["chardev_crash_allowed"]]
    assert 0 < len(allowed) < len(hosts)
