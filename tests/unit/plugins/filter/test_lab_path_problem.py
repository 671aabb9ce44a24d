"""The lab_path_problem filter (plugins/filter/lab_path_problem.py): the chardev role's host_name entry
point checks inventory_hostname with it on the control node ("" when the name is safe)."""

from __future__ import annotations

from ansible_collections.chardev_lab.lab.plugins.filter.lab_path_problem import FilterModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import path_component_problem


def test_empty_for_a_safe_name_and_the_rule_s_words_otherwise() -> None:
    problem = FilterModule().filters()["lab_path_problem"]
    assert problem("lab-vm-1") == ""
    assert (
        problem("../../../x")
        == path_component_problem("../../../x")
        == ("it holds '/': only letters, digits, '.', '_' and '-' are allowed")
    )
    assert problem("") == "it is empty"
