"""Unit tests for plugins/modules/chardev_guard.py.

The target is a fake root directory holding the files the guard reads (/proc/sys/kernel/random/boot_id,
/etc/machine-id, /proc/1/environ, /.dockerenv, ...), a bare remote host to begin with; each test adds the
evidence of one case. The decision is checked through run(), which reads that tree the way the module
reads / on a target. Unreadable files (root without CAP_SYS_PTRACE, or not root) are simulated by
making the read raise PermissionError for that one path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System
from ansible_collections.chardev_lab.lab.plugins.modules import chardev_guard
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    FakeHost,
    FakeSystem,
    capture_warnings,
    run_module,
)

CONTROLLER_BOOT_ID = "23074dcb-6d6b-48ce-a44f-4de67ee446e7"
CONTROLLER_MACHINE_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"
TARGET_BOOT_ID = "9b2f6c1e-3f0a-4c55-9d1e-0a8e2f3b7c41"
TARGET_MACHINE_ID = "0f5e7d0c1b2a49e8a3c6d4b2e1f09876"
# /proc/1/environ of systemd on a Debian 12 VM, and of pid 1 in a podman container.
PID1_ENVIRON_HOST = "HOME=/\0init=/sbin/init\0NETWORK_SKIP_ENSLAVED=\0TERM=linux\0BOOT_IMAGE=/vmlinuz\0"
PID1_ENVIRON_PODMAN = "PATH=/usr/local/sbin:/usr/bin\0container=podman\0HOSTNAME=c1\0HOME=/root\0"


class GuardHost(FakeHost):
    """A target's files under a directory; starts as a bare host reached over SSH."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(root)
        self.monkeypatch = monkeypatch
        self.denied: set[str] = set()
        self.boot_id(TARGET_BOOT_ID)
        self.release("6.1.0-56-amd64")
        self.write("/etc/machine-id", TARGET_MACHINE_ID + "\n")
        self.write("/var/lib/dbus/machine-id", TARGET_MACHINE_ID + "\n")
        self.write(
            "/proc/self/status", "Name:\tpython3\nState:\tR (running)\nTracerPid:\t0\nUid:\t0\t0\t0\t0\n"
        )
        self.write("/proc/self/uid_map", "         0          0 4294967295\n")
        self.write("/proc/1/environ", PID1_ENVIRON_HOST)
        self.write("/proc/1/cgroup", "0::/init.scope\n")
        # pid 1's root is our root: not a chroot.
        self.path("/proc/1/root").symlink_to(self.root)
        self.install_denials()

    def chroot(self) -> None:
        """Make pid 1's root another directory, as seen from inside a chroot."""
        elsewhere = self.root.parent / "real-root"
        elsewhere.mkdir()
        self.path("/proc/1/root").unlink()
        self.path("/proc/1/root").symlink_to(elsewhere)

    def deny(self, path: str) -> None:
        """Reading (or stat-ing) this target path raises PermissionError, as for a process without the
        privilege; the tests run as any user, so file modes cannot be relied on."""
        self.denied.add(str(self.path(path)))

    def install_denials(self) -> None:
        read_bytes = Path.read_bytes
        stat = os.stat

        def guarded_read_bytes(path: Path) -> bytes:
            if str(path) in self.denied:
                raise PermissionError(13, "Permission denied", str(path))
            return read_bytes(path)

        def guarded_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if str(path) in self.denied:
                raise PermissionError(13, "Permission denied", str(path))
            return stat(path, *args, **kwargs)

        self.monkeypatch.setattr(Path, "read_bytes", guarded_read_bytes)
        self.monkeypatch.setattr(chardev_guard.os, "stat", guarded_stat)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GuardHost:
    return GuardHost(tmp_path / "root", monkeypatch)


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "inventory_hostname": "pc-01.classroom.example.org",
        "connection": "ssh",
        "controller_boot_id": CONTROLLER_BOOT_ID,
        "controller_machine_ids": [CONTROLLER_MACHINE_ID, ""],
        "allow_container": False,
        "crash": False,
    }
    return {**base, **overrides}


