"""The status page in a real browser shows exactly what status.json says: every host, its state, kernel,
module variant and stuck tasks, with one row colour per state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules.lab_status_report import render_html
from status_page import read_status_page, screenshot

FIXTURE = Path(__file__).parent / "data/status.json"
GENERATED_AT = "2026-11-26T09:15:00+00:00"
UNKNOWN = "—"


@pytest.fixture(scope="module")
def status() -> list[dict[str, Any]]:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def page(status: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("status") / "index.html"
    path.write_text(render_html(status, GENERATED_AT, "chardev-lab status"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rows(page: Path) -> list[dict[str, Any]]:
    return read_status_page(page)


def test_every_host_in_order_with_its_state(status: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    assert [(row["host"], row["state"]) for row in rows] == [(host["host"], host["state"]) for host in status]
    for row, host in zip(rows, status, strict=True):
        assert row["cells"]["host"] == host["host"]
        assert row["cells"]["state"] == host["state"]


def test_kernel_variant_and_student(status: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    for row, host in zip(rows, status, strict=True):
        cells = row["cells"]
        assert cells["kernel"] == (host["kernel"] or UNKNOWN), row
        if host["module_loaded"] is False:
            assert cells["variant"] == "none"
        else:
            assert cells["variant"] == (host["variant"] or UNKNOWN), row
        # The student's name is shown as text, markup and all (escaped, never interpreted).
        assert cells["student"] == (host["student"] or UNKNOWN)


def test_stuck_tasks_listed_in_the_row(status: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    for row, host in zip(rows, status, strict=True):
        shown = row["cells"]["stuck_tasks"].splitlines()
        if not host["stuck_tasks"]:
            assert shown == ["none" if host["reachable"] else UNKNOWN]
            continue
        assert [line.split()[:3] for line in shown] == [
            [str(task["pid"]), task["state"], task["comm"]] for task in host["stuck_tasks"]
        ]


def test_taint_crash_and_reason(status: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    for row, host in zip(rows, status, strict=True):
        cells = row["cells"]
        if host["tainted"] is None:
            assert cells["tainted"] == UNKNOWN
        else:
            assert cells["tainted"] == f"{host['tainted']} {host['taint_letters']}".strip()
        assert cells["crashed"].splitlines()[0] == {True: "yes", False: "no", None: UNKNOWN}[host["crashed"]]
        assert cells["reason"] == host["reason"]


def test_one_colour_per_state(rows: list[dict[str, Any]]) -> None:
    colours = {row["state"]: row["background"] for row in rows}
    assert len(colours) == 3
    assert len(set(colours.values())) == 3, colours
    assert "rgba(0, 0, 0, 0)" not in colours.values()  # every row has a colour of its own


def test_screenshot(page: Path, tmp_path: Path) -> None:
    png = screenshot(page, tmp_path / "status.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
