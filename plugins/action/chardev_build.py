# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chardev_build on the control node: carry builds between hosts with the same kernel release.

A fleet of hosts on one kernel release needs one compile of each variant, not one per host: kbuild takes
about 40 s per variant in a TCG guest, and N guests compiling at once on a 2-core machine take N times
as long. With O(store), the builds this run needs are read from the store and sent with the module's
arguments (no extra round trip, no temporary file on the host), and the builds the host compiles come
back in its result and go into the store. The role runs one host per kernel release first, so that the
others find its builds there.
"""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    RELEASE_RE,
    read_store,
    wanted_builds,
    write_store,
)


class ActionModule(ActionBase):
    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        store = args.pop("store", None) or ""
        release = str(args.get("kernel_release") or "")
        names: dict[str, str] = {}
        if store:
            if not RELEASE_RE.match(release):
                raise AnsibleActionFail(
                    f"store needs kernel_release, a plain kernel release name, not {release!r}"
                )
            release_dir = os.path.join(store, release)
            names = wanted_builds(args, release)
            args["import_builds"] = read_store(release_dir, names)
            args["export_builds"] = not self._task.check_mode
        result.update(
            self._execute_module(
                module_name="chardev_lab.lab.chardev_build", module_args=args, task_vars=task_vars
            )
        )
        exported = result.pop("exported_builds", None) or {}
        if store:
            # The builds travelled in the arguments: show their names, not their bytes (-vvv shows arguments).
            module_args = result.get("invocation", {}).get("module_args", {})
            if "import_builds" in module_args:
                module_args["import_builds"] = sorted(args["import_builds"])
            if exported and not result.get("failed"):
                result["stored"] = write_store(release_dir, exported, names)
        return result
