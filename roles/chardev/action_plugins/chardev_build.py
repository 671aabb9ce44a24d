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

import base64
import importlib.util
import os
import re
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# A kernel release becomes a directory name in the store: nothing that could leave it.
RELEASE_RE = re.compile(r"^[A-Za-z0-9_+~-][A-Za-z0-9._+~-]*$")


def _module_code() -> Any:
    """The module's own file, for its stamp and its cache pruning: one way of computing each."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "library", "chardev_build.py"
    )
    spec = importlib.util.spec_from_file_location("_chardev_build_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wanted_builds(code: Any, args: dict[str, Any], release: str) -> dict[str, str]:
    """File name in the store of each build this run may need, to its variant."""
    sources = code.normalized_sources(args.get("sources") or {})
    variants = [args.get("variant"), *(args.get("cache_variants") or [])]
    return {f"{code.build_stamp(sources, v, release)}.ko": v for v in dict.fromkeys(variants) if v}


def store_has(store: str, release: str, args: dict[str, Any]) -> bool:
    """Whether the store holds every build these module arguments may need (the filter
    chardev_build_stored asks it, so that hosts whose builds are stored need not wait for a build)."""
    if not store or not RELEASE_RE.match(release):
        return False
    names = wanted_builds(_module_code(), args, release)
    return bool(names) and all(os.path.isfile(os.path.join(store, release, name)) for name in names)


def read_store(release_dir: str, names: dict[str, str]) -> dict[str, str]:
    """The store's builds among names, base64; each one read is marked as used (its mtime)."""
    found = {}
    for name in names:
        path = os.path.join(release_dir, name)
        try:
            with open(path, "rb") as handle:
                found[name] = base64.b64encode(handle.read()).decode("ascii")
        except OSError:
            continue
        os.utime(path)
    return found


def write_store(code: Any, release_dir: str, exported: dict[str, str], names: dict[str, str]) -> list[str]:
    """Keep the host's new builds; only names this run asked for (a host cannot plant other files)."""
    kept = []
    for name, data in exported.items():
        if name not in names:
            continue
        os.makedirs(release_dir, mode=0o700, exist_ok=True)
        partial = os.path.join(release_dir, f".{name}.partial")
        with open(partial, "wb") as handle:
            handle.write(base64.b64decode(data))
        os.replace(partial, os.path.join(release_dir, name))
        kept.append(names[name])
    if kept:
        code.prune_cache(release_dir)
    return kept


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
            code = _module_code()
            release_dir = os.path.join(store, release)
            names = wanted_builds(code, args, release)
            args["import_builds"] = read_store(release_dir, names)
            args["export_builds"] = not self._task.check_mode
        result.update(
            self._execute_module(module_name="chardev_build", module_args=args, task_vars=task_vars)
        )
        exported = result.pop("exported_builds", None) or {}
        if store:
            # The builds travelled in the arguments: show their names, not their bytes (-vvv shows arguments).
            module_args = result.get("invocation", {}).get("module_args", {})
            if "import_builds" in module_args:
                module_args["import_builds"] = sorted(args["import_builds"])
            if exported and not result.get("failed"):
                result["stored"] = write_store(code, release_dir, exported, names)
        return result