def guard(
    host: GuardHost, environ: dict[str, str] | None = None, check_mode: bool = False, **overrides: Any
) -> dict[str, Any]:
    return chardev_guard.run(params(**overrides), check_mode, FakeSystem(host.root), environ=environ or {})


def reasons(result: dict[str, Any]) -> list[str]:
    return [refusal["reason"] for refusal in result["refusals"]]


def assert_refused(result: dict[str, Any], reason: str, *in_message: str) -> None:
    assert result["allowed"] is False
    assert reason in reasons(result), result["refusals"]
    assert result["msg"].startswith("The chardev guard refuses this host")
    assert "make lab" in result["msg"]
    for text in in_message:
        assert text in result["msg"], result["msg"]
    assert "ansible_facts" not in result


# ---------------------------------------------------------------- a host that may be used


def test_bare_remote_host_is_allowed(host: GuardHost) -> None:
    result = guard(host)
    assert result["allowed"] is True
    assert result["refusals"] == [] and result["warnings"] == []
    assert "msg" not in result
    assert result["changed"] is False
    assert result["boot_id"] == TARGET_BOOT_ID
    assert result["controller_boot_id"] == CONTROLLER_BOOT_ID
    assert result["machine_ids"] == {
        "/etc/machine-id": TARGET_MACHINE_ID,
        "/var/lib/dbus/machine-id": TARGET_MACHINE_ID,
    }
    assert result["controller_machine_ids"] == [CONTROLLER_MACHINE_ID]
    assert result["container"] == {"detected": False, "evidence": []}
    assert result["chroot"]["detected"] is False
    assert result["unreadable"] == []
    assert result["connection_kind"] == "remote"
    # The role builds for the kernel the guard read (no setup round trip).
    assert result["ansible_facts"] == {"kernel": "6.1.0-56-amd64"}


def test_missing_optional_files_are_not_unknowns(host: GuardHost) -> None:
    # No D-Bus machine id, no cgroup file, no uid_map (a kernel without user namespaces).
    for path in ("/var/lib/dbus/machine-id", "/proc/1/cgroup", "/proc/self/uid_map"):
        host.remove(path)
    result = guard(host)
    assert result["allowed"] is True
    assert result["machine_ids"]["/var/lib/dbus/machine-id"] is None


def test_check_mode_decides_the_same_and_writes_nothing(host: GuardHost) -> None:
    before = sorted(str(p) for p in host.root.rglob("*"))
    assert guard(host, check_mode=True) == guard(host)
    host.write("/.dockerenv", "")
    assert guard(host, check_mode=True) == guard(host)
    assert sorted(str(p) for p in host.root.rglob("*")) == sorted([*before, str(host.path("/.dockerenv"))])


# ---------------------------------------------------------------- the control node: never allowed


def test_same_boot_id_over_ssh_is_the_control_node(host: GuardHost) -> None:
    # ssh to the control node itself, or into a container or chroot on it: the kernel is the same.
    host.write("/proc/sys/kernel/random/boot_id", CONTROLLER_BOOT_ID.upper() + "\n")
    result = guard(host, allow_container=True)
    assert_refused(result, "control_node", "the control node's own kernel", CONTROLLER_BOOT_ID)
    assert "chardev_allow_container" not in result["msg"]  # no remedy that could not help


@pytest.mark.parametrize(
    "connection",
    [
        "local",
        "ansible.builtin.local",
        "chroot",
        "community.general.chroot",
        "community.docker.nsenter",
    ],
)
def test_connections_on_the_control_node_are_refused_whatever_the_ids(
    host: GuardHost, connection: str
) -> None:
    # The bypass of the old guard: a local connection whose systemd and D-Bus machine ids differ from
    # each other and from the control node's. Even boot ids that look different do not help.
    host.write("/var/lib/dbus/machine-id", "ffffffffffffffffffffffffffffffff\n")
    result = guard(host, connection=connection, allow_container=True)
    assert_refused(result, "control_node", f"ansible_connection is {connection}")
    assert result["connection_kind"] == "controller"
    assert "chardev_allow_container" not in result["msg"]


