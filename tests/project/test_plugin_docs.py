"""Every plugin of the collection documents itself the way ansible-doc needs: DOCUMENTATION, EXAMPLES
and RETURN parse, every option of the argument spec is documented and nothing else (the module's, or
the action plugin's for a module that only documents one), every return key has its description,
returned, type and sample. A stray ": " in a plain YAML scalar is enough to break ansible-doc, and
nothing else would notice. ansible-test sanity checks more of the same; these checks run in seconds."""

from __future__ import annotations

import importlib
import re
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.plugins.action import ActionBase
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import ansible_command, ansible_env

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS = REPO_ROOT / "plugins"
PACKAGE = "ansible_collections.chardev_lab.lab.plugins"
COLLECTION = "chardev_lab.lab"
MODULE_FILES = sorted((PLUGINS / "modules").glob("*.py"))


def strings_only(node: Any, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "notes", "short_description", "requirements"):
                values = value if isinstance(value, list) else [value]
                assert all(isinstance(v, str) for v in values), f"{where}.{key} is not text: {value!r}"
            strings_only(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            strings_only(value, f"{where}[{index}]")


def plugin(kind: str, name: str) -> ModuleType:
    """A plugin of the collection, imported by its package name."""
    return importlib.import_module(f"{PACKAGE}.{kind}.{name}")


class Captured(Exception):
    """Raised by the patched AnsibleModule.__init__ (or ActionBase.validate_argument_spec) with the
    argument spec it was given."""

    def __init__(self, argument_spec: dict[str, Any]) -> None:
        super().__init__("captured")
        self.argument_spec = argument_spec


def argument_spec_of(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The options the module's make_module() declares, read without parsing any module arguments
    (AnsibleModule subclasses included); for a module that only documents an action plugin, the options
    that plugin's run() validates."""

    def capture(self: Any, argument_spec: dict[str, Any], **_: Any) -> None:
        raise Captured(argument_spec)

    module = plugin("modules", name)
    with pytest.raises(Captured) as captured:
        if hasattr(module, "make_module"):
            monkeypatch.setattr(AnsibleModule, "__init__", capture)
            module.make_module()
        else:
            monkeypatch.setattr(ActionBase, "validate_argument_spec", capture)
            task = SimpleNamespace(args={}, check_mode=False, async_val=0, action=name)
            connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/remote"))
            action = plugin("action", name).ActionModule(task, connection, None, None, None, None)
            action.run(task_vars={})
    return captured.value.argument_spec


def test_every_module_is_covered() -> None:
    assert {path.stem for path in MODULE_FILES} >= {
        "chardev_build",
        "chardev_node",
        "chardev_crash_evidence",
        "lab_vm_accel",
        "lab_vm_image",
        "lab_vm_instance",
    }


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.stem)
def test_documentation_parses_and_matches_the_argument_spec(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = plugin("modules", path.stem)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == path.stem
    strings_only(doc, "DOCUMENTATION")
    returns = yaml.safe_load(module.RETURN)
    strings_only(returns, "RETURN")
    for key, spec in returns.items():
        assert {"description", "returned", "type", "sample"} <= set(spec), key
    assert isinstance(yaml.safe_load(module.EXAMPLES), list)
    assert set(doc["options"]) == set(argument_spec_of(path.stem, monkeypatch))


def ansible_doc(*args: str) -> subprocess.CompletedProcess:
    """ansible-doc of the virtualenv on this collection, uncoloured."""
    return subprocess.run(
        [ansible_command("ansible-doc"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ansible_env(),
    )


@cache
def module_docs() -> subprocess.CompletedProcess:
    """ansible-doc of every module at once (one run: each costs a second or two)."""
    return ansible_doc(*(f"{COLLECTION}.{path.stem}" for path in MODULE_FILES))


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.stem)
def test_ansible_doc_renders(path: Path) -> None:
    proc = module_docs()
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    assert f"> MODULE {COLLECTION}.{path.stem} (" in proc.stdout


# Inventory plugins (plugins/inventory): the same checks, against the options the plugin reads.
INVENTORY_PLUGINS = sorted((PLUGINS / "inventory").glob("*.py"))


def test_every_inventory_plugin_is_covered() -> None:
    assert {path.stem for path in INVENTORY_PLUGINS} >= {"chardev_roster"}


@pytest.mark.parametrize("path", INVENTORY_PLUGINS, ids=lambda p: p.stem)
def test_inventory_plugin_documentation_parses(path: Path) -> None:
    inventory = plugin("inventory", path.stem)
    doc = yaml.safe_load(inventory.DOCUMENTATION)
    assert doc["name"] == path.stem
    assert f"{COLLECTION}.{path.stem}" == inventory.InventoryModule.NAME
    strings_only(doc, "DOCUMENTATION")
    assert doc["options"]["plugin"]["choices"] == [f"{COLLECTION}.{path.stem}"]
    assert doc["options"]["plugin"]["required"] is True
    source = path.read_text()
    for option in doc["options"]:
        if option != "plugin":
            assert f'get_option("{option}")' in source, f"{option} is documented but never read"
    assert isinstance(yaml.safe_load(inventory.EXAMPLES), dict)


def test_ansible_doc_renders_inventory_plugins() -> None:
    names = sorted(f"{COLLECTION}.{path.stem}" for path in INVENTORY_PLUGINS)
    proc = ansible_doc("-t", "inventory", *names)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    for name in names:
        assert f"> INVENTORY {name} (" in proc.stdout
    # The constructed fragment is merged in: compose, groups, keyed_groups, strict.
    for option in ("roster", "first_port", "compose", "keyed_groups", "strict"):
        assert re.search(rf"^[-=] {option} ", proc.stdout, re.MULTILINE), option
