# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chardev_build on the control node: carry builds between hosts with the same kernel release.

A fleet of hosts on one kernel release needs one compile of each variant, not one per host: kbuild takes
about 40 s per variant in a TCG guest, and N guests compiling at once on a 2-core machine take N times
as long. With O(store), the builds this run needs are read from the store and sent with the module's
arguments, each with its sha256 (no extra round trip, no temporary file on the host), and the builds the
host compiles come back in its result and go into the store. The role runs one host per kernel release
first, so that the others find its builds there.

Which hosts may give builds is decided here, never on the host: a student is root on their machine and
could return anything, so only the inventory's groups and the control node's own account records count
(module_utils/chardev_build_store.export_refusal). A refused host is not asked for its builds, and
whatever it returns anyway is dropped.
"""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    RELEASE_RE,
    StoreError,
    export_refusal,
    read_store,
    wanted_builds,
    write_store,
)


class ActionModule(ActionBase):
    def export_refused(self, task_vars: dict[str, Any]) -> str:
        """Why this host may not give builds to the store ("" when it may), from the control node's view."""
        host = str(task_vars.get("inventory_hostname") or "")
        state_dir = task_vars.get("lab_state_dir")
        if state_dir is not None and self._templar is not None:
            state_dir = self._templar.template(state_dir)
        return export_refusal(
            host,
            list(task_vars.get("group_names") or []),
            str(state_dir or ""),
            task_vars.get("ansible_facts"),
        )

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        store = args.pop("store", None) or ""
        release = str(args.get("kernel_release") or "")
        release_dir = ""
        names: dict[str, str] = {}
        refused = ""
        warnings: list[str] = []
        if store:
            if not RELEASE_RE.match(release):
                raise AnsibleActionFail(
                    f"store needs kernel_release, a plain kernel release name, not {release!r}"
                )
            release_dir = os.path.join(store, release)
            names = wanted_builds(args, release)
            refused = self.export_refused(task_vars)
            try:
                args["import_builds"], warnings = read_store(release_dir, names)
            except StoreError as exc:
                raise AnsibleActionFail(str(exc)) from exc
            args["export_builds"] = not self._task.check_mode and not refused
        result.update(
            self._execute_module(
                module_name="chardev_lab.lab.chardev_build", module_args=args, task_vars=task_vars
            )
        )
        # The host's word on what it gave or where it may give is not taken: the keys are this plugin's.
        exported = result.pop("exported_builds", None) or {}
        result.pop("stored", None)
        result.pop("export_refused", None)
        if store:
            result["export_refused"] = refused
            # The builds travelled in the arguments: show their names, not their bytes (-vvv shows arguments).
            module_args = result.get("invocation", {}).get("module_args", {})
            if "import_builds" in module_args:
                module_args["import_builds"] = sorted(args["import_builds"])
            if exported and isinstance(exported, dict) and not refused and not result.get("failed"):
                try:
                    result["stored"], stored_warnings = write_store(release_dir, exported, names)
                except StoreError as exc:
                    raise AnsibleActionFail(str(exc)) from exc
                warnings += stored_warnings
        if warnings:
            result["warnings"] = [*(result.get("warnings") or []), *warnings]
        return result
