"""The chardev_build action plugin (plugins/action/chardev_build.py) on the control node: with a store it
sends the builds a host may need with the module's arguments, each with its digest, and keeps the builds
the host compiled, only from a host the control node itself trusts (not in the group classroom, no
student's account in its own records); without one it only runs the module. The module itself is a fake
here, answering as the host's would, or as a student's root could make it answer."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.chardev_lab.lab.plugins.action.chardev_build import ActionModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    wanted_builds,
    write_store,
)

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


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeModule:
    """The chardev_build module as a host runs it: records what it was sent, answers with result (its
    invocation echoes the arguments, as AnsibleModule's does)."""

    def __init__(self, **result: Any) -> None:
        self.result = result
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, module_name: str, module_args: dict[str, Any], task_vars: Any) -> dict[str, Any]:
        self.calls.append((module_name, dict(module_args)))
        return {"invocation": {"module_args": dict(module_args)}, **self.result}


def host_vars(state_dir: Path, host: str = "vm1", groups: tuple[str, ...] = ("lab", "lab_vms")) -> dict:
    """A host's task variables as the control node has them: its name, groups and lab_state_dir."""
    return {"inventory_hostname": host, "group_names": list(groups), "lab_state_dir": str(state_dir)}


def run(
    args: dict[str, Any],
    module: FakeModule,
    check_mode: bool = False,
    task_vars: dict[str, Any] | None = None,
) -> dict[str, Any]:
    task_vars = {} if task_vars is None else task_vars
    task = SimpleNamespace(args=dict(args), check_mode=check_mode, async_val=0, action="chardev_build")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/remote"))
    templar = Templar(loader=DataLoader(), variables=task_vars)
    action = ActionModule(task, connection, None, None, templar, None)  # type: ignore[arg-type]
    action._execute_module = module  # type: ignore[method-assign]
    return action.run(task_vars=task_vars)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "builds"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The control node's state directory, with no account recorded yet."""
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


def test_without_a_store_the_module_runs_with_the_tasks_arguments() -> None:
    module = FakeModule(changed=True, built=True)
    result = run(ARGS, module)
    assert module.calls == [("chardev_lab.lab.chardev_build", ARGS)]
    assert result["changed"] and result["built"] and "stored" not in result


def test_the_store_sends_what_it_holds_and_keeps_what_a_trusted_host_compiled(
    store: Path, state: Path
) -> None:
    write_store(str(store / RELEASE), {SAFE: b64(b"\x7fELF safe")}, NAMES)
    module = FakeModule(changed=True, exported_builds={CRASH: b64(b"\x7fELF crash")})
    result = run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state))
    ((name, sent),) = module.calls
    assert name == "chardev_lab.lab.chardev_build" and "store" not in sent
    assert sent["import_builds"] == {SAFE: {"data": b64(b"\x7fELF safe"), "sha256": sha(b"\x7fELF safe")}}
    assert sent["export_builds"] is True
    # The builds travelled in the arguments: the result names them, without their bytes.
    assert result["invocation"]["module_args"]["import_builds"] == [SAFE]
    assert "exported_builds" not in result
    assert result["stored"] == ["crash"] and result["export_refused"] == ""
    assert (store / RELEASE / CRASH).read_bytes() == b"\x7fELF crash"
    assert (store / RELEASE / f"{CRASH}.sha256").read_text().split()[0] == sha(b"\x7fELF crash")


def forged(store: Path) -> FakeModule:
    """A student's root answering for the module: builds it was not asked for, and its own verdicts."""
    return FakeModule(
        changed=True,
        exported_builds={SAFE: b64(b"\x7fELF doctored"), CRASH: b64(b"\x7fELF doctored")},
        export_refused="",
        stored=["safe", "crash"],
    )


def assert_refused(result: dict[str, Any], module: FakeModule, store: Path, why: str) -> None:
    ((_name, sent),) = module.calls
    assert sent["export_builds"] is False
    assert why in result["export_refused"]
    assert "stored" not in result and "exported_builds" not in result
    assert not (store / RELEASE / SAFE).exists() and not (store / RELEASE / CRASH).exists()


def test_a_classroom_hosts_forged_builds_do_not_reach_the_store(store: Path, state: Path) -> None:
    write_store(str(store / RELEASE), {SAFE: b64(b"\x7fELF safe")}, {SAFE: "safe"})
    module = forged(store)
    task_vars = host_vars(state, host="alice", groups=("lab", "classroom"))
    result = run({**ARGS, "store": str(store)}, module, task_vars=task_vars)
    ((_name, sent),) = module.calls
    assert sent["export_builds"] is False and "group classroom" in result["export_refused"]
    assert "stored" not in result and "exported_builds" not in result
    assert (store / RELEASE / SAFE).read_bytes() == b"\x7fELF safe" and not (store / RELEASE / CRASH).exists()
    # It still gets the store's builds for itself.
    assert sent["import_builds"] == {SAFE: {"data": b64(b"\x7fELF safe"), "sha256": sha(b"\x7fELF safe")}}


