# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_vm_image_wait: wait for the image builds that lab_vm_image runs as async jobs, with progress.

An until/retries loop over async_status would say "FAILED - RETRYING" every 15 s while the builds are
working fine. This waits on the control node instead and prints one line per build and interval: its
elapsed time and its phase, read from the build's own log (the mmdebstrap stage, then the step after).
"""

from __future__ import annotations

import re
import time
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

# What lab_vm_image's build log says, newest line first, to the phase shown.
COMMAND_PHASES = (
    ("mkfs.ext4", "writing the disk image"),
    ("systemctl", "preparing the root filesystem for QEMU"),
)
MMDEBSTRAP_STEP = re.compile(r"^I: (.+?)(?:\.\.\.)?$")


def build_phase(log_text: str) -> str:
    """The phase of a build from its log, as a short phrase."""
    lines = log_text.splitlines()
    for line in reversed(lines):
        if line.startswith("image complete"):
            return "complete"
        if line.startswith("$ "):
            for word, phase in COMMAND_PHASES:
                if word in line:
                    return phase
        step = MMDEBSTRAP_STEP.match(line)
        if step and not step.group(1).startswith(("running --", "chroot architecture", "finding")):
            return f"mmdebstrap: {step.group(1)}"
    return "starting" if not lines else "mmdebstrap: starting"


def read_phase(log_path: str) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            return build_phase(handle.read())
    except OSError:
        return "starting"


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def pair_jobs(jobs: list[dict[str, Any]], plans: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each async job (its registered result) with the name and log of the build it runs."""
    logs = {repr(plan.get("item")): plan.get("log", "") for plan in plans}
    paired = []
    for job in jobs:
        if "ansible_job_id" not in job:
            continue
        item = job.get("item")
        name = str(item[0]) if isinstance(item, (list, tuple)) and item else str(item)
        paired.append({"jid": job["ansible_job_id"], "name": name, "log": logs.get(repr(item), "")})
    return paired


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(
            argument_spec={
                "jobs": {"type": "list", "elements": "dict", "required": True},
                "plans": {"type": "list", "elements": "dict", "default": []},
                "interval": {"type": "int", "default": 15},
                "timeout": {"type": "int", "default": 3600},
            },
        )
        jobs = pair_jobs(args["jobs"], args["plans"])
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        start = time.monotonic()
        pending = {job["jid"]: job for job in jobs}
        finished: dict[str, dict[str, Any]] = {}
        while pending:
            for jid, job in list(pending.items()):
                status = self._execute_module(
                    module_name="ansible.legacy.async_status",
                    module_args={"jid": jid, "mode": "status", "_async_dir": async_dir},
                    task_vars=task_vars,
                )
                if status.get("finished"):
                    finished[job["name"]] = status
                    del pending[jid]
                    outcome = "failed" if status.get("failed") else "done"
                    display.display(
                        f"{job['name']} image: {outcome} after {elapsed(time.monotonic() - start)}"
                    )
            if not pending:
                break
            if time.monotonic() - start > args["timeout"]:
                raise AnsibleActionFail(
                    f"image builds still running after {args['timeout']} s: "
                    + ", ".join(f"{j['name']} (log {j['log']})" for j in pending.values())
                )
            for job in pending.values():
                display.display(
                    f"{job['name']} image: {elapsed(time.monotonic() - start)}, {read_phase(job['log'])}"
                )
            time.sleep(args["interval"])
        for jid in (job["jid"] for job in jobs):
            self._execute_module(
                module_name="ansible.legacy.async_status",
                module_args={"jid": jid, "mode": "cleanup", "_async_dir": async_dir},
                task_vars=task_vars,
            )
        failed = {name: status for name, status in finished.items() if status.get("failed")}
        result["results"] = finished
        result["changed"] = bool(finished)
        if failed:
            result["failed"] = True
            result["msg"] = "; ".join(f"{name} image: {s.get('msg', 'failed')}" for name, s in failed.items())
        return result
