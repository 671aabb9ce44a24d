"""The lab_status role's modules: the probe on fake /proc and /sys trees, the state decision, the report
files (status.json, meta.json, index.html) and the terminal table."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lab_status_probe
import lab_status_report
import pytest
from ansible.module_utils.testing import patch_module_args
from lab_status_probe import judge_node, parse_char_major, parse_module_version, probe
from lab_status_report import build_row, build_rows, decide_state, render_html, render_table, write_report

TAINT_AFTER_CRASH = 12416  # D O E
TAINT_UNSIGNED_MODULE = 12288  # O E: the lab's module loaded, no oops
PROC_DEVICES = """Character devices:
  1 mem
  4 tty
240 chardev
254 gpiochip

Block devices:
  8 sd
241 chardev
"""

# --- a fake host ------------------------------------------------------------------------------------------


class FakeHost:
    """A directory tree with the files the probe reads, and a fake lstat for the device node."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, Any] = {}
        #: The kernel log the probe reads (the real one is never read by these tests).
        self.log: list[str] = []

    def write(self, path: str, text: str) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def kernel(
        self, release: str, tainted: int = 0, oops_count: int | None = None, headers: bool = True
    ) -> None:
        self.write("/proc/sys/kernel/osrelease", release + "\n")
        self.write("/proc/sys/kernel/tainted", f"{tainted}\n")
        if oops_count is not None:
            self.write("/sys/kernel/oops_count", f"{oops_count}\n")
        if headers:
            (self.root / f"lib/modules/{release}/build").mkdir(parents=True)

    def module(self, variant: str, major: int = 240) -> None:
        self.write("/sys/module/chardev/version", f"1.0-{variant}\n")
        self.write("/proc/devices", PROC_DEVICES.replace("240 chardev", f"{major} chardev"))

    def node(self, major: int, minor: int = 0, path: str = "/dev/chardev", kind: int = stat.S_IFCHR) -> None:
        self.nodes[str(self.root / path.lstrip("/"))] = SimpleNamespace(
            st_mode=kind | 0o644, st_rdev=os.makedev(major, minor)
        )

    def task(self, pid: int, comm: str, state: str, wchan: str = "0") -> None:
        self.write(f"/proc/{pid}/stat", f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0\n")
        self.write(f"/proc/{pid}/wchan", wchan)

    def record(self, text: str | None = None) -> None:
        record = {
            "mode": "read",
            "crashed_at": "2026-11-26T09:12:03+00:00",
            "kernel_release": "6.1.0-56-amd64",
            "as_expected": True,
            "tasks": [{"role": "victim", "pid": 1576}],
        }
        self.write("/run/chardev-lab/crashed.json", json.dumps(record) if text is None else text)

    def lstat(self, path: str) -> Any:
        if path in self.nodes:
            return self.nodes[path]
        raise FileNotFoundError(path)

    def probe(self, **params: Any) -> dict[str, Any]:
        return probe(str(self.root), {**PROBE_DEFAULTS, **params}, self.lstat, lambda: self.log)


PROBE_DEFAULTS: dict[str, Any] = {
    "device": "/dev/chardev",
    "crash_run_dir": "/run/chardev-lab",
    "stuck_comm_prefixes": ["chardev", "python", "cat"],
    "max_tasks": 50,
}


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    fake = FakeHost(tmp_path / "host")
    fake.root.mkdir()
    # Every host has ordinary tasks that are never stuck: init sleeping, a kworker in D (I/O), a python
    # in S (the probe itself, an Ansible module), and cat running.
    fake.task(1, "systemd", "S", "do_epoll_wait")
    fake.task(57, "kworker/0:1", "D", "blk_mq_get_tag")
    fake.task(900, "python3", "S", "do_select")
    fake.task(901, "cat", "R")
    return fake


@pytest.fixture
def ready(host: FakeHost) -> FakeHost:
    host.kernel("6.1.0-56-amd64", tainted=TAINT_UNSIGNED_MODULE, oops_count=0)
    host.module("safe")
    host.node(240)
    return host


# --- the probe --------------------------------------------------------------------------------------------


def test_probe_ready_host(ready: FakeHost) -> None:
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


def test_probe_reads_the_last_verdict_of_check_yml(ready: FakeHost) -> None:
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


def test_probe_crashed_6_1_with_an_x_victim(host: FakeHost) -> None:
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


def test_probe_crashed_5_10_with_a_d_victim(host: FakeHost) -> None:
    # 5.10 has no /sys/kernel/oops_count and reads wchan as 0 for every sleeper (ORC, no frame pointers).
    host.kernel("5.10.0-46-amd64", tainted=TAINT_AFTER_CRASH)
    host.task(812, "chardev-victim", "D", "0")
    result = host.probe()
    assert result["oops_count"] is None
    assert result["crashed"] is True
    assert result["crash_reasons"] == ["taint flag D (oops)"]
    assert result["crash_record"] is None
    assert result["stuck_tasks"] == [{"pid": 812, "state": "D", "comm": "chardev-victim", "wchan": None}]


def test_probe_splice_crash_with_a_d_reader(host: FakeHost) -> None:
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


def test_probe_no_module(host: FakeHost) -> None:
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


def test_probe_wrong_major(ready: FakeHost) -> None:
    ready.node(239)
    result = ready.probe()
    assert result["node_ok"] is False
    assert result["node"] == "character device 239:0, but chardev's major is 240 (a stale node)"


def test_probe_dangling_headers_link_and_pending_reboot(host: FakeHost) -> None:
    host.kernel("6.1.0-56-amd64", headers=False)
    (host.root / "lib/modules/6.1.0-56-amd64").mkdir(parents=True)
    (host.root / "lib/modules/6.1.0-56-amd64/build").symlink_to("/nonexistent/linux-headers")
    host.write("/run/reboot-required", "*** System restart required ***\n")
    result = host.probe()
    assert result["headers"] is False
    assert result["crashed"] is False and result["reboot_required"] is True


def test_probe_unreadable_record_still_counts(host: FakeHost) -> None:
    host.kernel("6.1.0-56-amd64")
    host.record("{not json")
    result = host.probe()
    assert result["crash_record"] == {}
    assert result["crashed"] is True


def test_probe_other_device_path(ready: FakeHost) -> None:
    assert ready.probe(device="/dev/chardev0")["node"] == "/dev/chardev0 does not exist"
    ready.node(240, path="/dev/chardev0")
    assert ready.probe(device="/dev/chardev0")["node_ok"] is True


def test_probe_comm_prefixes(host: FakeHost) -> None:
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
    ready: FakeHost, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab_status_probe, "ROOT", str(ready.root))
    monkeypatch.setattr(lab_status_probe, "LSTAT", ready.lstat)
    with patch_module_args({"_ansible_check_mode": True}), pytest.raises(SystemExit):
        lab_status_probe.main()
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] is False and "failed" not in result
    assert result["variant"] == "safe" and result["node_ok"] is True