def test_a_host_with_a_recorded_student_account_gives_nothing(store: Path, state: Path) -> None:
    (state / "accounts").mkdir()
    record = state / "accounts" / "bob.json"
    record.write_text('{"host": "bob", "student": "bob", "local_vm": true}')
    module = forged(store)
    result = run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state, host="bob"))
    assert_refused(result, module, store, f"{record} says the student bob has an account")


def test_a_host_whose_facts_move_lab_state_dir_gives_nothing(
    store: Path, state: Path, tmp_path: Path
) -> None:
    """Facts come from the host and outrank the inventory: a forged lab_state_dir fact would point the
    record check at a directory without the host's record."""
    (state / "accounts").mkdir()
    (state / "accounts" / "bob.json").write_text('{"student": "bob"}')
    task_vars = {**host_vars(tmp_path / "empty", host="bob"), "ansible_facts": {"lab_state_dir": "/empty"}}
    module = forged(store)
    result = run({**ARGS, "store": str(store)}, module, task_vars=task_vars)
    assert_refused(result, module, store, "facts name lab_state_dir")


def test_without_lab_state_dir_no_host_gives_builds(store: Path) -> None:
    module = forged(store)
    result = run({**ARGS, "store": str(store)}, module, task_vars={"inventory_hostname": "vm1"})
    assert_refused(result, module, store, "lab_state_dir is not set")


@pytest.mark.parametrize("trusted", [True, False], ids=["inventory", "untrusted"])
def test_lab_state_dir_is_rendered_as_the_inventory_gives_it(store: Path, state: Path, trusted: bool) -> None:
    """The inventory's lab_state_dir is a template (group_vars/all.yml): rendered, it names the records.
    A template Ansible does not render (not from a trusted source) names none: refused, not trusted."""
    (state / "accounts").mkdir()
    (state / "accounts" / "bob.json").write_text('{"student": "bob"}')
    template = "{{ where }}"
    task_vars = {
        **host_vars(state, host="bob"),
        "lab_state_dir": trust_as_template(template) if trusted else template,
        "where": str(state),
    }
    module = forged(store)
    result = run({**ARGS, "store": str(store)}, module, task_vars=task_vars)
    assert_refused(result, module, store, "the student bob" if trusted else "was not rendered")


def test_a_tampered_store_entry_is_not_sent(store: Path, state: Path) -> None:
    write_store(str(store / RELEASE), {SAFE: b64(b"\x7fELF safe")}, NAMES)
    (store / RELEASE / SAFE).write_bytes(b"\x7fELF doctored")
    module = FakeModule(changed=True)
    result = run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state))
    assert module.calls[0][1]["import_builds"] == {}
    assert any("no longer matches the digest" in w and SAFE in w for w in result["warnings"])


def test_an_existing_entry_is_not_overwritten_by_a_host(store: Path, state: Path) -> None:
    write_store(str(store / RELEASE), {CRASH: b64(b"\x7fELF crash")}, NAMES)
    module = FakeModule(changed=True, exported_builds={CRASH: b64(b"\x7fELF other crash")})
    result = run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state))
    assert result["stored"] == [] and any("never replaced" in w for w in result["warnings"])
    assert (store / RELEASE / CRASH).read_bytes() == b"\x7fELF crash"


def test_a_full_store_fails_the_task_with_a_message(
    store: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    module = FakeModule(changed=True, exported_builds={CRASH: b64(b"\x7fELF crash")})
    with pytest.raises(AnsibleActionFail, match=r"No space left on device.*free some space"):
        run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state))


def test_an_unreadable_store_fails_the_task_with_a_message(
    store: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (store / RELEASE).mkdir(parents=True)

    def denied(path: Any, *args: Any, **kwargs: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "open", denied)
    module = FakeModule()
    with pytest.raises(AnsibleActionFail, match=r"build store's lock failed: Permission denied \(.*\.lock\)"):
        run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state))
    assert module.calls == []


def test_check_mode_asks_for_no_builds_back(store: Path, state: Path) -> None:
    module = FakeModule(changed=True)
    result = run({**ARGS, "store": str(store)}, module, check_mode=True, task_vars=host_vars(state))
    assert module.calls[0][1]["export_builds"] is False and module.calls[0][1]["import_builds"] == {}
    assert "stored" not in result and not (store / RELEASE).exists()


def test_a_failed_module_stores_nothing(store: Path, state: Path) -> None:
    module = FakeModule(failed=True, msg="kbuild failed", exported_builds={CRASH: b64(b"half")})
    result = run({**ARGS, "store": str(store)}, module, task_vars=host_vars(state))
    assert result["failed"] and "stored" not in result and "exported_builds" not in result
    assert not (store / RELEASE).exists()


@pytest.mark.parametrize("release", ["", "../etc", "a/b"])
def test_a_store_needs_a_plain_kernel_release(store: Path, release: str) -> None:
    module = FakeModule()
    with pytest.raises(AnsibleActionFail, match="store needs kernel_release"):
        run({**ARGS, "kernel_release": release, "store": str(store)}, module)
    assert module.calls == []
