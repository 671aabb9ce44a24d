"""After playbooks/reset.yml: alice's crashed machine is rewound to its lab-ready point (no reboot, the lab
need not run again, her account still there), bob's was left alone, and the status says so, in the JSON
and on the page. (A fresh disk, reset_mode=fresh, is checked by the crash scenario.)"""

import os
from pathlib import Path

import pytest
from classroom import ssh_as
from fleet_status import by_host, check_page_matches, refresh_status


@pytest.fixture(scope="module")
def status():
    return refresh_status()


def test_the_crashed_machine_is_rewound_and_ready(status, host):
    if host.backend.get_hostname() != "alice":
        pytest.skip("only alice's machine was crashed")
    alice = by_host(status)["alice"]
    assert alice["crashed"] is False and alice["stuck_tasks"] == [], alice
    assert "D" not in alice["taint_letters"], alice
    # Rewound, not rebuilt: lab-ready at once, the module loaded, the device answering.
    assert alice["state"] == "ready" and alice["module_loaded"] is True, alice
    assert not host.file("/run/chardev-lab/crashed.json").exists
    assert host.run("head -c 64 /dev/chardev").stdout.startswith("I already told you ")
    # Her account and key came back with the rewind point: she logs in as before.
    done = ssh_as("alice", "alice", 2271, "id -un")
    assert done.returncode == 0 and done.stdout.strip() == "alice", done


def test_the_whole_machine_was_left_alone(status, host):
    if host.backend.get_hostname() != "bob":
        pytest.skip("bob's machine")
    before = (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "bob-boot-id").read_text()
    assert host.file("/proc/sys/kernel/random/boot_id").content_string.strip() == before
    assert by_host(status)["bob"]["state"] == "ready"
    done = ssh_as("bob", "bob", 2272, "id -un")
    assert done.returncode == 0 and done.stdout.strip() == "bob", done


def test_status_page_in_a_browser_matches_the_json(status):
    check_page_matches(status, "status-page-reset.png")
