"""Before the lab: the roster's VMs as the inventory plugin and the lab_vm role made them, and their
network isolation seen from inside."""

import os
import re
import socket
import threading
from pathlib import Path

import pytest
from classroom import roster_inventory, roster_vars
from lab_testinfra import fleet_dir, run_playbook

KERNEL_SERIES = {"bullseye": "5.10.", "bookworm": "6.1.", "trixie": "6.12."}


def test_the_roster_is_the_inventory():
    inventory = roster_inventory()
    assert sorted(inventory["lab_vms"]["hosts"]) == ["alice", "bob"]
    assert "lab_vms" in inventory["lab"]["children"]
    hostvars = inventory["_meta"]["hostvars"]
    # Ports in roster order from CHARDEV_LAB_FIRST_PORT; the suite only where the roster gives one.
    assert hostvars["alice"]["ansible_port"] == hostvars["alice"]["lab_vm_ssh_port"] == 2271
    assert hostvars["bob"]["ansible_port"] == 2272
    assert "lab_vm_suite" not in hostvars["alice"]
    assert hostvars["bob"]["lab_vm_suite"] == "bookworm"
    for student in ("alice", "bob"):
        assert hostvars[student]["lab_student"] == student
        assert hostvars[student]["lab_student_ssh_key"].startswith("ssh-ed25519 ")


def test_kernel_matches_the_suite(host):
    suite = roster_vars(host.backend.get_hostname()).get("lab_vm_suite", "bookworm")
    release = host.run("uname -r").stdout.strip()
    assert release.startswith(KERNEL_SERIES[suite]), f"{suite} VM runs {release}"
    assert release.endswith("amd64"), release


def test_hostname_is_the_student(host):
    assert host.run("hostname").stdout.strip() == host.backend.get_hostname()


def test_python_for_ansible(host):
    assert host.exists("python3")
    assert host.run("python3 -c 'import sys; print(sys.version_info[0])'").stdout.strip() == "3"


def test_ssh_host_key_is_the_one_known_in_advance(host):
    """The VM serves the host key that the fleet generated and wrote to known_hosts before boot."""
    served = host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[1]
    known = (fleet_dir() / "known_hosts").read_text()
    port = roster_vars(host.backend.get_hostname())["lab_vm_ssh_port"]
    assert re.search(rf"^\[127\.0\.0\.1\]:{port} ssh-ed25519 {re.escape(served)}( .*)?$", known, re.M), known


def test_only_the_fleet_key_may_log_in_as_root(host):
    keys = host.file("/root/.ssh/authorized_keys")
    assert keys.mode == 0o600
    assert keys.content_string.strip() == (fleet_dir() / "id_ed25519.pub").read_text().strip()
    assert oct((fleet_dir() / "id_ed25519").stat().st_mode & 0o777) == "0o600"


def lab_footprint(host) -> dict:
    """Everything the lab would put on the host."""
    release = host.run("uname -r").stdout.strip()
    return {
        "headers": host.package(f"linux-headers-{release}").is_installed,
        "sources": host.file("/usr/local/src/chardev").exists,
        "installed_module": host.file(f"/lib/modules/{release}/extra/chardev.ko").exists,
        "loaded": host.file("/sys/module/chardev").exists,
        "node": host.file("/dev/chardev").exists,
        "student": host.user(host.backend.get_hostname()).exists,
    }


def test_check_mode_on_a_fresh_host_reports_and_changes_nothing(host):
    if host.backend.get_hostname() != "alice":
        pytest.skip("one host is enough")
    before = lab_footprint(host)
    assert not any(before.values()), before
    lab = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks/chardev.yml"
    access = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks/access.yml"
    for playbook in (lab, access):
        run = run_playbook(host, playbook, "--check")
        stats = run.stats(host.backend.get_hostname())
        assert run.rc == 0 and stats.get("failures") == 0 and stats.get("unreachable") == 0, str(run)
        assert stats.get("changed", 0) > 0, f"check mode should report what it would do\n{run}"
    assert lab_footprint(host) == before, str(run)


# ---------------------------------------------------------------------------------------------------
# Isolation: a student with root in their VM reaches the package mirror, and nothing else of this
# machine, the other VMs or the internet.
# ---------------------------------------------------------------------------------------------------

CONNECT = """
import socket, sys
sock = socket.socket()
sock.settimeout(5)
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as exc:
    print("refused", exc)
"""


def connect_from_vm(host, address: str, port: int) -> str:
    result = host.run("python3 -c %s %s %s", CONNECT, address, str(port))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def control_node_service():
    """A service on the control node's loopback only, like a database or a web UI an instructor runs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    stop = threading.Event()

    def serve():
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _peer = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_vm_cannot_reach_the_control_nodes_loopback(host, control_node_service):
    # The service is there (seen from the control node) ...
    with socket.create_connection(("127.0.0.1", control_node_service), timeout=5):
        pass
    # ... and out of the VM's reach (10.0.2.2 is the control node in QEMU's user network).
    assert connect_from_vm(host, "10.0.2.2", control_node_service).startswith("refused")


def test_vm_cannot_reach_another_vms_ssh(host):
    me = host.backend.get_hostname()
    other_port = {"alice": 2272, "bob": 2271}[me]
    with socket.create_connection(("127.0.0.1", other_port), timeout=10) as sock:
        assert sock.recv(4).startswith(b"SSH-"), "the other VM's SSH answers on the control node"
    assert connect_from_vm(host, "10.0.2.2", other_port).startswith("refused")


def test_vm_reaches_its_mirror_only_through_the_relay(host):
    sources = host.run("cat /etc/apt/sources.list").stdout
    mirror = re.search(r"^deb https?://([^/\s:]+)", sources, re.M).group(1)
    relay_ip = host.run("getent hosts %s", mirror).stdout.split()[0]
    assert relay_ip.startswith("10.0.2.1"), relay_ip
    assert connect_from_vm(host, relay_ip, 80) == "connected"
    # The mirror's real address, straight: dropped, like the rest of the internet.
    real_ip = socket.getaddrinfo(mirror, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    assert connect_from_vm(host, real_ip, 80).startswith("refused")
    # No DNS: any other name fails at once (the fleet's relays are in /etc/hosts).
    lookup = host.run("timeout 10 getent hosts example.org")
    assert lookup.rc == 2, lookup
