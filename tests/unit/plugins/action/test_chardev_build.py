"""The chardev_build action plugin (plugins/action/chardev_build.py) on the control node: with a store it
sends the builds a host may need with the module's arguments and keeps the builds the host compiled;
without one it only runs the module. The module itself is a fake here, answering as the host's would."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.chardev_lab.lab.plugins.action.chardev_build import ActionModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import wanted_builds

RELEASE = "6.1.0-56-amd64"
ARGS = {
    "sources": {"chardev.c": "int x;\n", "Makefile": "obj-m := chardev.o\n"},
    "variant": "safe",
    "cache_variants": ["crash"],
    "kernel_release": RELEASE,
}
NAMES = wanted_builds(ARGS, RELEASE)
SAFE, CRASH = sorted(NAMES, key=NAMES.get, reverse=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FakeModule:
    """The chardev_build module as a host runs it: records what it was sent, answers with result (its
    invocation echoes the arguments, as AnsibleModule's does)."""

    def __init__(self, **result: Any) -> None:
        self.result = result
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, module_name: str, module_args: dict[str, Any], task_vars: Any) -> dict[str, Any]:
        self.calls.append((module_name, dict(module_args)))
        return {"invocation": {"module_args": dict(module_args)}, **self.result}


def run(args: dict[str, Any], module: FakeModule, check_mode: bool = False) -> dict[str, Any]:
    task = SimpleNamespace(args=dict(args), check_mode=check_mode, async_val=0, action="chardev_build")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/remote"))
    action = ActionModule(task, connection, None, None, None, None)  # type: ignore[arg-type]
    action._execute_module = module  # type: ignore[method-assign]
    return action.run(task_vars={})


def test_without_a_store_the_module_runs_with_the_tasks_arguments() -> None:
    module = FakeModule(changed=True, built=True)
    result = run(ARGS, module)
    assert module.calls == [("chardev_lab.lab.chardev_build", ARGS)]
    assert result["changed"] and result["built"] and "stored" not in result


def test_the_store_sends_what_it_holds_and_keeps_what_the_host_compiled(tmp_path: Path) -> None:
    (tmp_path / RELEASE).mkdir()
    (tmp_path / RELEASE / SAFE).write_bytes(b"\x7fELF safe")
    module = FakeModule(changed=True, exported_builds={CRASH: b64(b"\x7fELF crash")})
    result = run({**ARGS, "store": str(tmp_path)}, module)
    ((name, sent),) = module.calls
    assert name == "chardev_lab.lab.chardev_build" and "store" not in sent
    assert sent["import_builds"] == {SAFE: b64(b"\x7fELF safe")} and sent["export_builds"] is True
    # The builds travelled in the arguments: the result names them, without their bytes.
    assert result["invocation"]["module_args"]["import_builds"] == [SAFE]
    assert "exported_builds" not in result
    assert result["stored"] == ["crash"]
    assert (tmp_path / RELEASE / CRASH).read_bytes() == b"\x7fELF crash"


def test_check_mode_asks_for_no_builds_back(tmp_path: Path) -> None:
    module = FakeModule(changed=True)
    result = run({**ARGS, "store": str(tmp_path)}, module, check_mode=True)
    assert module.calls[0][1]["export_builds"] is False and module.calls[0][1]["import_builds"] == {}
    assert "stored" not in result and not (tmp_path / RELEASE).exists()


def test_a_failed_module_stores_nothing(tmp_path: Path) -> None:
    module = FakeModule(failed=True, msg="kbuild failed", exported_builds={CRASH: b64(b"half")})
    result = run({**ARGS, "store": str(tmp_path)}, module)
    assert result["failed"] and "stored" not in result and "exported_builds" not in result
    assert not (tmp_path / RELEASE).exists()


@pytest.mark.parametrize("release", ["", "../etc", "a/b"])
def test_a_store_needs_a_plain_kernel_release(tmp_path: Path, release: str) -> None:
    module = FakeModule()
    with pytest.raises(AnsibleActionFail, match="store needs kernel_release"):
        run({**ARGS, "kernel_release": release, "store": str(tmp_path)}, module)
    assert module.calls == []
