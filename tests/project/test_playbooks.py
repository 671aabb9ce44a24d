"""The playbooks, statically and run with ansible-playbook on the control node:

* every playbook that changes a host runs the guard first, and every playbook checks the host's name
  where it enters: statically over playbooks/*.yml and lab.yml, and for real against a host the guard
  refuses (student-pc, reached with ansible_connection=local: the control node itself);
* the students who left (playbooks/leavers.yml): a departed student's local VM removed with its record,
  a real host's removal stopped by the guard, records of the students still there and of another
  inventory left alone, --check changing nothing, a second run nothing either;
* the lab_student role's record entry point (the control node's account record) and its argument spec
  (lab_student_state).

Kept safe even if the guard were broken: every run that reaches a host is --check (no account, no
reboot, no crash, no build), the state directory is a temporary one, and the chardev role's sources
point to an empty directory. The chardev role's own refusals (and the guard's entry points) are in
test_guard_playbook.py, the decisions on fake targets in tests/unit/plugins/modules/test_chardev_guard.py,
which records are stale in tests/unit/plugins/module_utils/test_lab_accounts.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import run_playbook, task_name

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
GUARD_ROLE = "chardev_lab.lab.chardev"
GUARD_TASK = "Refuse the control node, a container, a chroot or an unsafe host name, read on the target"
HOST_NAME_TASK = "Refuse a host name that is not a safe file name on the control node"
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJTFxPVbLi7vVN3aOFCtrb6kpAhDDEBWjY/zOSdemfTE alice@chardev-lab-test"
)

# ------------------------------------------------------------------ the playbooks, read


def plays_of(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The plays a playbook runs, in order, its import_playbook entries expanded (with their file)."""
    plays: list[tuple[Path, dict[str, Any]]] = []
    for entry in yaml.safe_load(path.read_text()):
        imported = entry.get("ansible.builtin.import_playbook")
        if imported:
            plays += plays_of(path.parent / imported)
        else:
            plays.append((path, entry))
    return plays


def guard_entry(task: dict[str, Any]) -> str | None:
    """The guard entry point a task includes (guard or host_name), or None."""
    include = task.get("ansible.builtin.include_role") or {}
    if include.get("name") != GUARD_ROLE or include.get("tasks_from") not in ("guard", "host_name"):
        return None
    return str(include["tasks_from"])


def always(task: dict[str, Any]) -> bool:
    """Tagged always, the include and the role's tasks it brings in (apply): --tags cannot skip it."""
    include = task["ansible.builtin.include_role"]
    return "always" in task.get("tags", []) and "always" in include.get("apply", {}).get("tags", [])


def leading_guards(play: dict[str, Any]) -> list[str]:
    """The guard entry points a play starts with (its first tasks, before anything else)."""
    tasks = list(play.get("pre_tasks") or []) + (
        list(play.get("tasks") or []) if not play.get("roles") else []
    )
    if play.get("roles") and not play.get("pre_tasks"):
        return []
    entries: list[str] = []
    for task in tasks:
        entry = guard_entry(task)
        if entry is None:
            break
        assert always(task), f"{play['name']}: the guard include is not tagged always (also in apply)"
        entries.append(entry)
    return entries


def on_hosts(play: dict[str, Any]) -> bool:
    return play["hosts"] != "localhost"


PLAYBOOK_FILES = [*sorted(PLAYBOOKS.glob("*.yml")), REPO / "lab.yml"]
# The playbooks that change hosts: their first play on hosts runs the whole guard (guard), possibly after
# the host-name part; the others may run the host-name part only (they must not connect first).
CHANGING = {
    "access.yml",
    "chardev.yml",
    "crash.yml",
    "leavers.yml",
    "reset.yml",
    "rewind_point.yml",
    "lab.yml",
}
NAME_ONLY = {"check.yml", "fleet.yml", "status.yml"}


def test_every_playbook_is_classified() -> None:
    assert {path.name for path in PLAYBOOK_FILES} == CHANGING | NAME_ONLY


