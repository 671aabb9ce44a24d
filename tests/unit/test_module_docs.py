"""Every custom module of every role documents itself the way ansible-doc needs: DOCUMENTATION,
EXAMPLES and RETURN parse, every option of the argument spec is documented and nothing else, every
return key has its description, returned, type and sample. A stray ": " in a plain YAML scalar is
enough to break ansible-doc, and nothing else would notice."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = sorted(REPO_ROOT.glob("roles/*/library"))
MODULE_FILES = sorted(path for library in LIBRARIES for path in library.glob("*.py"))


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


class Captured(Exception):
    """Raised by the patched AnsibleModule.__init__ with the argument spec it was given."""

    def __init__(self, argument_spec: dict[str, Any]) -> None:
        super().__init__("captured")
        self.argument_spec = argument_spec


def argument_spec_of(module: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The options the module's make_module() declares, read without parsing any module arguments
    (AnsibleModule subclasses included)."""

    def capture(self: Any, argument_spec: dict[str, Any], **_: Any) -> None:
        raise Captured(argument_spec)

    monkeypatch.setattr(AnsibleModule, "__init__", capture)
    with pytest.raises(Captured) as captured:
        module.make_module()
    return captured.value.argument_spec


def test_every_role_library_is_covered() -> None:
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
    module = importlib.import_module(path.stem)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == path.stem
    strings_only(doc, "DOCUMENTATION")
    returns = yaml.safe_load(module.RETURN)
    strings_only(returns, "RETURN")
    for key, spec in returns.items():
        assert {"description", "returned", "type", "sample"} <= set(spec), key
    assert isinstance(yaml.safe_load(module.EXAMPLES), list)
    assert set(doc["options"]) == set(argument_spec_of(module, monkeypatch))


def ansible_doc(*args: str) -> subprocess.CompletedProcess:
    """ansible-doc of the virtualenv, uncoloured."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda p: p.parent.name)
def test_ansible_doc_renders(library: Path) -> None:
    names = sorted(path.stem for path in library.glob("*.py"))
    proc = ansible_doc("-M", str(library), *names)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    for name in names:
        assert f"> MODULE {name} (" in proc.stdout


# Inventory plugins (plugins/inventory): the same checks, against the options the plugin reads.
INVENTORY_PLUGIN_DIR = REPO_ROOT / "plugins" / "inventory"
INVENTORY_PLUGINS = sorted(INVENTORY_PLUGIN_DIR.glob("*.py"))


def test_every_inventory_plugin_is_covered() -> None:
    assert {path.stem for path in INVENTORY_PLUGINS} >= {"chardev_roster"}


@pytest.mark.parametrize("path", INVENTORY_PLUGINS, ids=lambda p: p.stem)
def test_inventory_plugin_documentation_parses(path: Path) -> None:
    if str(INVENTORY_PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(INVENTORY_PLUGIN_DIR))
    plugin = importlib.import_module(path.stem)
    doc = yaml.safe_load(plugin.DOCUMENTATION)
    assert doc["name"] == path.stem == plugin.InventoryModule.NAME
    strings_only(doc, "DOCUMENTATION")
    assert doc["options"]["plugin"]["choices"] == [path.stem]
    assert doc["options"]["plugin"]["required"] is True
    source = path.read_text()
    for option in doc["options"]:
        if option != "plugin":
            assert f'get_option("{option}")' in source, f"{option} is documented but never read"
    assert isinstance(yaml.safe_load(plugin.EXAMPLES), dict)


def test_ansible_doc_renders_inventory_plugins() -> None:
    names = sorted(path.stem for path in INVENTORY_PLUGINS)
    proc = ansible_doc("-t", "inventory", "-M", str(INVENTORY_PLUGIN_DIR), *names)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    for name in names:
        assert f"> INVENTORY {name} (" in proc.stdout
    # The constructed fragment is merged in: compose, groups, keyed_groups, strict.
    for option in ("roster", "first_port", "compose", "keyed_groups", "strict"):
        assert re.search(rf"^[-=] {option} ", proc.stdout, re.MULTILINE), option