def test_local_connection_is_refused_when_no_boot_id_can_be_read(host: GuardHost) -> None:
    host.remove("/proc/sys/kernel/random/boot_id")
    result = guard(host, connection="local", controller_boot_id="")
    assert reasons(result).count("control_node") == 1
    assert reasons(result).count("unknown") == 2
    assert f"{chardev_guard.BOOT_ID}: missing" in result["unreadable"]


def test_machine_id_shared_with_the_control_node(host: GuardHost) -> None:
    # Only the D-Bus id matches (the old guard compared the systemd id only): still refused.
    host.write("/var/lib/dbus/machine-id", CONTROLLER_MACHINE_ID + "\n")
    result = guard(host)
    assert_refused(
        result,
        "control_node",
        f"/var/lib/dbus/machine-id {CONTROLLER_MACHINE_ID}",
        "systemd-machine-id-setup",
    )


def test_uninitialized_machine_ids_are_not_compared(host: GuardHost) -> None:
    host.write("/etc/machine-id", "uninitialized\n")
    host.write("/var/lib/dbus/machine-id", "")
    result = guard(host, controller_machine_ids=["uninitialized", "", "not-an-id"])
    assert result["allowed"] is True
    assert result["controller_machine_ids"] == []


def test_the_module_has_no_option_that_allows_the_control_node() -> None:
    # chardev_allow_control_node is gone: the only allow_* option is allow_container, and it does not
    # unlock the control node (test_same_boot_id_over_ssh_is_the_control_node, the connections above).
    assert [name for name in chardev_guard.ARGUMENT_SPEC if "allow" in name] == ["allow_container"]


# ---------------------------------------------------------------- the host's name: a path on the control node


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../../x", "it holds '/'"),
        ("..", "it starts with '.'"),
        (".hidden", "it starts with '.'"),
        ("-rf", "it starts with '-'"),
        ("a..b", "it holds '..'"),
        ("pc 01", "it holds ' '"),
        ("pc/01", "it holds '/'"),
        ("", "it is empty"),
        ("x" * 64, "64 characters long"),
        ("2001:db8::1", "it holds ':'"),
    ],
)
def test_unsafe_host_name_is_refused_whatever_the_options(host: GuardHost, name: str, why: str) -> None:
    # results/<host>.json, vms/<host>, accounts/<host>.json: ../../../x would write outside the state
    # directory. allow_container allows nothing here, and the host itself is a fine remote host.
    result = guard(host, inventory_hostname=name, allow_container=True)
    assert_refused(result, "host_name", why, "Rename the host in the inventory")
    assert reasons(result) == ["host_name"]
    assert result["inventory_hostname"] == name


@pytest.mark.parametrize(
    "name", ["pc-01.classroom.example.org", "alice", "lab-vm-1", "192.0.2.13", "_x", "x" * 63]
)
def test_safe_host_names_pass(host: GuardHost, name: str) -> None:
    assert guard(host, inventory_hostname=name)["allowed"] is True


def test_unsafe_host_name_on_the_control_node_says_both(host: GuardHost) -> None:
    # The control node's remedies replace the container's, but the name must be fixed all the same.
    host.write("/proc/sys/kernel/random/boot_id", CONTROLLER_BOOT_ID + "\n")
    result = guard(host, inventory_hostname="../x")
    assert reasons(result) == ["host_name", "control_node"]
    assert "Rename the host" in result["msg"] and chardev_guard.NEVER in result["msg"]


def test_the_host_name_is_a_required_option() -> None:
    assert chardev_guard.ARGUMENT_SPEC["inventory_hostname"] == {"type": "str", "required": True}


# ---------------------------------------------------------------- what cannot be read fails safe


@pytest.mark.parametrize("content", [None, "", "garbage\n"], ids=["missing", "empty", "garbage"])
def test_unreadable_target_boot_id_is_refused(host: GuardHost, content: str | None) -> None:
    if content is None:
        host.remove("/proc/sys/kernel/random/boot_id")
    else:
        host.write("/proc/sys/kernel/random/boot_id", content)
    result = guard(host, allow_container=True)
    assert_refused(result, "unknown", f"the target's {chardev_guard.BOOT_ID} could not be read")
    assert result["boot_id"] is None


