"""After `make lab` for the class: each student reaches their own machine with their own key and
nothing else; the access files say how; the status shows alice's machine crashed and bob's ready, in
the JSON and on the page in a real browser."""

import csv
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import testinfra
from classroom import run_ssh, ssh_as, ssh_options
from fleet_status import by_host, check_page_matches, refresh_status
from lab_testinfra import fleet_dir

PORTS = {"alice": 2271, "bob": 2272}


# ---------------------------------------------------------------------------------------------------
# Logins
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("student", ["alice", "bob"])
def test_student_logs_in_to_their_own_machine_with_sudo(student):
    done = ssh_as(student, student, PORTS[student], "id -un; hostname; sudo -n id -u")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [student, student, "0"], done.stdout


@pytest.mark.parametrize(("key", "user", "machine"), [("alice", "alice", "bob"), ("alice", "bob", "bob")])
def test_a_students_key_opens_no_other_machine(key, user, machine):
    done = ssh_as(key, user, PORTS[machine], "true")
    assert done.returncode == 255 and "Permission denied" in done.stderr, done


@pytest.mark.parametrize("student", ["alice", "bob"])
def test_a_students_key_opens_no_root_login(student):
    done = ssh_as(student, "root", PORTS[student], "true")
    assert done.returncode == 255 and "Permission denied" in done.stderr, done


def test_a_key_not_on_the_roster_is_refused():
    done = ssh_as("mallory", "alice", PORTS["alice"], "true")
    assert done.returncode == 255 and "Permission denied" in done.stderr, done


def test_passwords_are_never_asked():
    """sshd offers public keys only: no password, no keyboard-interactive (what BatchMode reports)."""
    done = ssh_as(
        "mallory",
        "alice",
        PORTS["alice"],
        "true",
        extra=(
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ),
    )
    assert done.returncode == 255, done
    assert "Permission denied (publickey)" in done.stderr, done.stderr


def test_sshd_effective_settings(host):
    effective = host.run("/usr/sbin/sshd -T").stdout.lower()
    for line in (
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitemptypasswords no",
    ):
        assert line in effective.splitlines(), line
    assert re.search(r"^permitrootlogin (prohibit-password|without-password)$", effective, re.M)


def test_only_the_students_key(host):
    student = host.backend.get_hostname()
    keys = host.file(f"/home/{student}/.ssh/authorized_keys")
    assert keys.user == student and keys.mode == 0o600
    wanted = (Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / f"keys/{student}.pub").read_text().split()[1]
    assert [line.split()[1] for line in keys.content_string.splitlines() if line.strip()] == [wanted]
    assert wanted not in host.file("/root/.ssh/authorized_keys").content_string


# ---------------------------------------------------------------------------------------------------
# Access files
# ---------------------------------------------------------------------------------------------------


