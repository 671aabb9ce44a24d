"""plugins/modules/lab_status_report.py: the state of each host from its probe result, the report files
(status.json, meta.json, index.html), the terminal table and the module. The probe results come from
the probe run on fake hosts (StatusHost)."""

from __future__ import annotations

import datetime
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules import lab_status_report
from ansible_collections.chardev_lab.lab.plugins.modules.lab_status_report import (
    build_row,
    build_rows,
    decide_state,
    render_html,
    render_table,
    write_report,
)
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import (
    TAINT_AFTER_CRASH,
    StatusHost,
    run_module,
)


@pytest.fixture
def host(tmp_path: Path) -> StatusHost:
    return StatusHost.everyday(tmp_path / "host")


@pytest.fixture
def ready(host: StatusHost) -> StatusHost:
    return host.make_ready()


@pytest.fixture
def crashed(tmp_path: Path) -> StatusHost:
    return StatusHost(tmp_path / "crashed").make_crashed()


# --- the report: rows and their state ---------------------------------------------------------------------

UNREACHABLE = {
    "unreachable": True,
    "changed": False,
    "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.2 port 1: "
    "Connection refused",
}


def probe_result(fake: StatusHost, **params: Any) -> dict[str, Any]:
    return {**fake.probe(**params), "failed": False}


def test_row_ready(ready: StatusHost) -> None:
    row = build_row("lab-vm-1", "alice", probe_result(ready), ("passed", []))
    assert row["state"] == "ready"
    assert row["reason"] == "safe variant loaded"
    assert row["student"] == "alice" and row["reachable"] is True


def test_row_ready_without_demo_and_with_pending_reboot(ready: StatusHost) -> None:
    ready.write("/run/reboot-required", "")
    row = build_row("lab-vm-1", "", probe_result(ready), ("not run", []))
    assert row["state"] == "ready"
    assert row["student"] is None
    assert row["reason"] == "safe variant loaded; demo not run; reboot pending (/run/reboot-required)"


def test_row_crashed(host: StatusHost) -> None:
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
def test_row_not_ready(
    ready: StatusHost, change: str | None, demo: tuple[str, list[str]], reason: str
) -> None:
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


@pytest.mark.parametrize(
    ("phase", "words"),
    [("leftover", "a crash run was interrupted"), ("armed", "armed: a crash run's victim")],
)
def test_row_a_live_victim_is_never_ready(ready: StatusHost, phase: str, words: str) -> None:
    """A crash run interrupted with its victim alive (chardev loaded: the safe variant after make lab, or
    the same load): the host is not ready; an armed one crashes at the victim's next use of the file."""
    ready.task(812, "chardev-victim", "S", starttime=4242)
    ready.pidfile("victim.pid", "812 4242\n")
    module = {"sysfs_ino": ready.path("/sys/module/chardev").stat().st_ino, "text": None}
    if phase == "armed":
        module["sysfs_ino"] += 1  # the mark names the load removed by the crash's rmmod
    ready.record({"state": "unloading", "mode": "read", "marked_at": "t0", "module": module})
    row = build_row("lab-vm-1", None, probe_result(ready), ("passed", []))
    assert (row["crash_phase"], row["crashed"], row["state"]) == (phase, False, "not-ready")
    assert row["reason"].startswith(words)


def test_decide_state_crash_wins_over_not_ready() -> None:
    row = {"reachable": True, "crashed": True, "crash_reasons": ["taint flag D (oops)"], "stuck_tasks": []}
    assert decide_state(row)[0] == "crashed"


def test_build_rows_reads_the_demo_results(ready: StatusHost, tmp_path: Path) -> None:
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


def fleet(ready: StatusHost, crashed: StatusHost) -> list[dict[str, Any]]:
    return build_rows(
        [HOSTILE, "crashed-vm", "ghost"],
        {HOSTILE: probe_result(ready), "crashed-vm": probe_result(crashed), "ghost": UNREACHABLE},
        {HOSTILE: "Zoë & <b>Bob</b>", "ghost": "carol"},
        None,
    )


def test_write_report(ready: StatusHost, crashed: StatusHost, tmp_path: Path) -> None:
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


def test_html_escapes_every_value(ready: StatusHost, crashed: StatusHost) -> None:
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


def test_html_is_self_contained(ready: StatusHost, crashed: StatusHost) -> None:
    page = render_html(fleet(ready, crashed), "2026-11-26T09:15:00+00:00", "Lab")
    for needle in ("<script", "<link", "<img", "@import", "url(", "http://", "https://"):
        assert needle not in page
    assert '<meta charset="utf-8">' in page
    assert 'data-state="crashed" data-count="1"' in page
    assert "Legend" in page and "2026-11-26T09:15:00+00:00" in page


def test_html_without_hosts() -> None:
    assert "No lab hosts." in render_html([], "2026-11-26T09:15:00+00:00", "Lab")


# --- the report: table ------------------------------------------------------------------------------------


def test_table(ready: StatusHost, crashed: StatusHost) -> None:
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
    ready: StatusHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = datetime.datetime(2026, 11, 26, 9, 15, tzinfo=datetime.UTC)
    monkeypatch.setattr(lab_status_report, "NOW", lambda: fixed)
    args = {
        "hosts": ["a", "b"],
        "probes": {"a": probe_result(ready), "b": UNREACHABLE},
        "dest": str(tmp_path / "s"),
    }
    result = run_module(lab_status_report, {**args, "_ansible_check_mode": True}, capsys)
    assert result["changed"] is False and result["written"] is False
    assert not (tmp_path / "s").exists()
    assert result["counts"]["total"] == 2
    result = run_module(lab_status_report, args, capsys)
    assert result["changed"] is False and result["written"] is True
    assert result["generated_at"] == "2026-11-26T09:15:00+00:00"
    assert json.loads((tmp_path / "s/status.json").read_text()) == result["rows"]