def test_permission_denied_on_the_boot_id(host: GuardHost) -> None:
    host.deny("/proc/sys/kernel/random/boot_id")
    assert_refused(guard(host), "unknown", "permission denied")


@pytest.mark.parametrize("controller_boot_id", ["", "None", "not-a-uuid"])
def test_unreadable_controller_boot_id_is_refused(host: GuardHost, controller_boot_id: str) -> None:
    result = guard(host, controller_boot_id=controller_boot_id, allow_container=True)
    assert_refused(result, "unknown", f"the control node's {chardev_guard.BOOT_ID} could not be read")
    assert result["controller_boot_id"] is None


@pytest.mark.parametrize("path", ["/proc/1/environ", "/proc/1/root", "/proc/self/status"])
def test_unreadable_containment_evidence_is_a_possible_container(host: GuardHost, path: str) -> None:
    host.deny(path)
    result = guard(host)
    assert_refused(result, "unknown", f"could not read {path}: permission denied", "become: true")
    assert f"{path}: permission denied" in result["unreadable"]
    if path == "/proc/1/root":
        assert result["chroot"]["detected"] is None
    else:
        assert result["container"]["detected"] is None
    # The worst case of an unknown is a container: allow_container accepts it (with a warning), the
    # crash variant never does.
    allowed = guard(host, allow_container=True)
    assert allowed["allowed"] is True
    assert [f"could not read {path}: permission denied" in w for w in allowed["warnings"]] == [True]
    assert_refused(
        guard(host, allow_container=True, crash=True),
        "unknown",
        "The crash variant is never run in a container or chroot.",
    )


def test_pid1_environ_missing_is_unknown(host: GuardHost) -> None:
    host.remove("/proc/1/environ")
    assert_refused(guard(host), "unknown", "/proc/1/environ: missing")


# ---------------------------------------------------------------- containers, as systemd detects them


def dockerenv(host: GuardHost) -> None:
    host.write("/.dockerenv", "")


def containerenv(host: GuardHost) -> None:
    host.write("/run/.containerenv", 'engine="podman-4.3.1"\n')


def environ_podman(host: GuardHost) -> None:
    host.write("/proc/1/environ", PID1_ENVIRON_PODMAN)


def environ_lxc(host: GuardHost) -> None:
    host.write("/proc/1/environ", "container=lxc\0TERM=linux\0")


def environ_unknown_runtime(host: GuardHost) -> None:
    host.write("/proc/1/environ", "container=oci\0")


def nspawn_file(host: GuardHost) -> None:
    host.write("/run/systemd/container", "systemd-nspawn\n")


def container_manager_file(host: GuardHost) -> None:
    host.write("/run/host/container-manager", "systemd-nspawn\n")


def empty_manager_file(host: GuardHost) -> None:
    host.write("/run/systemd/container", "")


def wsl2(host: GuardHost) -> None:
    host.write("/proc/sys/kernel/osrelease", "5.15.153.1-microsoft-standard-WSL2\n")


def wsl1(host: GuardHost) -> None:
    host.write("/proc/sys/kernel/osrelease", "4.4.0-19041-Microsoft\n")


def openvz(host: GuardHost) -> None:
    host.path("/proc/vz").mkdir(parents=True)


def proot(host: GuardHost) -> None:
    host.write("/proc/self/status", "Name:\tpython3\nTracerPid:\t4242\n")
    host.write("/proc/4242/comm", "proot\n")


def cgroup_docker(host: GuardHost) -> None:
    host.write("/proc/1/cgroup", "12:pids:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n0::/\n")


def cgroup_kubepods(host: GuardHost) -> None:
    host.write("/proc/1/cgroup", "0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-ab.scope\n")


def cgroup_lxc(host: GuardHost) -> None:
    host.write("/proc/1/cgroup", "0::/lxc.payload.c1/init.scope\n")


def user_namespace(host: GuardHost) -> None:
    host.write("/proc/self/uid_map", "         0     100000      65536\n")


