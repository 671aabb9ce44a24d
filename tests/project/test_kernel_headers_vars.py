"""Unit tests of the kernel_headers role's package selection, without a target host.

The role picks its per-platform vars file with first_found (distribution_major, distribution, os_family,
default) and renders package names from ansible_facts['kernel']. These tests load the role's own YAML
with Ansible's DataLoader, emulate first_found for fake fact dicts and render the expressions with
Ansible's Templar, so the families we have no VM for are covered by the same templates the role runs.
The argument spec is tested by running ansible-playbook on localhost with the role by its FQCN (only the
validation task runs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import ansible_command, ansible_env

ROLE = Path(__file__).resolve().parents[2] / "roles" / "kernel_headers"
LOADER = DataLoader()


def load(rel: str) -> Any:
    return LOADER.load_from_file(str(ROLE / rel), trusted_as_template=True)


def facts(distribution: str, major: str, os_family: str, kernel: str) -> dict[str, str]:
    return {
        "distribution": distribution,
        "distribution_major_version": major,
        "os_family": os_family,
        "kernel": kernel,
        "pkg_mgr": "auto",
    }


def templar(fact_dict: dict[str, str], **overrides: Any) -> tuple[Templar, str]:
    """A Templar holding what the role holds after set_vars.yml: defaults, vars/main.yml, the facts and
    the vars file first_found picks. Returns it and the name of the chosen file."""
    variables: dict[str, Any] = {**load("defaults/main.yml"), **load("vars/main.yml")}
    variables.update(overrides)
    variables["ansible_facts"] = fact_dict
    variables["role_path"] = str(ROLE)
    probe = Templar(loader=LOADER, variables=variables)
    candidates = probe.template(variables["__kernel_headers_vars_files"])
    chosen = next(name for name in candidates if (ROLE / "vars" / name).is_file())
    variables.update(load(f"vars/{chosen}"))
    return Templar(loader=LOADER, variables=variables), chosen


def render(t: Templar, expression: str) -> Any:
    return t.template(trust_as_template(expression))


CASES = {
    "debian12": (
        facts("Debian", "12", "Debian", "6.1.0-56-amd64"),
        "Debian.yml",
        ["linux-headers-6.1.0-56-amd64", "build-essential", "kmod"],
        ["linux-image-amd64", "linux-headers-amd64"],
    ),
    "debian11": (
        facts("Debian", "11", "Debian", "5.10.0-35-amd64"),
        "Debian.yml",
        ["linux-headers-5.10.0-35-amd64", "build-essential", "kmod"],
        ["linux-image-amd64", "linux-headers-amd64"],
    ),
    "debian13-arm64": (
        facts("Debian", "13", "Debian", "6.12.48+deb13-arm64"),
        "Debian.yml",
        ["linux-headers-6.12.48+deb13-arm64", "build-essential", "kmod"],
        ["linux-image-arm64", "linux-headers-arm64"],
    ),
    "debian12-cloud": (
        facts("Debian", "12", "Debian", "6.1.0-56-cloud-amd64"),
        "Debian.yml",
        ["linux-headers-6.1.0-56-cloud-amd64", "build-essential", "kmod"],
        ["linux-image-cloud-amd64", "linux-headers-cloud-amd64"],
    ),
    "ubuntu2404": (
        facts("Ubuntu", "24", "Debian", "6.8.0-45-generic"),
        "Debian.yml",
        ["linux-headers-6.8.0-45-generic", "build-essential", "kmod"],
        ["linux-image-generic", "linux-headers-generic"],
    ),
    "rhel9": (
        facts("RedHat", "9", "RedHat", "5.14.0-427.13.1.el9_4.x86_64"),
        "RedHat.yml",
        ["kernel-devel-5.14.0-427.13.1.el9_4.x86_64", "gcc", "make", "elfutils-libelf-devel"],
        ["kernel", "kernel-devel"],
    ),
    "rocky9": (
        facts("Rocky", "9", "RedHat", "5.14.0-503.14.1.el9_5.x86_64"),
        "RedHat.yml",
        ["kernel-devel-5.14.0-503.14.1.el9_5.x86_64", "gcc", "make", "elfutils-libelf-devel"],
        ["kernel", "kernel-devel"],
    ),
    "fedora41": (
        facts("Fedora", "41", "RedHat", "6.11.4-301.fc41.x86_64"),
        "RedHat.yml",
        ["kernel-devel-6.11.4-301.fc41.x86_64", "gcc", "make", "elfutils-libelf-devel"],
        ["kernel", "kernel-devel"],
    ),
    "opensuse-leap-15.6": (
        facts("openSUSE Leap", "15", "Suse", "6.4.0-150600.23.25-default"),
        "Suse.yml",
        ["kernel-default-devel=6.4.0-150600.23.25", "gcc", "make"],
        ["kernel-default", "kernel-default-devel"],
    ),
    "arch": (
        facts("Archlinux", "NA", "Archlinux", "6.11.5-arch1-1"),
        "Archlinux.yml",
        ["linux-headers", "base-devel"],
        ["linux", "linux-headers"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_platform_packages(case: str) -> None:
    fact_dict, wanted_file, packages, upgrade = CASES[case]
    t, chosen = templar(fact_dict)
    assert chosen == wanted_file
    assert render(t, "{{ __kernel_headers_platform_known }}") is True
    assert render(t, "{{ __kernel_headers_packages }}") == packages
    assert render(t, "{{ __kernel_headers_upgrade_packages }}") == upgrade


def test_first_found_order_prefers_the_most_specific_file() -> None:
    t, _chosen = templar(facts("Debian", "12", "Debian", "6.1.0-56-amd64"))
    assert render(t, "{{ __kernel_headers_vars_files }}") == [
        "Debian_12.yml",
        "Debian.yml",
        "Debian.yml",
        "default.yml",
    ]
    t, _chosen = templar(facts("openSUSE Leap", "15", "Suse", "6.4.0-150600.23.25-default"))
    assert render(t, "{{ __kernel_headers_vars_files }}") == [
        "openSUSE Leap_15.yml",
        "openSUSE Leap.yml",
        "Suse.yml",
        "default.yml",
    ]


def test_user_packages_replace_the_platform_list() -> None:
    t, _chosen = templar(
        facts("Debian", "12", "Debian", "6.1.0-56-amd64"), kernel_headers_packages=["my-headers"]
    )
    assert render(t, "{{ __kernel_headers_packages }}") == ["my-headers"]


def unknown_platform_fail_task() -> dict[str, Any]:
    return next(task for task in load("tasks/set_vars.yml") if "ansible.builtin.fail" in task)


def test_unknown_platform_fails_with_a_clear_message() -> None:
    t, chosen = templar(facts("Plan9", "4", "Plan9", "9.4-pc64"))
    assert chosen == "default.yml"
    task = unknown_platform_fail_task()
    assert all(render(t, f"{{{{ {cond} }}}}") for cond in task["when"])
    assert render(t, task["ansible.builtin.fail"]["msg"]) == (
        "kernel_headers does not know how to install headers on Plan9 4 (os_family Plan9); "
        "set kernel_headers_packages"
    )


def test_unknown_platform_with_user_packages_goes_on() -> None:
    t, _chosen = templar(facts("Plan9", "4", "Plan9", "9.4-pc64"), kernel_headers_packages=["kernel-devel"])
    task = unknown_platform_fail_task()
    assert not all(render(t, f"{{{{ {cond} }}}}") for cond in task["when"])
    assert render(t, "{{ __kernel_headers_packages }}") == ["kernel-devel"]


def missing_fact_task() -> dict[str, Any]:
    block = next(task for task in load("tasks/install.yml") if "rescue" in task)
    return next(
        task
        for task in block["rescue"]
        if "__kernel_headers_missing" in task.get("ansible.builtin.set_fact", {})
    )


def headers_missing(fact_dict: dict[str, str], check_mode: bool, failed: Any, retry: Any) -> bool:
    """Render the rescue's verdict: `failed` is the install's result, `retry` the retry's (real runs)."""
    task = missing_fact_task()
    t, _chosen = templar(
        fact_dict, ansible_failed_result=failed, __kernel_headers_retry=retry, ansible_check_mode=check_mode
    )
    t.available_variables = {**t.available_variables, **task["vars"]}
    return render(t, task["ansible.builtin.set_fact"]["__kernel_headers_missing"])


