"""After playbooks/reset.yml: alice's crashed machine is clean again (a fresh disk), bob's was left alone,
and the status says so, in the JSON and on the page."""

import os
from pathlib import Path

import pytest
from classroom import ssh_as
from fleet_status import by_host, check_page_matches, refresh_status


@pytest.fixture(scope="module")
def status():
    return refresh_status()


def test_the_crashed_machine_is_clean(status, host):
    if host.backend.get_hostname() != "alice":
        pytest.skip("only alice's machine was crashed")
    alice = by_host(status)["alice"]
    assert alice["crashed"] is False and alice["stuck_tasks"] == [] and alice["tainted"] == 0, alice
    # A fresh disk: the lab is to be run again (make lab), the state says so.
    assert alice["state"] == "not-ready" and alice["module_loaded"] is False, alice
    assert not host.file("/run/chardev-lab/crashed.json").exists


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