CONTAINERS: list[tuple[str, Callable[[GuardHost], None], str, str]] = [
    ("docker /.dockerenv", dockerenv, "docker", "/.dockerenv exists"),
    ("podman /run/.containerenv", containerenv, "podman", "/run/.containerenv exists"),
    ("podman container= of pid 1", environ_podman, "podman", "container=podman in /proc/1/environ"),
    ("lxc container= of pid 1", environ_lxc, "lxc", "container=lxc in /proc/1/environ"),
    ("oci container= of pid 1", environ_unknown_runtime, "oci", "container=oci in /proc/1/environ"),
    ("nspawn /run/systemd/container", nspawn_file, "systemd-nspawn", "/run/systemd/container exists"),
    ("nspawn container-manager", container_manager_file, "systemd-nspawn", "container-manager exists"),
    ("unknown runtime empty manager file", empty_manager_file, "unknown runtime", "/run/systemd/container"),
    ("wsl2 osrelease", wsl2, "wsl", "microsoft-standard-WSL2"),
    ("wsl1 osrelease", wsl1, "wsl", "4.4.0-19041-Microsoft"),
    ("openvz /proc/vz without /proc/bc", openvz, "openvz", "/proc/vz exists without /proc/bc"),
    ("proot tracer", proot, "proot", "traced by process 4242 (proot)"),
    ("docker cgroup v1", cgroup_docker, "docker", "cgroup /docker/0123abcd of pid 1"),
    ("kubernetes cgroup", cgroup_kubepods, "kubernetes", "kubepods.slice"),
    ("lxc cgroup", cgroup_lxc, "lxc", "lxc.payload.c1"),
    ("user namespace uid_map", user_namespace, "user namespace", "0 100000 65536"),
]


@pytest.mark.parametrize(
    ("make", "runtime", "source"), [c[1:] for c in CONTAINERS], ids=[c[0] for c in CONTAINERS]
)
def test_container_on_a_remote_host(
    host: GuardHost, make: Callable[[GuardHost], None], runtime: str, source: str
) -> None:
    make(host)
    result = guard(host)
    assert_refused(result, "container", f"({runtime})", source, "chardev_allow_container: true")
    assert result["container"]["detected"] is True
    assert runtime in [e["runtime"] for e in result["container"]["evidence"]]

    allowed = guard(host, allow_container=True)
    assert allowed["allowed"] is True
    assert len(allowed["warnings"]) == 1 and source in allowed["warnings"][0]
    assert allowed["ansible_facts"]["kernel"]

    for allow in (False, True):
        crash = guard(host, allow_container=allow, crash=True)
        assert_refused(crash, "container", "crash variant", "never run in a container or chroot")
        assert "chardev_allow_container: true" not in crash["msg"]


def test_openvz_host_is_not_a_container(host: GuardHost) -> None:
    host.path("/proc/vz").mkdir(parents=True)
    host.path("/proc/bc").mkdir(parents=True)
    assert guard(host)["allowed"] is True


def test_traced_by_something_else_than_proot(host: GuardHost) -> None:
    host.write("/proc/self/status", "TracerPid:\t77\n")
    host.write("/proc/77/comm", "strace\n")
    assert guard(host)["allowed"] is True


def test_empty_container_variable_is_no_container(host: GuardHost) -> None:
    host.write("/proc/1/environ", "container=\0HOME=/\0")
    assert guard(host)["allowed"] is True


def test_container_variable_in_the_modules_environment(host: GuardHost) -> None:
    result = guard(host, environ={"container": "podman", "PATH": "/usr/bin"})
    assert_refused(result, "container", "container=podman in the module's environment")


def test_several_findings_are_all_cited(host: GuardHost) -> None:
    dockerenv(host)
    cgroup_docker(host)
    result = guard(host)
    assert [e["runtime"] for e in result["container"]["evidence"]] == ["docker", "docker"]
    assert "/.dockerenv exists; cgroup /docker/0123abcd" in result["msg"]