# What the package modules return when the running kernel's headers are not in the mirror.
APT_NO_MATCH = {
    "failed": True,
    "changed": False,
    "msg": "No package matching 'linux-headers-6.1.0-13-amd64' is available",
}
APT_GET_NO_CANDIDATE = {
    "failed": True,
    "changed": False,
    "msg": '\'/usr/bin/apt-get -y -o "Dpkg::Options::=--force-confdef" install '
    "'linux-headers-6.1.0-13-amd64'' failed: E: Package 'linux-headers-6.1.0-13-amd64' has no "
    "installation candidate\n",
    "rc": 100,
    "stderr": "E: Package 'linux-headers-6.1.0-13-amd64' has no installation candidate\n",
    "stdout": "Reading package lists...\nBuilding dependency tree...\n",
}
APT_OTHER_PACKAGE = {
    "failed": True,
    "changed": False,
    "msg": "No package matching 'no-such-thing' is available",
}
APT_LOCKED = {
    "failed": True,
    "changed": False,
    "msg": "Failed to lock apt for exclusive operation: Failed to lock directory",
}
DNF_NO_MATCH = {
    "failed": True,
    "changed": False,
    "failures": ["No package kernel-devel-5.14.0-70.13.1.el9_0.x86_64 available."],
    "msg": "Failed to install some of the specified packages",
    "rc": 1,
    "results": [],
}
ZYPPER_NO_PROVIDER = {
    "failed": True,
    "changed": False,
    "msg": "Zypper run command failed with return code 104.",
    "rc": 104,
    "stdout": "<message type=\"error\">No provider of 'kernel-default-devel=6.4.0-150600.23.10' found."
    "</message>",
}


