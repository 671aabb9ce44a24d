"""The chardev_build_export_refusal filter (plugins/filter/chardev_build_export_refusal.py): the role's
view of the decision the chardev_build action plugin enforces (tested with module_utils/
chardev_build_store.export_refusal): why a host's builds are kept out of the store."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.chardev_lab.lab.plugins.filter.chardev_build_export_refusal import FilterModule


def test_the_filter_gives_the_control_nodes_reason(tmp_path: Path) -> None:
    refusal = FilterModule().filters()["chardev_build_export_refusal"]
    assert refusal("vm1", ["lab", "lab_vms"], str(tmp_path), {"kernel": "6.1.0-56-amd64"}) == ""
    assert "group classroom" in refusal("alice", ["lab", "classroom"], str(tmp_path))
    (tmp_path / "accounts").mkdir()
    (tmp_path / "accounts" / "vm1.json").write_text('{"host": "vm1", "student": "carol"}')
    assert "the student carol has an account" in refusal("vm1", ["lab", "lab_vms"], str(tmp_path), {})
    assert "lab_state_dir is not set" in refusal("vm2", ["lab"], "")
