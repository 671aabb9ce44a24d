"""The VM the lab_vm role booted: its kernel, SSH with host-key checking, Python for Ansible."""

import os
import re
from pathlib import Path

from lab_testinfra import fleet_dir, run_playbook

KERNEL_SERIES = {"bullseye": "5.10.", "bookworm": "6.1.", "trixie": "6.12."}


def test_kernel_matches_the_suite(host):
    suite = host.ansible.get_variables()["lab_vm_suite"]
    release = host.run("uname -r").stdout.strip()
    assert release.startswith(KERNEL_SERIES[suite]), f"{suite} VM runs {release}"
    assert release.endswith("amd64"), release


def test_hostname_is_the_instance_name(host):
    assert host.run("hostname").stdout.strip() == host.backend.get_hostname()


def test_python_for_ansible(host):
    assert host.exists("python3")
    version = host.run("python3 -c 'import sys; print(sys.version_info[0])'").stdout.strip()
    assert version == "3"


def test_ssh_host_key_is_the_one_known_in_advance(host):
    """The VM serves the host key that the fleet generated and wrote to known_hosts before boot."""
    served = host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[1]
    known = (fleet_dir() / "known_hosts").read_text()
    port = host.ansible.get_variables()["lab_vm_ssh_port"]
    assert re.search(rf"^\[127\.0\.0\.1\]:{port} ssh-ed25519 {re.escape(served)}( .*)?$", known, re.M), known


def test_only_the_fleet_key_may_log_in(host):
    keys = host.file("/root/.ssh/authorized_keys")
    assert keys.mode == 0o600
    assert keys.content_string.strip() == (fleet_dir() / "id_ed25519.pub").read_text().strip()
    assert oct((fleet_dir() / "id_ed25519").stat().st_mode & 0o777) == "0o600"


def test_sshd_listens_and_network_is_up(host):
    assert host.socket("tcp://0.0.0.0:22").is_listening or host.socket("tcp://:::22").is_listening
    assert "10.0.2." in host.run("ip -4 -o addr show").stdout


def lab_footprint(host) -> dict:
    """Everything the lab would put on the host."""
    release = host.run("uname -r").stdout.strip()
    return {
        "headers": host.package(f"linux-headers-{release}").is_installed,
        "sources": host.file("/usr/local/src/chardev").exists,
        "installed_module": host.file(f"/lib/modules/{release}/extra/chardev.ko").exists,
        "loaded": host.file("/sys/module/chardev").exists,
        "node": host.file("/dev/chardev").exists,
    }


def test_check_mode_on_a_fresh_host_reports_and_changes_nothing(host):
    before = lab_footprint(host)
    assert not any(before.values()), before
    lab = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks/lab.yml"
    run = run_playbook(host, lab, "--check")
    stats = run.stats(host.backend.get_hostname())
    assert run.rc == 0 and stats.get("failures") == 0 and stats.get("unreachable") == 0, str(run)
    assert stats.get("changed", 0) > 0, f"check mode should report what it would do\n{run}"
    assert lab_footprint(host) == before, str(run)