@pytest.mark.parametrize("path", PLAYBOOK_FILES, ids=lambda p: p.name)
def test_every_play_on_hosts_starts_with_the_guard(path: Path) -> None:
    """Each play on the lab's hosts starts with the guard's entry points (tagged always), or targets
    hosts an earlier play of the same run guarded: a host the guard refused is out of the run."""
    guarded: list[str] = []
    for source, play in plays_of(path):
        if not on_hosts(play):
            continue
        entries = leading_guards(play)
        hosts = str(play["hosts"])
        if not entries:
            covered = any(
                hosts == g or (g == "lab" and hosts in ("lab_vms", "lab:!lab_vms")) for g in guarded
            )
            assert covered, f"{source.name}: play {play['name']!r} on {hosts} does not start with the guard"
            continue
        if path.name in CHANGING and source.name in CHANGING:
            # A real host's removal, and every play that changes the lab's hosts: the whole guard.
            assert "guard" in entries or play["name"].startswith("Remove the local VMs"), (
                source.name,
                play["name"],
            )
        guarded.append(hosts)
    assert guarded, f"{path.name} has no play on hosts"


def test_the_unload_is_refused_while_the_device_is_held_unless_opted_in() -> None:
    """The chardev role unloads only through chardev_unload, which refuses while a process holds the device
    open unless the host opted in (load.yml: another build; remove.yml: chardev_state absent)."""
    for name in ("load.yml", "remove.yml"):
        tasks = yaml.safe_load((REPO / "roles" / "chardev" / "tasks" / name).read_text())
        unloads_by_modprobe = [
            t for t in tasks if t.get("community.general.modprobe", {}).get("state") == "absent"
        ]
        assert not unloads_by_modprobe, name
        unloads = [t for t in tasks if "chardev_lab.lab.chardev_unload" in t]
        assert len(unloads) == 1, name
        assert (
            unloads[0]["chardev_lab.lab.chardev_unload"]["allow_held"] == "{{ chardev_crash_allowed | bool }}"
        )


# ------------------------------------------------------------------ the playbooks, run on the control node


@dataclass(frozen=True)
class Result:
    rc: int
    report: dict[str, Any]
    output: str


class Run:
    """ansible-playbook runs (--check unless check=False) on an inventory of hosts that reach the control
    node: the group lab, vms in its child lab_vms, the state directory a temporary one."""

    def __init__(self, tmp_path: Path, hosts: dict[str, dict[str, Any]], vms: tuple[str, ...] = ()) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.no_sources = tmp_path / "no-sources"
        self.no_sources.mkdir()
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        children: dict[str, Any] = {}
        lab_hosts = {name: {**local, **v} for name, v in hosts.items() if name not in vms}
        if vms:
            children["lab_vms"] = {"hosts": {name: {**local, **hosts[name]} for name in vms}}
        inventory = {
            "lab": {"hosts": lab_hosts, "children": children, "vars": {"lab_state_dir": str(self.state)}}
        }
        self.inventory = tmp_path / "inventory.yml"
        self.inventory.write_text(yaml.safe_dump(inventory))

    def __call__(self, playbook: Path, *args: str, check: bool = True, **extra_vars: Any) -> Result:
        extra_vars = {
            "chardev_build_dir": str(self.tmp / "build"),
            "chardev_source_dir": str(self.no_sources),
            **extra_vars,
        }
        args = ("--check", *args) if check else args
        return Result(*run_playbook(self.inventory, playbook, *args, extra_vars=extra_vars, cwd=self.tmp))


def ran_on(report: dict[str, Any], host: str) -> list[tuple[str, dict[str, Any]]]:
    """The tasks that ran on host (not skipped), in order, with their results."""
    return [
        (task_name(task), task["hosts"][host])
        for play in report["plays"]
        for task in play["tasks"]
        if host in task["hosts"] and not task["hosts"][host].get("skipped")
    ]


# Everything that may run on a host before the guard's module says no: the includes of the guard, its
# argument validation and its checks made on the control node.
BEFORE_THE_GUARD = (
    "Refuse a host the lab must not change",
    "Refuse an unsafe host name",
    "Validating arguments against arg spec 'guard'",
    "Validating arguments against arg spec 'host_name'",
    "Refuse chardev_allow_control_node, which no longer exists",
    "Refuse a host whose facts name the lab's variables",
    "Refuse the crash variant on a host that did not opt in to the crash",
    HOST_NAME_TASK,
)


