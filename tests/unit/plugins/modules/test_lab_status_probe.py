"""plugins/modules/lab_status_probe.py: the probe of a lab host on fake /proc and /sys trees (StatusHost),
its parsers, its main(), and the taint recorded before the lab."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules import lab_status_probe
from ansible_collections.chardev_lab.lab.plugins.modules.lab_status_probe import (
    judge_node,
    parse_char_major,
    parse_module_version,
)
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    TAINT_AFTER_CRASH,
    TAINT_LAB,
    StatusHost,
    kernel_text,
    run_module,
)

TAINT_UNSIGNED_MODULE = TAINT_LAB  # O E: the lab's module loaded, no oops
PROC_DEVICES = kernel_text("bookworm", "proc-devices.txt")


@pytest.fixture
def host(tmp_path: Path) -> StatusHost:
    return StatusHost.everyday(tmp_path / "host")


@pytest.fixture
def ready(host: StatusHost) -> StatusHost:
    return host.make_ready()


# --- the probe --------------------------------------------------------------------------------------------


def test_probe_ready_host(ready: StatusHost) -> None:
    result = ready.probe()
    assert result == {
        "changed": False,
        "kernel": "6.1.0-56-amd64",
        "headers": True,
        "module_loaded": True,
        "module_version": "1.0-safe",
        "variant": "safe",
        "major": 240,
        "node_ok": True,
        "node": "character device 240:0",
        "crashed": False,
        "crash_reasons": [],
        "crash_phase": "fresh",
        "crash_record": None,
        "oops_count": 0,
        "stuck_tasks": [],
        "stuck_count": 0,
        "tainted": TAINT_UNSIGNED_MODULE,
        "taint_letters": "OE",
        "taint_baseline": None,
        "new_taint": TAINT_UNSIGNED_MODULE,
        "reboot_required": False,
        "check": None,
    }


def test_probe_reads_the_last_verdict_of_check_yml(ready: StatusHost) -> None:
    ready.write(
        "/run/chardev-lab/check.json",
        '{"verdict": "not_unloaded", "as_expected": null, "summary": "no crash: the safe variant", '
        '"hint": "load the crash variant", "explanation": null, "checked_at": "2026-11-26T14:00:00+00:00"}',
    )
    assert ready.probe()["check"] == {
        "verdict": "not_unloaded",
        "as_expected": None,
        "summary": "no crash: the safe variant",
        "explanation": None,
        "checked_at": "2026-11-26T14:00:00+00:00",
    }


def test_probe_crashed_6_1_with_an_x_victim(host: StatusHost) -> None:
    host.kernel("6.1.0-56-amd64", tainted=TAINT_AFTER_CRASH, oops_count=2)
    host.write("/proc/devices", "Character devices:\n  1 mem\n")  # the module is gone
    host.node(240)  # the node the crash left behind
    host.task(1576, "python3", "X")
    host.record()
    result = host.probe()
    assert result["crashed"] is True
    assert result["crash_reasons"] == [
        "crash record /run/chardev-lab/crashed.json (crashed)",
        "taint flag D (oops)",
        "oops_count 2",
    ]
    assert result["crash_record"] == {
        "mode": "read",
        "crashed_at": "2026-11-26T09:12:03+00:00",
        "kernel_release": "6.1.0-56-amd64",
        "as_expected": True,
    }
    assert result["stuck_tasks"] == [{"pid": 1576, "state": "X", "comm": "python3", "wchan": None}]
    assert result["module_loaded"] is False and result["variant"] is None
    assert result["node_ok"] is False
    assert result["node"] == "character device 240:0, but chardev is not in /proc/devices"
    assert result["taint_letters"] == "DOE"
    assert result["reboot_required"] is True


def test_probe_crashed_5_10_with_a_d_victim(host: StatusHost) -> None:
    # 5.10 has no /sys/kernel/oops_count and reads wchan as 0 for every sleeper (ORC, no frame pointers).
    host.kernel("5.10.0-46-amd64", tainted=TAINT_AFTER_CRASH)
    host.task(812, "chardev-victim", "D", "0")
    result = host.probe()
    assert result["oops_count"] is None
    assert result["crashed"] is True
    assert result["crash_reasons"] == ["taint flag D (oops)"]
    assert result["crash_record"] is None
    assert result["stuck_tasks"] == [{"pid": 812, "state": "D", "comm": "chardev-victim", "wchan": None}]


def test_probe_splice_crash_with_a_d_reader(host: StatusHost) -> None:
    host.kernel("6.12.57+deb13-amd64", tainted=TAINT_AFTER_CRASH, oops_count=2)
    host.task(845, "chardev-victim", "X")
    host.task(846, "chardev-reader", "D", "pipe_read")
    host.task(2001, "bash", "X")  # any X task is stuck, whatever its name
    host.record()
    result = host.probe()
    assert [(t["pid"], t["state"], t["comm"], t["wchan"]) for t in result["stuck_tasks"]] == [
        (845, "X", "chardev-victim", None),
        (846, "D", "chardev-reader", "pipe_read"),
        (2001, "X", "bash", None),
    ]
    assert result["stuck_count"] == 3
    assert host.probe(max_tasks=1)["stuck_tasks"] == result["stuck_tasks"][:1]
    assert host.probe(max_tasks=1)["stuck_count"] == 3


def test_probe_no_module(host: StatusHost) -> None:
    host.kernel("6.1.0-56-amd64", headers=False)
    host.write("/proc/devices", "Character devices:\n  1 mem\n")
    result = host.probe()
    assert result["module_loaded"] is False
    assert result["variant"] is None and result["module_version"] is None
    assert result["major"] is None
    assert result["node_ok"] is False and result["node"] == "/dev/chardev does not exist"
    assert result["headers"] is False
    assert result["crashed"] is False and result["reboot_required"] is False
    assert result["tainted"] == 0 and result["taint_letters"] == ""


def test_probe_wrong_major(ready: StatusHost) -> None:
    ready.node(239)
    result = ready.probe()
    assert result["node_ok"] is False
    assert result["node"] == "character device 239:0, but chardev's major is 240 (a stale node)"


def test_probe_dangling_headers_link_and_pending_reboot(host: StatusHost) -> None:
    host.kernel("6.1.0-56-amd64", headers=False)
    (host.root / "lib/modules/6.1.0-56-amd64").mkdir(parents=True)
    (host.root / "lib/modules/6.1.0-56-amd64/build").symlink_to("/nonexistent/linux-headers")
    host.write("/run/reboot-required", "*** System restart required ***\n")
    result = host.probe()
    assert result["headers"] is False
    assert result["crashed"] is False and result["reboot_required"] is True


def test_probe_unreadable_record_still_counts(host: StatusHost) -> None:
    host.kernel("6.1.0-56-amd64")
    host.record("{not json")
    result = host.probe()
    assert result["crash_record"] == {}
    assert result["crashed"] is True


def test_probe_other_device_path(ready: StatusHost) -> None:
    assert ready.probe(device="/dev/chardev0")["node"] == "/dev/chardev0 does not exist"
    ready.node(240, path="/dev/chardev0")
    assert ready.probe(device="/dev/chardev0")["node_ok"] is True


def test_probe_comm_prefixes(host: StatusHost) -> None:
    host.kernel("6.1.0-56-amd64")
    host.task(3000, "dd", "D", "pipe_read")
    assert host.probe()["stuck_tasks"] == []
    assert [t["pid"] for t in host.probe(stuck_comm_prefixes=["dd"])["stuck_tasks"]] == [3000]


@pytest.mark.parametrize(
    ("text", "variant"),
    [
        ("1.0-safe\n", "safe"),
        ("1.0-classic", "classic"),
        ("1.0-crash", "crash"),
        ("2.0", "unknown"),
        ("", None),
    ],
)
def test_parse_module_version(text: str, variant: str | None) -> None:
    assert parse_module_version(text) == variant
    assert parse_module_version(None) is None


def test_parse_char_major_ignores_block_devices() -> None:
    assert parse_char_major(PROC_DEVICES) == 240
    assert parse_char_major(PROC_DEVICES.replace("240 chardev", "240 other")) is None
    assert parse_char_major("") is None


def test_judge_node_kinds() -> None:
    fifo = SimpleNamespace(st_mode=stat.S_IFIFO | 0o644, st_rdev=0)
    assert judge_node(fifo, 240, "/dev/chardev") == (False, "/dev/chardev is not a character device")
    assert judge_node(None, 240, "/dev/chardev") == (False, "/dev/chardev does not exist")


def test_module_main_on_a_fake_tree(
    ready: StatusHost, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab_status_probe, "LSTAT", ready.lstat)
    result = run_module(lab_status_probe, {"_ansible_check_mode": True}, capsys, ready.system())
    assert result["changed"] is False and "failed" not in result
    assert result["variant"] == "safe" and result["node_ok"] is True


# --- the taint before the lab (a real host with a proprietary driver) ---------------------------------


def test_probe_new_taint_leaves_out_the_taint_recorded_before_the_lab(host: StatusHost) -> None:
    """A host tainted P (proprietary driver) from boot is clean after a reset when nothing was added since:
    the reset's check is new_taint == 0, not tainted == 0 (which such a host would fail for ever)."""
    proprietary = 1
    host.kernel("6.1.0-56-amd64", tainted=proprietary, oops_count=0)
    host.write("/proc/sys/kernel/random/boot_id", "b1\n")
    host.write(
        "/var/lib/chardev-lab/taint-before-lab.json",
        json.dumps({"boot_id": "b0", "tainted": proprietary, "recorded_at": "2026-11-26T09:00:00+00:00"}),
    )
    result = host.probe()
    assert (result["tainted"], result["new_taint"], result["crashed"]) == (proprietary, 0, False)
    # Without the record the whole taint counts: a local VM's fresh disk must be untainted.
    (host.root / "var/lib/chardev-lab/taint-before-lab.json").unlink()
    assert host.probe()["new_taint"] == proprietary


def test_probe_new_taint_shows_what_the_lab_added(host: StatusHost) -> None:
    host.kernel("6.1.0-56-amd64", tainted=1 | TAINT_AFTER_CRASH, oops_count=2)
    host.write("/var/lib/chardev-lab/taint-before-lab.json", json.dumps({"boot_id": "b0", "tainted": 1}))
    result = host.probe()
    assert result["new_taint"] == TAINT_AFTER_CRASH and result["crashed"] is True