@pytest.mark.parametrize(
    "connection", ["docker", "community.docker.docker", "containers.podman.podman", "community.general.lxd"]
)
def test_container_connection_to_a_remote_host(host: GuardHost, connection: str) -> None:
    # A container engine on another machine (boot ids differ): a container like any other.
    result = guard(host, connection=connection)
    assert_refused(result, "container", f"ansible_connection is {connection}")
    assert result["connection_kind"] == "container"
    assert guard(host, connection=connection, allow_container=True)["allowed"] is True
    assert_refused(guard(host, connection=connection, allow_container=True, crash=True), "container")


# ---------------------------------------------------------------- chroot, as systemd detects it


def test_chroot_on_a_remote_host(host: GuardHost) -> None:
    host.chroot()
    result = guard(host)
    assert_refused(result, "chroot", "a chroot (chroot)", "/proc/1/root is device")
    assert result["chroot"]["detected"] is True
    allowed = guard(host, allow_container=True)
    assert allowed["allowed"] is True and "chroot" in allowed["warnings"][0]
    assert_refused(guard(host, allow_container=True, crash=True), "chroot", "crash variant")


def test_chroot_and_container_together(host: GuardHost) -> None:
    host.chroot()
    dockerenv(host)
    result = guard(host)
    assert reasons(result) == ["container"]
    assert "a container (docker, chroot)" in result["msg"]


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("connection", "kind"),
    [
        ("ssh", "remote"),
        ("ansible.builtin.ssh", "remote"),
        ("paramiko_ssh", "remote"),
        ("smart", "remote"),
        ("LOCAL", "controller"),
        ("community.general.chroot", "controller"),
        ("community.docker.nsenter", "controller"),
        ("community.docker.docker_api", "container"),
        ("kubernetes.core.kubectl", "container"),
        ("community.general.incus", "container"),
    ],
)
def test_connection_kind(connection: str, kind: str) -> None:
    assert chardev_guard.connection_kind(connection) == kind


def test_read_file_reports_why(host: GuardHost) -> None:
    assert chardev_guard.read_file(FakeSystem(host.root), "/nope").error == "missing"
    host.deny("/etc/machine-id")
    assert chardev_guard.read_file(FakeSystem(host.root), "/etc/machine-id").error == "permission denied"
    assert chardev_guard.read_file(FakeSystem(host.root), "/proc/1/environ").text == PID1_ENVIRON_HOST


def test_this_machine_is_refused_as_the_control_node() -> None:
    """The real readers on the real /: this machine, compared with itself, is the control node."""
    boot_id = Path(chardev_guard.BOOT_ID).read_text().strip()
    result = chardev_guard.run(params(controller_boot_id=boot_id, allow_container=True), False, System())
    assert result["boot_id"] == boot_id
    assert_refused(result, "control_node", boot_id)


# ---------------------------------------------------------------- main(), through AnsibleModule


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: GuardHost, **args: Any
) -> dict[str, Any]:
    monkeypatch.setattr(chardev_guard, "run", partial(chardev_guard.run, environ={}))
    return run_module(chardev_guard, params(**args), capsys, FakeSystem(host.root))


def test_main_fails_with_the_evidence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: GuardHost
) -> None:
    dockerenv(host)
    result = run_main(capsys, monkeypatch, host)
    assert result["failed"] is True
    assert "a container (docker)" in result["msg"]
    assert result["container"]["evidence"] == [{"runtime": "docker", "source": "/.dockerenv exists"}]
    assert result["boot_id"] == TARGET_BOOT_ID


def test_main_allows_with_a_warning_and_sets_the_kernel_fact(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: GuardHost
) -> None:
    dockerenv(host)
    # Warnings are AnsibleModule's process-wide state (and their format changes between versions):
    # record what the module passes to warn().
    warned = capture_warnings(monkeypatch)
    result = run_main(capsys, monkeypatch, host, allow_container=True, _ansible_check_mode=True)
    assert not result.get("failed")
    assert result["changed"] is False
    assert result["ansible_facts"] == {"kernel": "6.1.0-56-amd64"}
    assert len(warned) == 1
    assert "allowed by chardev_allow_container: /.dockerenv exists" in warned[0]