def assert_stopped_by_the_guard(
    result: Result, host: str, task: str = GUARD_TASK, allowed: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The run failed on host at the guard, and nothing else ran there before it; the failed task's result."""
    assert result.rc != 0
    report = result.report
    assert report["stats"][host]["failures"] == 1, report["stats"]
    tasks = ran_on(report, host)
    failed = [i for i, entry in enumerate(tasks) if entry[1].get("failed")]
    assert failed, tasks
    name, failure = tasks[failed[0]]
    assert name == task, [entry[0] for entry in tasks]
    before = [entry[0] for entry in tasks[: failed[0]]]
    assert all(n.startswith(BEFORE_THE_GUARD + allowed) for n in before), before
    assert report["stats"][host]["changed"] == 0
    return failure


@pytest.fixture
def run(tmp_path: Path) -> Run:
    student = {"lab_student": "alice", "lab_student_ssh_key": KEY}
    return Run(tmp_path, {"student-pc": student})


def test_access_accounts_stops_at_the_guard(run: Run) -> None:
    """--tags accounts wrote NOPASSWD: ALL wherever it was pointed: now the guard refuses first."""
    ran = run(PLAYBOOKS / "access.yml", "--tags", "accounts")
    result = assert_stopped_by_the_guard(ran, "student-pc")
    assert "ansible_connection is local" in result["msg"]
    assert (
        "Record the student's account" not in ran.output and "Create the student's account" not in ran.output
    )
    assert not (run.state / "accounts").exists()


def test_reset_stops_at_the_guard(run: Run) -> None:
    """reset.yml rebooted any real host it thought crashed (here: all, reset_all)."""
    ran = run(PLAYBOOKS / "reset.yml", reset_all=True, chardev_crash_allowed=True)
    assert_stopped_by_the_guard(ran, "student-pc")
    assert "Reboot (a stuck task" not in ran.output


@pytest.mark.parametrize("opted_in", [True, False])
def test_crash_stops_at_the_guard(run: Run, opted_in: bool) -> None:
    ran = run(PLAYBOOKS / "crash.yml", chardev_crash_allowed=opted_in)
    result = assert_stopped_by_the_guard(ran, "student-pc")
    assert result["msg"].startswith(
        "The chardev guard refuses this host for the crash variant"
        if opted_in
        else "The chardev guard refuses"
    )


def test_chardev_stops_at_the_guard(run: Run) -> None:
    """Before the crash state's taint baseline and the headers (which may upgrade the kernel and reboot)."""
    ran = run(PLAYBOOKS / "chardev.yml")
    assert_stopped_by_the_guard(ran, "student-pc")
    assert not (run.tmp / "build").exists()


def test_make_lesson_refuses_a_host_that_did_not_opt_in(run: Run) -> None:
    ran = run(PLAYBOOKS / "chardev.yml", chardev_variant="crash")
    result = assert_stopped_by_the_guard(
        ran, "student-pc", "Refuse the crash variant on a host that did not opt in to the crash"
    )
    assert "chardev_crash_allowed is false" in result["msg"]


@pytest.mark.parametrize("name", ["../../../x", ".hidden", "a..b"])
def test_an_unsafe_host_name_is_refused_by_the_guard(tmp_path: Path, name: str) -> None:
    run = Run(tmp_path, {name: {"lab_student": "alice", "lab_student_ssh_key": KEY}})
    ran = run(PLAYBOOKS / "access.yml", "--tags", "accounts")
    result = assert_stopped_by_the_guard(ran, name)
    assert f"inventory_hostname {name!r}" in result["msg"]
    assert "host_name" in [refusal["reason"] for refusal in result["refusals"]]


@pytest.mark.parametrize("playbook", ["status.yml", "check.yml", "reset.yml"])
def test_an_unsafe_host_name_is_refused_before_any_connection(tmp_path: Path, playbook: str) -> None:
    """The read-only playbooks write the host's files on the control node (results/<host>.check.json,
    the status page): the name is checked there first."""
    run = Run(tmp_path, {"../evil": {}})
    ran = run(PLAYBOOKS / playbook)
    result = assert_stopped_by_the_guard(ran, "../evil", HOST_NAME_TASK)
    assert 'its inventory name "../evil"' in result["msg"]
    assert not (tmp_path / "evil.check.json").exists() and not (run.state / "results").exists()


# ------------------------------------------------------------------ the students who left


def account_record(run: Run, host: str, local_vm: bool = True, **extra: Any) -> dict[str, Any]:
    """A record as the lab_student role writes it, for this run's inventory."""
    data: dict[str, Any] = {
        "host": host,
        "student": host,
        "local_vm": local_vm,
        "address": "127.0.0.1",
        "port": {"alice": 2301, "carol": 2303}.get(host, 22),
        "since": "2026-05-01T09:00:00Z",
        "inventory": [str(run.inventory)],
        "ssh_key": KEY.replace("alice@", f"{host}@"),
        "connection": {}
        if local_vm
        else {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
    }
    data.update(extra)
    accounts = run.state / "accounts"
    accounts.mkdir(parents=True, exist_ok=True, mode=0o700)
    (accounts / f"{host}.json").write_text(json.dumps(data))
    return data


def tree(path: Path) -> dict[str, str]:
    """Every file below path and its content (directories as "<dir>")."""
    return {
        str(p.relative_to(path)): "<dir>" if p.is_dir() else p.read_text() for p in sorted(path.rglob("*"))
    }


@pytest.fixture
def class_run(tmp_path: Path) -> Run:
    """The class now: alice on a local VM. carol had a VM (gone from the roster), zed's record belongs to
    another inventory (the default fleet and a class share .lab)."""
    run = Run(
        tmp_path,
        {"alice": {"ansible_port": 2301, "lab_student": "alice", "lab_student_ssh_key": KEY}},
        vms=("alice",),
    )
    account_record(run, "alice")
    account_record(run, "carol")
    account_record(run, "zed", inventory=["/elsewhere/inventory/local.yml"])
    (run.state / "vms" / "carol").mkdir(parents=True)
    (run.state / "vms" / "carol" / "overlay.qcow2").write_text("carol's disk")
    (run.state / "known_hosts").write_text(
        "[127.0.0.1]:2301 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceAliceAliceAliceAliceAliceAliceAlice00\n"
        "[127.0.0.1]:2303 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICarolCarolCarolCarolCarolCarolCarolCarol00\n"
    )
    return run


def test_a_departed_students_vm_is_removed_once(class_run: Run) -> None:
    before = tree(class_run.state)
    checked = class_run(PLAYBOOKS / "leavers.yml")
    assert checked.rc == 0, checked.output
    assert tree(class_run.state) == before, "--check changed the state directory"
    assert (
        "carol left carol (carol is no longer in the inventory): its VM is stopped and removed"
        in checked.output
    )

    ran = class_run(PLAYBOOKS / "leavers.yml", check=False)
    assert ran.rc == 0, ran.output
    assert not (class_run.state / "vms" / "carol").exists()
    assert not (class_run.state / "accounts" / "carol.json").exists()
    assert (class_run.state / "accounts" / "alice.json").exists()  # still in the class
    assert (class_run.state / "accounts" / "zed.json").exists()  # another inventory's
    assert "2303" not in (class_run.state / "known_hosts").read_text()
    assert "[127.0.0.1]:2301" in (class_run.state / "known_hosts").read_text()

    again = class_run(PLAYBOOKS / "leavers.yml", check=False)
    assert again.rc == 0, again.output
    assert all(stats["changed"] == 0 for stats in again.report["stats"].values()), again.report["stats"]
    assert "carol" not in again.report["stats"]


def test_a_departed_students_real_host_is_guarded_first_and_keeps_its_record(class_run: Run) -> None:
    """erin's machine is reached as recorded (here: a local connection, the control node): the guard
    refuses it before the account's removal, and the record stays for the next run."""
    account_record(class_run, "erin", local_vm=False)
    ran = class_run(PLAYBOOKS / "leavers.yml")
    result = assert_stopped_by_the_guard(ran, "erin")
    assert "ansible_connection is local" in result["msg"]
    assert (class_run.state / "accounts" / "erin.json").exists()
    assert "Remove the student's account and home" not in ran.output


def test_lab_yml_and_access_yml_remove_the_leavers_first(class_run: Run) -> None:
    """lab.yml before the fleet (a departed VM frees its name and port), access.yml before the accounts."""
    for path, before in (
        (REPO / "lab.yml", "Start the local QEMU fleet"),
        (PLAYBOOKS / "access.yml", "Give each"),
    ):
        names = [play["name"] for _source, play in plays_of(path)]
        first_leavers = names.index("Find the students who left")
        assert first_leavers < next(
            i for i, name in enumerate(names) if name.startswith(("Manage the local", before))
        )


def test_a_bad_record_stops_the_removal(class_run: Run) -> None:
    (class_run.state / "accounts" / "mallory.json").write_text(
        json.dumps({"host": "../../x", "student": "root"})
    )
    ran = class_run(PLAYBOOKS / "leavers.yml", check=False)
    assert ran.rc != 0
    assert "Account records refused (nothing was removed)" in ran.output
    assert (class_run.state / "vms" / "carol").exists()


# ------------------------------------------------------------------ the lab_student role's record and spec


def include(tasks_from: str | None = None, **role_vars: Any) -> list[dict[str, Any]]:
    role: dict[str, Any] = {"name": "chardev_lab.lab.lab_student"}
    if tasks_from:
        role["tasks_from"] = tasks_from
    return [
        {
            "hosts": "alice",
            "gather_facts": False,
            "tasks": [
                {"name": "Include lab_student", "ansible.builtin.include_role": role, "vars": role_vars}
            ],
        }
    ]


def test_the_record_is_written_once_and_removed(class_run: Run) -> None:
    (class_run.state / "accounts" / "alice.json").unlink()
    playbook = class_run.tmp / "record.yml"
    playbook.write_text(yaml.safe_dump(include("record")))
    first = class_run(playbook, check=False)
    assert first.rc == 0, first.output
    path = class_run.state / "accounts" / "alice.json"
    written = json.loads(path.read_text())
    assert {k: written[k] for k in ("host", "student", "local_vm", "address", "port", "ssh_key")} == {
        "host": "alice",
        "student": "alice",
        "local_vm": True,
        "address": "127.0.0.1",
        "port": 2301,
        "ssh_key": KEY,
    }
    assert written["inventory"] == [str(class_run.inventory)]
    assert written["connection"] == {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
    }
    assert path.stat().st_mode & 0o777 == 0o600
    assert (class_run.state / "accounts").stat().st_mode & 0o777 == 0o700

    second = class_run(playbook, check=False)
    assert second.rc == 0 and second.report["stats"]["alice"]["changed"] == 0, second.output
    assert json.loads(path.read_text()) == written  # the same since

    other = class_run(playbook, check=False, lab_student="bob")
    assert other.rc != 0
    assert "says that alice's account exists on this host, and it was not removed" in other.output

    playbook.write_text(yaml.safe_dump(include("record", lab_student_state="absent")))
    assert class_run(playbook, check=True).rc == 0 and path.exists()
    assert class_run(playbook, check=False).rc == 0 and not path.exists()


@pytest.mark.parametrize("state", ["gone", "Absent"])
def test_the_argument_spec_knows_lab_student_state(class_run: Run, state: str) -> None:
    playbook = class_run.tmp / "student.yml"
    playbook.write_text(yaml.safe_dump(include(lab_student_state=state)))
    ran = class_run(playbook)
    assert ran.rc != 0
    assert "lab_student_state" in ran.output and "present, absent" in ran.output
    assert "Refuse a host the lab must not change" not in ran.output


def test_a_removal_passes_the_spec_then_meets_the_guard(class_run: Run) -> None:
    """lab_student_state absent needs no key; on this host the guard stops it before anything changes."""
    playbook = class_run.tmp / "student.yml"
    playbook.write_text(yaml.safe_dump(include(lab_student_state="absent", lab_student_ssh_key="")))
    ran = class_run(playbook)
    # The role checks its arguments, then its first task is the guard.
    assert_stopped_by_the_guard(
        ran, "alice", allowed=("Include lab_student", "Validating arguments against arg spec 'main'")
    )
