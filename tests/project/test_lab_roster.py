"""make lab with a classroom roster (ROSTER=...): a bad roster stops ansible-playbook before any play.
The roster plugin itself is tested in tests/unit/plugins/inventory/test_chardev_roster.py, with the
rosters of tests/unit/data/rosters/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import ROSTERS, ansible_command, ansible_env

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_lab_with_a_bad_roster_starts_nothing(tmp_path: Path) -> None:
    """What `make lab ROSTER=bad.csv` runs: ansible-playbook stops before any play, and the fleet's
    directory (where keys, VMs and results would go) is never made."""
    state_dir = tmp_path / "fleet"
    proc = subprocess.run(
        [ansible_command("ansible-playbook"), "-i", "inventory/roster.yml", "lab.yml"],
        cwd=REPO_ROOT,
        env=ansible_env(CHARDEV_LAB_ROSTER=str(ROSTERS / "bad.csv"), CHARDEV_LAB_STATE_DIR=str(state_dir)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "PLAY [" not in proc.stdout, proc.stdout
    assert "bad.csv line 4: " in proc.stderr, proc.stderr
    assert not state_dir.exists()
