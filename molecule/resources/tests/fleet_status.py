"""The fleet's status as the classroom tests read it: playbooks/status.yml run for real, its JSON, and
its page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lab_testinfra import fleet_dir, run_playbook
from status_page import read_status_page, screenshot


def status_dir() -> Path:
    """Where playbooks/status.yml writes: status/ in the scenario's lab_state_dir."""
    return fleet_dir() / "status"


def refresh_status() -> list[dict]:
    """Run playbooks/status.yml over every host and return status.json."""
    run = run_playbook(None, Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks/status.yml")
    assert run.rc == 0, str(run)
    return json.loads((status_dir() / "status.json").read_text())


def by_host(rows: list[dict]) -> dict[str, dict]:
    return {row["host"]: row for row in rows}


def check_page_matches(status: list[dict], shot: str) -> None:
    """What the page shows in a real browser is what status.json says, host by host; keeps a screenshot
    (in the scenario's directory, and in CHARDEV_LAB_SCREENSHOT_DIR when set, e.g. docs/)."""
    page = status_dir() / "index.html"
    rows = read_status_page(page)
    assert [row["host"] for row in rows] == [entry["host"] for entry in status], rows
    for row, entry in zip(rows, status, strict=True):
        assert row["state"] == entry["state"], (row, entry)
        cells = row["cells"]
        assert cells["kernel"] == (entry["kernel"] or "\u2014"), (row, entry)
        shown = [line.split()[:2] for line in cells["stuck_tasks"].splitlines()]
        if entry["stuck_tasks"]:
            assert shown == [[str(task["pid"]), task["state"]] for task in entry["stuck_tasks"]], (row, entry)
        else:
            assert shown in ([["none"]], [["\u2014"]]), (row, entry)
    colours = {row["state"]: row["background"] for row in rows}
    assert len(set(colours.values())) == len(colours), f"each state has its own colour: {colours}"
    png = screenshot(page, Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / shot)
    keep = os.environ.get("CHARDEV_LAB_SCREENSHOT_DIR")
    if keep:
        shutil.copyfile(png, Path(keep) / shot)