def test_access_csv():
    with (fleet_dir() / "access.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames[:5] == ["student", "host", "address", "port", "user"]
    assert [(r["student"], r["host"], r["address"], r["port"], r["user"]) for r in rows] == [
        ("alice", "alice", "127.0.0.1", "2271", "alice"),
        ("bob", "bob", "127.0.0.1", "2272", "bob"),
    ]
    assert oct((fleet_dir() / "access.csv").stat().st_mode & 0o777) == "0o600"


def test_the_access_rows_ssh_line_works():
    with (fleet_dir() / "access.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["student"] == "bob")
    command = row["ssh"].split()
    assert command[0] == "ssh", row
    # The row's own command line, with the student's key and the fleet's known_hosts added.
    done = run_ssh([command[0], *ssh_options("bob"), *command[1:], "id -un"])
    assert done.returncode == 0 and done.stdout.strip() == "bob", done


@pytest.mark.parametrize("student", ["alice", "bob"])
def test_a_note_per_student_with_the_host_key_fingerprint(student):
    note = (fleet_dir() / "access" / f"{student}.txt").read_text()
    assert f"ssh -p {PORTS[student]} {student}@127.0.0.1" in note
    pub = fleet_dir() / "vms" / student / "ssh_host_ed25519_key.pub"
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert fingerprint in note


# ---------------------------------------------------------------------------------------------------
# Status: alice crashed (opted in), bob ready (not opted in)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def status():
    return refresh_status()


def test_status_json_has_one_row_per_host_with_the_keys(status):
    keys = {"host", "student", "reachable", "kernel", "module_loaded", "variant", "crashed", "stuck_tasks"}
    assert sorted(row["host"] for row in status) == ["alice", "bob"]
    for row in status:
        assert keys | {"tainted"} <= set(row), row
        assert row["student"] == row["host"] and row["reachable"] is True, row


def test_status_of_the_crashed_machine_is_the_kernels_own(status, host):
    if host.backend.get_hostname() != "alice":
        pytest.skip("alice's machine is the crashed one")
    alice = by_host(status)["alice"]
    assert alice["state"] == "crashed" and alice["crashed"] is True, alice
    assert alice["kernel"] == host.run("uname -r").stdout.strip()
    assert (
        alice["tainted"] == int(host.file("/proc/sys/kernel/tainted").content_string)
        and alice["tainted"] & 128
    )
    assert alice["module_loaded"] is False, "the crash variant was unloaded by the lesson"
    # The stuck tasks are the ones the crash role recorded, in the state the kernel shows now.
    record = json.loads(host.file("/run/chardev-lab/crashed.json").content_string)
    assert alice["stuck_tasks"], alice
    for task in alice["stuck_tasks"]:
        stat = host.file(f"/proc/{task['pid']}/stat").content_string
        assert stat[stat.rindex(")") + 2] == task["state"], (task, stat)
    assert record, record
    assert alice["reboot_required"] is True


def test_status_of_the_whole_machine(status, host):
    if host.backend.get_hostname() != "bob":
        pytest.skip("bob's machine is the whole one")
    bob = by_host(status)["bob"]
    assert bob["state"] == "ready", bob
    assert bob["crashed"] is False and bob["stuck_tasks"] == [] and bob["tainted"] & 128 == 0, bob
    assert bob["module_loaded"] is True and bob["variant"] == "safe", bob
    assert host.file("/sys/module/chardev/version").content_string.strip() == "1.0-safe"
    assert bob["node_ok"] is True and bob["demo"] == "passed", bob
    # Remembered for the reset's tests: bob's machine must not be touched by it.
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "bob-boot-id").write_text(boot_id)


# ---------------------------------------------------------------------------------------------------
# Builds: one compile for the class, copied through the control node's store
# ---------------------------------------------------------------------------------------------------


def sha256_of(machine, directory: str) -> dict[str, str]:
    listing = machine.run(f"cd {directory} && sha256sum -- *.ko")
    assert listing.rc == 0, listing.stderr
    return {name: digest for digest, name in (line.split() for line in listing.stdout.splitlines())}


def test_the_class_compiled_each_build_once(host):
    """Both machines run the same kernel: the first compiled the builds the class needs (safe for both,
    crash for alice), the other copied its builds from the control node's store, byte for byte."""
    if host.backend.get_hostname() != "alice":
        pytest.skip("checked once, for both machines")
    release = host.run("uname -r").stdout.strip()
    store = fleet_dir() / "builds" / release
    stored = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in store.glob("*.ko")}
    assert len(stored) == 2, f"the safe and the crash build in {store}: {stored}"
    compiled = []
    for name in PORTS:
        machine = testinfra.get_host(f"ansible://{name}", ansible_inventory=host.backend.ansible_inventory)
        assert machine.run("uname -r").stdout.strip() == release, name
        cached = sha256_of(machine, f"/var/cache/chardev-lab/builds/{release}")
        assert cached and cached.items() <= stored.items(), (name, cached, stored)
        installed = sha256_of(machine, f"/lib/modules/{release}/extra")
        assert installed["chardev.ko"] in stored.values(), name
        # kbuild leaves its chardev.ko in the build directory; a copied build never goes there.
        if machine.file("/usr/local/src/chardev/chardev.ko").exists:
            compiled.append(name)
    assert len(compiled) == 1, f"compiled on {compiled}: once for the class"


def test_status_page_in_a_browser_matches_the_json(status):
    check_page_matches(status, "status-page-crashed.png")
