# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_path_problem: why a name cannot be a path component on the control node ("" when it can).

The chardev role's host_name entry point checks inventory_hostname with it on the control node, for the
playbooks that must not connect first (status.yml, check.yml, fleet.yml); the guard module checks the
same rule on every host it runs on. The rule is module_utils/lab_paths.path_component_problem: one rule."""

from __future__ import annotations

from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import path_component_problem

DOCUMENTATION = r"""
name: lab_path_problem
short_description: Why a name is not a safe path component on the control node
description:
  - An empty string when O(_input) can be one component of a path on the control node (1 to 63
    letters, digits, C(.), C(_) and C(-), not starting with C(.) or C(-), without C(..)); otherwise
    what is wrong with it, in words.
options:
  _input:
    description: The name, usually C(inventory_hostname).
    type: raw
    required: true
"""


def lab_path_problem(name: Any) -> str:
    return path_component_problem(name) or ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"lab_path_problem": lab_path_problem}
