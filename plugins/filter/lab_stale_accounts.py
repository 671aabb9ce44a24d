# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_stale_accounts: the control node's account records whose student left their host.

playbooks/leavers.yml reads the records (<lab_state_dir>/accounts/*.json) and removes what this filter
returns. The rules are module_utils/lab_accounts.py's."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_accounts import RecordError, stale_records

DOCUMENTATION = r"""
name: lab_stale_accounts
short_description: The account records whose student is no longer on their host
description:
  - Takes the account records of the control node, file path to text, and returns those of this
    inventory whose host is no longer in the inventory, has another student, or changed between a local
    VM and a real host, sorted by host, each with C(path) (its file) and C(reason).
  - Records written with other inventory sources are left out. A record that cannot be trusted (not
    JSON, a host that is not its file's name or not a safe path component, a student that is not a user
    name, a bad port or address) fails the filter, with every problem.
positional: students, local_vms, inventory
options:
  _input:
    description: The records, path to text.
    type: dict
    required: true
  students:
    description: Every host of the group lab to its student (empty for a host without one).
    type: dict
    required: true
  local_vms:
    description: The hosts of the group lab_vms.
    type: list
    elements: str
    required: true
  inventory:
    description: This run's inventory sources (ansible_inventory_sources).
    type: list
    elements: str
    required: true
"""


def lab_stale_accounts(
    texts: dict[str, str], students: dict[str, str], local_vms: list[str], inventory: list[str]
) -> list[dict[str, Any]]:
    try:
        return stale_records(
            {str(path): str(text) for path, text in (texts or {}).items()},
            {str(host): str(student or "") for host, student in (students or {}).items()},
            [str(host) for host in local_vms or []],
            [str(source) for source in inventory or []],
        )
    except RecordError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"lab_stale_accounts": lab_stale_accounts}
