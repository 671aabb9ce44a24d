#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Log in to a local VM of the fleet as root: make ssh HOST=lab-vm-1 (or HOST=<student> ROSTER=...).

The connection comes from the inventory, rendered as Ansible renders it (the fleet's key and
known_hosts live in lab_state_dir, whose one default is inventory/group_vars/all.yml), so this tool
knows no path of its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ansible import constants as C
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar
from ansible.vars.manager import VariableManager

CONNECTION_VARS = ("ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file")


def ssh_command(inventory: list[str], name: str) -> list[str]:
    init_plugin_loader()
    loader = DataLoader()
    # No -i: ansible.cfg's inventory, as ansible-playbook would take it.
    inventory = inventory or list(C.DEFAULT_HOST_LIST)
    hosts = InventoryManager(loader=loader, sources=inventory)
    host = hosts.get_host(name)
    if host is None:
        raise SystemExit(f"ssh: no host {name!r} in the inventory ({', '.join(inventory)})")
    variables = VariableManager(loader=loader, inventory=hosts).get_vars(host=host)
    if host.name not in hosts.get_groups_dict().get("lab_vms", []):
        raise SystemExit(f"ssh: {name} is not a local VM (group lab_vms): ssh to it as you usually do")
    templar = Templar(loader=loader, variables=variables)
    conn = {key: str(templar.template(variables[key])) for key in CONNECTION_VARS if key in variables}
    common = shlex.split(str(templar.template(variables.get("ansible_ssh_common_args", ""))))
    return [
        "ssh",
        *common,
        "-i",
        conn["ansible_ssh_private_key_file"],
        "-p",
        conn.get("ansible_port", "22"),
        f"{conn.get('ansible_user', 'root')}@{conn.get('ansible_host', name)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("-i", "--inventory", action="append", default=[])
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args()
    command = ssh_command(args.inventory, args.host)
    if args.print:
        print(shlex.join(command))
        return
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
