"""Bad input and faults on a real VM. Each test runs a playbook (the project's own, or a small one from
molecule/faults/playbooks) with ansible-playbook against molecule's inventory, and checks the return
code, the failure message and that the host is as it was. pytest runs the tests in file order: the
ones that change the host for good (lockdown, the killed VM) come last."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    taint_letters,
)
from lab_testinfra import evidence, fleet_dir, run_playbook

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
PLAYBOOKS = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "playbooks"
RUN_DIR = "/run/chardev-lab"
LOCKDOWN = "/sys/kernel/security/lockdown"


# ------------------------------------------------------------------ reading the host


def name_of(host) -> str:
    return host.backend.get_hostname()


def read(host, path: str) -> str | None:
    result = host.run(f"cat {path}")
    return result.stdout.strip() if result.rc == 0 else None


def module_state(host) -> dict:
    """The loaded chardev build, the installed one and the node: what a refused run must not touch."""
    release = host.run("uname -r").stdout.strip()
    ko = f"/lib/modules/{release}/extra/chardev.ko"
    return {
        "version": read(host, "/sys/module/chardev/version"),
        "srcversion": read(host, "/sys/module/chardev/srcversion"),
        "ko": host.run(f"stat -c '%i %s %Y' {ko}").stdout.strip(),
        "stamp": read(host, f"{ko}.stamp"),
        "node": host.run("stat -c '%F %t:%T %a %U:%G %i %Y %Z' /dev/chardev").stdout.strip(),
    }


def char_major(host) -> int | None:
    devices = host.file("/proc/devices").content_string.split("Block devices:")[0]
    majors = [int(ln.split()[0]) for ln in devices.splitlines() if ln.strip().endswith(" chardev")]
    return majors[0] if len(majors) == 1 else None


def node_major(host) -> int | None:
    fields = host.run("stat -c '%F|%t' /dev/chardev").stdout.strip().split("|")
    return int(fields[1], 16) if fields[0] == "character special file" else None


def tainted(host) -> int:
    return int(host.file("/proc/sys/kernel/tainted").content_string)


def crash_untouched(host) -> str | None:
    """None when the crash did not happen: no record, the safe build still loaded, no oops taint."""
    problems = []
    if host.file(f"{RUN_DIR}/crashed.json").exists:
        problems.append("a crash record exists")
    if read(host, "/sys/module/chardev/version") != "1.0-safe":
        problems.append("the safe module is no longer loaded")
    if "D" in taint_letters(tainted(host)):
        problems.append("the kernel has the oops taint (D)")
    if (fleet_dir() / "results" / f"{name_of(host)}.crash.json").exists():
        problems.append("a crash result was written on the control node")
    return "; ".join(problems) or None


def file_fingerprint(path: Path) -> tuple[str, int] | None:
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# ------------------------------------------------------------------ the cases


def test_unknown_variant_is_refused_by_the_argument_specs(host):
    before = module_state(host)
    run = run_playbook(host, PLAYBOOKS / "chardev.yml", "-e", "chardev_variant=bogus")
    assert run.rc != 0, str(run)
    failure = run.failure(name_of(host))
    assert "chardev_variant" in failure and "bogus" in failure, str(run)
    assert "Validation of arguments failed" in failure or "argument" in failure.lower(), str(run)
    assert run.stats(name_of(host)).get("changed") == 0, str(run)
    assert module_state(host) == before, (before, module_state(host))


def test_missing_headers_are_named(host):
    run = run_playbook(host, PLAYBOOKS / "build.yml", "-e", "faults_kernel_release=0.0.0-missing")
    assert run.rc != 0, str(run)
    failure = run.failure(name_of(host))
    assert "kernel_headers" in failure, str(run)
    assert "0.0.0-missing" in failure, str(run)
    assert not host.file("/lib/modules/0.0.0-missing").exists, evidence(host, "ls -la /lib/modules")


def test_failed_build_reports_the_compiler_errors_only(host):
    before = module_state(host)
    run = run_playbook(host, PLAYBOOKS / "build.yml", "-e", "faults_broken=true")
    assert run.rc != 0, str(run)
    result = run.task(name_of(host), "Build the safe variant in the scratch directory")
    msg = result.get("msg", "")
    assert "error:" in msg, str(run)
    assert "faults_broken" in msg, str(run)  # the offending source line, under the error
    # The error lines, not the whole make output.
    assert "Entering directory" not in msg and "CC [M]" not in msg, msg
    assert len(msg.splitlines()) <= 21, msg
    assert any("error:" in line for line in result.get("compiler_lines", [])), result
    assert module_state(host) == before, (before, module_state(host))


def test_node_path_taken_by_a_regular_file_is_left_alone(host):
    path = "/root/not-a-device"
    assert host.run(f"printf 'not a device\\n' > {path}").rc == 0
    fingerprint = f"stat -c '%F %i %s %a %Y' {path}; sha256sum {path}"
    before = host.run(fingerprint).stdout
    try:
        run = run_playbook(host, PLAYBOOKS / "node.yml", "-e", f"faults_node_path={path}")
        assert run.rc != 0, str(run)
        failure = run.failure(name_of(host))
        assert "regular file" in failure and "not a character device" in failure, str(run)
        assert host.run(fingerprint).stdout == before, evidence(host, f"ls -la {path}")
    finally:
        host.run(f"rm -f {path}")


def test_check_mode_changes_nothing(host):
    results_file = fleet_dir() / "results" / f"{name_of(host)}.json"
    before = module_state(host), file_fingerprint(results_file)
    assert before[1] is not None, f"converge wrote no {results_file}"
    run = run_playbook(host, PROJECT / "playbooks/chardev.yml", "--check")
    assert run.rc == 0, str(run)
    assert run.stats(name_of(host)).get("changed") == 0, str(run)
    after = module_state(host), file_fingerprint(results_file)
    assert after == before, (before, after)


@pytest.mark.parametrize("variant", ["classic", "safe"])
def test_module_loaded_from_another_build_is_replaced(host, variant):
    run = run_playbook(host, PLAYBOOKS / "chardev.yml", "-e", f"chardev_variant={variant}")
    assert run.rc == 0, str(run)
    # The other build was loaded: the role had to unload it before loading this one.
    unload = run.task(name_of(host), "Unload another build of the module")
    assert unload.get("changed"), str(run)
    assert read(host, "/sys/module/chardev/version") == f"1.0-{variant}", evidence(host, "dmesg | tail -20")
    assert node_major(host) == (major := char_major(host)) and major is not None, evidence(
        host, "cat /proc/devices", "ls -l /dev/chardev"
    )


def test_crash_is_skipped_on_a_host_not_opted_in(host):
    run = run_playbook(host, PROJECT / "playbooks/crash.yml", "-e", "chardev_crash_allowed=false")
    assert run.rc == 0, str(run)
    assert "not opted in" in run.messages(name_of(host)), str(run)
    assert crash_untouched(host) is None, crash_untouched(host)


def test_crash_is_refused_when_an_oops_would_panic(host):
    assert host.run("sysctl -w kernel.panic_on_oops=1").rc == 0
    try:
        run = run_playbook(host, PROJECT / "playbooks/crash.yml")
        assert run.rc != 0, str(run)
        failure = run.failure(name_of(host))
        assert "would panic the kernel" in failure and "panic_on_oops=1" in failure, str(run)
        assert read(host, "/proc/sys/kernel/panic_on_oops") == "1", "the role changed panic_on_oops"
        assert crash_untouched(host) is None, crash_untouched(host)
    finally:
        host.run("sysctl -w kernel.panic_on_oops=0")


def test_crash_is_refused_in_lockdown(host):
    # Raising lockdown cannot be undone before a reboot: this test runs after every test that needs
    # to load a module, and the last test resets the VM.
    if not host.file(LOCKDOWN).exists:
        pytest.skip(f"{LOCKDOWN} does not exist: this kernel has no lockdown LSM")
    assert host.run(f"echo integrity > {LOCKDOWN}").rc == 0, evidence(host, f"cat {LOCKDOWN}")
    assert "[integrity]" in read(host, LOCKDOWN)
    run = run_playbook(host, PROJECT / "playbooks/crash.yml")
    assert run.rc != 0, str(run)
    failure = run.failure(name_of(host))
    assert "lockdown" in failure and "[integrity]" in failure, str(run)
    assert "Key was rejected by service" in failure, str(run)
    assert crash_untouched(host) is None, crash_untouched(host)


def test_killed_vm_is_found_unreachable_reset_and_clean(host):
    vm_dir = fleet_dir() / "vms" / name_of(host)
    boot_id = read(host, "/proc/sys/kernel/random/boot_id")
    pid = int((vm_dir / "qemu.pid").read_text().strip())
    os.kill(pid, 9)
    run = run_playbook(host, PROJECT / "playbooks/reset.yml")
    console = vm_dir / "console.log"
    tail = "\n".join(console.read_text(errors="replace").splitlines()[-30:]) if console.exists() else ""
    assert run.rc == 0, f"{run}\n{console}, last lines:\n{tail}"
    probe = run.task(
        name_of(host), "Read kernel, headers, module, node, crash markers, stuck tasks and taint (read-only)"
    )
    assert probe.get("unreachable"), str(run)
    assert "reset (unreachable): rewind to the lab-ready point, else a fresh disk" in run.messages(
        name_of(host)
    ), str(run)
    # QEMU itself is gone, so is its monitor: no rewind, a fresh disk.
    assert "no rewind (cannot connect to QEMU's monitor" in run.messages(name_of(host)), str(run)
    assert run.task(name_of(host), "Check the clean state").get("failed") is not True, str(run)
    # A new boot of a fresh disk: SSH answers, no module, no taint.
    assert host.run("true").rc == 0
    assert read(host, "/proc/sys/kernel/random/boot_id") != boot_id
    assert not host.file("/sys/module/chardev").exists, evidence(host, "lsmod")
    assert tainted(host) == 0, evidence(host, "cat /proc/sys/kernel/tainted", "dmesg | tail -20")
    assert not host.file(f"{RUN_DIR}/crashed.json").exists
    assert not host.file("/root/faults-src").exists, "the disk is not a fresh overlay"