# --- the report: rows and their state ---------------------------------------------------------------------

UNREACHABLE = {
    "unreachable": True,
    "changed": False,
    "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.2 port 1: "
    "Connection refused",
}


def probe_result(fake: FakeHost, **params: Any) -> dict[str, Any]:
    return {**fake.probe(**params), "failed": False}


def test_row_ready(ready: FakeHost) -> None:
    row = build_row("lab-vm-1", "alice", probe_result(ready), ("passed", []))
    assert row["state"] == "ready"
    assert row["reason"] == "safe variant loaded"
    assert row["student"] == "alice" and row["reachable"] is True


def test_row_ready_without_demo_and_with_pending_reboot(ready: FakeHost) -> None:
    ready.write("/run/reboot-required", "")
    row = build_row("lab-vm-1", "", probe_result(ready), ("not run", []))
    assert row["state"] == "ready"
    assert row["student"] is None
    assert row["reason"] == "safe variant loaded; demo not run; reboot pending (/run/reboot-required)"


def test_row_crashed(host: FakeHost) -> None:
    host.kernel("6.1.0-56-amd64", tainted=TAINT_AFTER_CRASH, oops_count=2)
    host.task(1576, "python3", "X")
    host.record()
    row = build_row("lab-vm-1", None, probe_result(host), ("passed", []))
    assert row["state"] == "crashed"
    assert row["reason"] == (
        "crash record /run/chardev-lab/crashed.json (crashed); taint flag D (oops); oops_count 2; "
        "1 stuck task; reset: playbooks/reset.yml"
    )
    assert row["stuck_tasks"] == [{"pid": 1576, "state": "X", "comm": "python3", "wchan": None}]