@pytest.mark.parametrize(
    ("fact_dict", "failure", "missing"),
    [
        (facts("Debian", "12", "Debian", "6.1.0-13-amd64"), APT_NO_MATCH, True),
        (facts("Debian", "12", "Debian", "6.1.0-13-amd64"), APT_GET_NO_CANDIDATE, True),
        (facts("Debian", "12", "Debian", "6.1.0-13-amd64"), APT_OTHER_PACKAGE, False),
        (facts("Debian", "12", "Debian", "6.1.0-13-amd64"), APT_LOCKED, False),
        (facts("RedHat", "9", "RedHat", "5.14.0-70.13.1.el9_0.x86_64"), DNF_NO_MATCH, True),
        (facts("openSUSE Leap", "15", "Suse", "6.4.0-150600.23.10-default"), ZYPPER_NO_PROVIDER, True),
        (facts("Plan9", "4", "Plan9", "9.4-pc64"), APT_NO_MATCH, False),
    ],
    ids=[
        "apt-no-match",
        "apt-get-no-candidate",
        "apt-other-package",
        "apt-locked",
        "dnf",
        "zypper",
        "unknown-platform",
    ],
)
def test_headers_missing_from_the_mirror_is_told_apart(
    fact_dict: dict[str, str], failure: dict[str, Any], missing: bool
) -> None:
    # A real run judges the retry (after refreshing the package lists), check mode the first attempt.
    assert headers_missing(fact_dict, False, failure, failure) is missing
    assert headers_missing(fact_dict, True, failure, {"skipped": True, "changed": False}) is missing


def test_headers_found_after_refreshing_the_lists() -> None:
    debian = facts("Debian", "12", "Debian", "6.1.0-13-amd64")
    assert headers_missing(debian, False, APT_NO_MATCH, {"changed": True, "failed": False}) is False


def verify_condition(**state: Any) -> bool:
    task = next(task for task in load("tasks/verify.yml") if "ansible.builtin.assert" in task)
    t, _chosen = templar(facts("Debian", "12", "Debian", "6.1.0-56-amd64"), **state)
    return render(t, f"{{{{ {task['when']} }}}}")


def test_verify_is_strict_outside_check_mode() -> None:
    assert verify_condition(ansible_check_mode=False, kernel_headers_reboot_required=False) is True


def test_verify_tolerates_what_check_mode_would_install() -> None:
    would_install = {"changed": True}
    assert (
        verify_condition(
            ansible_check_mode=True, kernel_headers_reboot_required=False, __kernel_headers_apt=would_install
        )
        is False
    )
    assert verify_condition(ansible_check_mode=True, kernel_headers_reboot_required=True) is False
    # Nothing to install in check mode: the build directory must already be there.
    assert (
        verify_condition(
            ansible_check_mode=True,
            kernel_headers_reboot_required=False,
            __kernel_headers_apt={"changed": False},
            __kernel_headers_package={"changed": False, "skipped": True},
        )
        is True
    )


@pytest.mark.parametrize(
    ("extra_vars", "wanted"),
    [
        ('{"kernel_headers_upgrade_ok": "maybe"}', "kernel_headers_upgrade_ok"),
        ('{"kernel_headers_packages": {"linux-headers": 1}}', "kernel_headers_packages"),
        ('{"kernel_headers_update_cache": [1, 2]}', "kernel_headers_update_cache"),
    ],
)
def test_argument_spec_refuses_bad_values(tmp_path: Path, extra_vars: str, wanted: str) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  roles:\n"
        "    - chardev_lab.lab.kernel_headers\n"
        "  post_tasks:\n"
        "    - name: Must not run\n"
        "      ansible.builtin.debug:\n"
        "        msg: ROLE RAN PAST VALIDATION\n",
        encoding="utf-8",
    )
    env = ansible_env(
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
    )
    proc = subprocess.run(
        [
            ansible_command("ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            extra_vars,
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Validation of arguments failed" in output, output
    assert f"argument '{wanted}' is of type" in output, output
    assert "ROLE RAN PAST VALIDATION" not in output
    assert "Load the platform's packages" not in output
