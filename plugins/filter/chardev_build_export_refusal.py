# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chardev_build_export_refusal: why the control node keeps a host's builds out of the build store.

The role lets the first host of each kernel release that may give builds compile for the others; a host
that may not give its builds compiles for itself at once. The answer comes from
module_utils/chardev_build_store.export_refusal, which the chardev_build action plugin applies again when
it runs the module: one decision, made on the control node; this filter only orders the role's work."""

from __future__ import annotations

from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import export_refusal

DOCUMENTATION = r"""
name: chardev_build_export_refusal
short_description: Why the chardev build store refuses a host's builds
description:
  - The reason the control node keeps the builds of O(_input) out of the chardev role's build store, or an
    empty string when it takes them. Refused are a host of the group C(classroom), a host the control node
    has recorded a student's account on (C(<lab_state_dir>/accounts/<host>.json)), a host whose facts
    name C(lab_state_dir), and any host when O(state_dir) is empty.
positional: groups, state_dir, facts
options:
  _input:
    description: The host's inventory name (inventory_hostname).
    type: str
    required: true
  groups:
    description: The host's groups (group_names).
    type: list
    elements: str
    required: true
  state_dir:
    description: The control node's state directory (lab_state_dir).
    type: path
    required: true
  facts:
    description: The host's facts (ansible_facts).
    type: dict
"""

EXAMPLES = r"""
- name: Say whether this host may give its builds to the store
  ansible.builtin.debug:
    msg: >-
      {{ inventory_hostname | chardev_lab.lab.chardev_build_export_refusal(group_names, lab_state_dir,
                                                                           ansible_facts) }}
"""

RETURN = r"""
_value:
  description: Why the host's builds are refused, empty when they are taken.
  type: str
"""


def chardev_build_export_refusal(
    host: str, groups: list[str], state_dir: str, facts: dict[str, Any] | None = None
) -> str:
    return export_refusal(str(host), [str(g) for g in groups or []], str(state_dir or ""), facts)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"chardev_build_export_refusal": chardev_build_export_refusal}