def test_row_unreachable() -> None:
    row = build_row("ghost", "bob", UNREACHABLE, ("not run", []))
    assert row["state"] == "unreachable"
    assert row["reason"] == (
        "Failed to connect to the host via ssh: ssh: connect to host 127.0.0.2 port 1: Connection refused"
    )
    assert row["reachable"] is False
    assert row["kernel"] is None and row["crashed"] is None and row["tainted"] is None
    assert row["stuck_tasks"] == []


def test_row_not_probed() -> None:
    for missing in (None, {}):
        row = build_row("late", None, missing, ("not run", []))
        assert row["state"] == "unreachable"
        assert row["reason"].startswith("not probed")


def test_row_probe_failed() -> None:
    failed = {
        "failed": False,
        "failed_when_result": False,
        "msg": "The task exceeded the timeout of 60 seconds.",
    }
    row = build_row("slow", None, failed, ("not run", []))
    assert row["reachable"] is True
    assert row["state"] == "not-ready"
    assert row["reason"] == "probe failed: The task exceeded the timeout of 60 seconds."


@pytest.mark.parametrize(
    ("change", "demo", "reason"),
    [
        ("no module", ("passed", []), "chardev not loaded"),
        ("no headers", ("not run", []), "no kernel headers for 6.1.0-56-amd64"),
        ("wrong major", ("not run", []), "character device 239:0, but chardev's major is 240 (a stale node)"),
        (None, ("failed", ["read 2: got 5, expected 2"]), "demo failed: read 2: got 5, expected 2"),
        ("stuck", ("passed", []), "1 stuck task without a crash marker"),
    ],
)
def test_row_not_ready(ready: FakeHost, change: str | None, demo: tuple[str, list[str]], reason: str) -> None:
    if change == "no module":
        (ready.root / "sys/module/chardev/version").unlink()
        (ready.root / "sys/module/chardev").rmdir()
    elif change == "no headers":
        (ready.root / "lib/modules/6.1.0-56-amd64/build").rmdir()
    elif change == "wrong major":
        ready.node(239)
    elif change == "stuck":
        ready.task(700, "cat", "D", "chardev_read")
    row = build_row("lab-vm-1", None, probe_result(ready), demo)
    assert (row["state"], row["reason"]) == ("not-ready", reason)


def test_decide_state_crash_wins_over_not_ready() -> None:
    row = {"reachable": True, "crashed": True, "crash_reasons": ["taint flag D (oops)"], "stuck_tasks": []}
    assert decide_state(row)[0] == "crashed"


def test_build_rows_reads_the_demo_results(ready: FakeHost, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "passes.json").write_text(json.dumps({"ok": True, "errors": [], "summary": []}))
    (results / "fails.json").write_text(json.dumps({"ok": False, "errors": ["write: accepted"]}))
    (results / "garbled.json").write_text("{")
    probes = {name: probe_result(ready) for name in ("passes", "fails", "garbled", "never")}
    rows = build_rows(["passes", "fails", "garbled", "never"], probes, {}, str(results))
    assert [(r["host"], r["demo"], r["state"]) for r in rows] == [
        ("passes", "passed", "ready"),
        ("fails", "failed", "not-ready"),
        ("garbled", "unreadable", "not-ready"),
        ("never", "not run", "ready"),
    ]
    assert rows[1]["demo_errors"] == ["write: accepted"]
    assert build_rows(["passes"], probes, {}, None)[0]["demo"] == "not run"
    assert build_rows(["../passes"], probes, {}, str(results))[0]["demo"] == "not run"


# --- the report: files ------------------------------------------------------------------------------------

REQUIRED_KEYS = {
    "host",
    "student",
    "reachable",
    "kernel",
    "module_loaded",
    "variant",
    "crashed",
    "stuck_tasks",
    "tainted",
    "headers",
    "node_ok",
    "demo",
    "taint_letters",
    "reboot_required",
    "state",
    "reason",
}
HOSTILE = '<script>alert("x")</script>'


class RowParser(HTMLParser):
    """The rows of the page: data-host, data-state and each data-key cell's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.key: str | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "tr" and "data-host" in values:
            self.rows.append({"host": values["data-host"], "state": values["data-state"], "cells": {}})
        if tag == "td" and self.rows and "data-key" in values:
            self.key = values["data-key"]
            self.rows[-1]["cells"][self.key] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.key = None

    def handle_data(self, data: str) -> None:
        if self.key is not None:
            self.rows[-1]["cells"][self.key] += data


def fleet(ready: FakeHost, crashed: FakeHost) -> list[dict[str, Any]]:
    return build_rows(
        [HOSTILE, "crashed-vm", "ghost"],
        {HOSTILE: probe_result(ready), "crashed-vm": probe_result(crashed), "ghost": UNREACHABLE},
        {HOSTILE: "Zoë & <b>Bob</b>", "ghost": "carol"},
        None,
    )


@pytest.fixture
def crashed(tmp_path: Path) -> FakeHost:
    fake = FakeHost(tmp_path / "crashed")
    fake.kernel("6.1.0-56-amd64", tainted=TAINT_AFTER_CRASH, oops_count=2)
    fake.task(1576, "python3", "X")
    fake.task(1577, "chardev-reader", "D", "pipe_read")
    fake.record()
    return fake


def test_write_report(ready: FakeHost, crashed: FakeHost, tmp_path: Path) -> None:
    rows = fleet(ready, crashed)
    paths = write_report(str(tmp_path / "status"), rows, "2026-11-26T09:15:00+00:00", "Room 101")
    status = json.loads(Path(paths["status_file"]).read_text())
    assert isinstance(status, list) and len(status) == 3
    assert all(set(row) >= REQUIRED_KEYS for row in status)
    assert [row["state"] for row in status] == ["ready", "crashed", "unreachable"]
    assert status[1]["stuck_tasks"] == [
        {"pid": 1576, "state": "X", "comm": "python3", "wchan": None},
        {"pid": 1577, "state": "D", "comm": "chardev-reader", "wchan": "pipe_read"},
    ]
    meta = json.loads(Path(paths["meta_file"]).read_text())
    assert meta["generated_at"] == "2026-11-26T09:15:00+00:00"
    assert meta["counts"] == {"ready": 1, "crashed": 1, "unreachable": 1, "not-ready": 0, "total": 3}
    assert Path(paths["html_file"]).read_text().startswith("<!DOCTYPE html>")
    assert oct(Path(paths["html_file"]).stat().st_mode & 0o777) == "0o644"
    assert not list((tmp_path / "status").glob(".*"))  # no temporary file left


def test_html_escapes_every_value(ready: FakeHost, crashed: FakeHost) -> None:
    page = render_html(fleet(ready, crashed), "2026-11-26T09:15:00+00:00", "Lab <1> & co")
    assert "<script" not in page and "<b>Bob" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<title>Lab &lt;1&gt; &amp; co</title>" in page
    parser = RowParser()
    parser.feed(page)
    assert [(row["host"], row["state"]) for row in parser.rows] == [
        (HOSTILE, "ready"),
        ("crashed-vm", "crashed"),
        ("ghost", "unreachable"),
    ]
    assert parser.rows[0]["cells"]["student"] == "Zoë & <b>Bob</b>"
    assert parser.rows[1]["cells"]["stuck_tasks"] == "1576 X python31577 D chardev-reader wchan pipe_read"
    assert parser.rows[2]["cells"]["reason"].startswith("Failed to connect to the host via ssh")
    assert parser.rows[2]["cells"]["kernel"] == "—"


def test_html_is_self_contained(ready: FakeHost, crashed: FakeHost) -> None:
    page = render_html(fleet(ready, crashed), "2026-11-26T09:15:00+00:00", "Lab")
    for needle in ("<script", "<link", "<img", "@import", "url(", "http://", "https://"):
        assert needle not in page
    assert '<meta charset="utf-8">' in page
    assert 'data-state="crashed" data-count="1"' in page
    assert "Legend" in page and "2026-11-26T09:15:00+00:00" in page


def test_html_without_hosts() -> None:
    assert "No lab hosts." in render_html([], "2026-11-26T09:15:00+00:00", "Lab")


# --- the report: table ------------------------------------------------------------------------------------


def test_table(ready: FakeHost, crashed: FakeHost) -> None:
    lines = [line.replace("\u00a0", " ") for line in render_table(fleet(ready, crashed))]
    assert lines[0] == "3 hosts: 1 ready, 1 crashed, 1 unreachable, 0 not-ready"
    header, *hosts = lines[1:]
    assert header.split() == [
        "HOST", "STUDENT", "STATE", "KERNEL", "VARIANT", "NODE", "DEMO", "TAINT", "STUCK", "REASON"
    ]  # fmt: skip
    # Fixed-width columns: every column starts at the same place on every line.
    starts = [header.index(name) for name in ("STATE", "KERNEL", "TAINT", "REASON")]
    assert hosts[0][starts[0] :].startswith("ready ")
    assert hosts[1][starts[0] :].startswith("crashed ")
    assert hosts[2][starts[0] :].startswith("unreachable ")
    assert hosts[1][starts[2] :].startswith("12416 DOE ")
    assert hosts[1][starts[3] :].startswith("crash record")
    assert "1576X,1577D" in hosts[1]
    assert hosts[0].startswith('<script>alert("x")</scr~  ')  # as it is, cut to the column's 24 characters
    assert hosts[0][starts[1] :].startswith("6.1.0-56-amd64 ")


def test_table_lines_never_fold() -> None:
    """PyYAML folds a long string at single spaces only: the table keeps none."""
    long_reason = {"unreachable": True, "msg": "word " * 60}
    lines = render_table(build_rows(["h"], {"h": long_reason}, {"h": "Ann Lee"}, None))
    assert not [line for line in lines[1:] if re.search(r"(?<! ) (?! )", line)]
    assert "Ann\u00a0Lee" in lines[2]
    assert lines[2].endswith("~")


# --- the report module ------------------------------------------------------------------------------------


def test_report_module_check_mode_writes_nothing(
    ready: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = datetime.datetime(2026, 11, 26, 9, 15, tzinfo=datetime.UTC)
    monkeypatch.setattr(lab_status_report, "NOW", lambda: fixed)
    args = {
        "hosts": ["a", "b"],
        "probes": {"a": probe_result(ready), "b": UNREACHABLE},
        "dest": str(tmp_path / "s"),
    }
    with patch_module_args({**args, "_ansible_check_mode": True}), pytest.raises(SystemExit):
        lab_status_report.main()
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] is False and result["written"] is False
    assert not (tmp_path / "s").exists()
    assert result["counts"]["total"] == 2
    with patch_module_args(args), pytest.raises(SystemExit):
        lab_status_report.main()
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] is False and result["written"] is True
    assert result["generated_at"] == "2026-11-26T09:15:00+00:00"
    assert json.loads((tmp_path / "s/status.json").read_text()) == result["rows"]


# --- the taint before the lab (a real host with a proprietary driver) ---------------------------------


def test_probe_new_taint_leaves_out_the_taint_recorded_before_the_lab(host: FakeHost) -> None:
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


def test_probe_new_taint_shows_what_the_lab_added(host: FakeHost) -> None:
    host.kernel("6.1.0-56-amd64", tainted=1 | TAINT_AFTER_CRASH, oops_count=2)
    host.write("/var/lib/chardev-lab/taint-before-lab.json", json.dumps({"boot_id": "b0", "tainted": 1}))
    result = host.probe()
    assert result["new_taint"] == TAINT_AFTER_CRASH and result["crashed"] is True
