#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: keep and restore a lab VM's rewind point (a QEMU snapshot taken through QMP)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_vm_rewind
short_description: Keep and restore a lab VM's rewind point, a QEMU snapshot taken through QMP
description:
  - Talks to a running lab VM's QEMU through its QMP monitor socket (C(qmp.sock) in the VM's directory,
    mode 0600, never a TCP port) with the C(qemu.qmp) client library.
  - The rewind point is an internal snapshot of the VM's disk overlay and its whole state (memory,
    devices, CPU) saved with the C(snapshot-save) job. Restoring it (C(snapshot-load)) puts the VM back
    to the moment it was taken, without a reboot, in seconds.
  - O(state=present) takes the point when the overlay holds none with O(tag); O(state=restored) loads
    it (the VM runs on from there); O(state=absent) deletes it. Check mode reports what would change.
  - A fresh overlay (M(chardev_lab.lab.lab_vm_instance) O(chardev_lab.lab.lab_vm_instance#module:state=reset))
    has no rewind point.
requirements:
  - qemu.qmp (Python, on the control node)
  - QEMU 6.0 or later (the snapshot jobs)
author:
  - chardev-lab contributors (@chardev-lab)
options:
  vm_dir:
    description: The VM's directory (C(.lab/vms/<name>)), which holds C(qmp.sock) and C(overlay.qcow2).
    type: path
    required: true
  state:
    description: V(present) keeps a rewind point, V(restored) goes back to it, V(absent) removes it.
    type: str
    choices: [present, restored, absent]
    default: present
  tag:
    description: The snapshot's name in the overlay.
    type: str
    default: lab-ready
  timeout:
    description: Seconds a snapshot job may take before the module gives up.
    type: float
    default: 300
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports whether the point would be taken, loaded or deleted, and does none of it. It still asks
        QEMU's monitor whether the point exists, so the VM must be running; RV(exists),
        RV(vm_state_size) and RV(run_status) describe the VM as it is.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Run it on the control node (delegate_to localhost), as the user that started the VMs.
  - No SSH connection to the guest may live across a rewind. The guest's TCP state goes back with the
    point while QEMU's user network (slirp) keeps its own, so a connection open when the point was
    saved and still open when it is loaded is out of step on the two sides, and they answer each
    other's segments for ever (an ACK storm, 1.4 million segments measured, the guest's single vCPU
    busy in softirq, the tasks after the rewind and the next crash twice as slow). The playbooks drop
    their SSH connections just before (meta reset_connection); the module then waits up to 10 s for
    QEMU to see them closed (C(info usernet)) before it saves or loads, and warns about any still open
    (a student logged in), whose session ends with the rewind.
"""

EXAMPLES = r"""
- name: Keep the lab-ready state of the VM
  chardev_lab.lab.lab_vm_rewind:
    vm_dir: .lab/vms/alice
    state: present
  delegate_to: localhost

- name: Rewind a crashed VM
  chardev_lab.lab.lab_vm_rewind:
    vm_dir: .lab/vms/alice
    state: restored
  delegate_to: localhost
"""

RETURN = r"""
exists:
  description: Whether the overlay holds the rewind point after the module ran.
  returned: always
  type: bool
  sample: true
seconds:
  description: How long the snapshot job took (0 when nothing was done).
  returned: always
  type: float
  sample: 3.2
vm_state_size:
  description: Bytes of VM state (memory and devices) the rewind point holds.
  returned: always
  type: int
  sample: 214958080
run_status:
  description: The VM's run state after the module ran (C(query-status)), for example V(running).
  returned: always
  type: str
  sample: running
open_connections:
  description: The TCP connections to the guest's SSH server still open when the snapshot was saved or
    loaded, as QEMU's C(info usernet) lists them (empty when none was).
  returned: always
  type: list
  elements: str
  sample: []
"""

import contextlib
import os
import re
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

try:
    from qemu.qmp import ExecuteError, QMPError
    from qemu.qmp.legacy import QEMUMonitorProtocol

    HAS_QMP = True
except ImportError:
    HAS_QMP = False

QMP_SOCKET = "qmp.sock"
#: Seconds one QMP command may take. While a snapshot job runs, QEMU's main loop is busy saving or
#: loading the VM's memory and the monitor answers nothing: then a command may take up to the module's
#: whole timeout (measured: three VMs loading ~750 MiB points at once on 2 cores took longer than 30 s).
COMMAND_TIMEOUT = 30
OVERLAY = "overlay.qcow2"
#: Seconds to wait for the control node's SSH connections to the guest to close before a snapshot is
#: saved or loaded (the playbooks have just dropped theirs; a closing takes the guest a moment).
CONNECTIONS_GRACE = 10
GUEST_SSH_PORT = 22
#: A TCP line of `info usernet` (QEMU's user network):
#:   TCP[ESTABLISHED]   16       127.0.0.1  2201       10.0.2.15    22     0     0
USERNET_TCP = re.compile(
    r"^\s*TCP\[(?P<state>[A-Z_0-9]+)\]\s+-?\d+\s+\S+\s+\d+\s+(?P<dst>\S+)\s+(?P<dport>\d+)\b"
)
#: Not a connection (the port forward itself), or one whose end both sides have agreed.
CLOSED_STATES = frozenset({"HOST_FORWARD", "TIME_WAIT", "CLOSED"})


class RewindError(Exception):
    """A failure to report with what to do."""


def overlay_node(nodes: list[dict[str, Any]], overlay: str) -> dict[str, Any]:
    """The qcow2 node of the VM's overlay among query-named-block-nodes' answer."""
    real = os.path.realpath(overlay)
    for node in nodes:
        if node.get("drv") == "qcow2" and os.path.realpath(str(node.get("file", ""))) == real:
            return node
    raise RewindError(f"QEMU has no qcow2 node for {overlay}: is this a lab VM started by lab_vm_instance?")


def open_ssh_connections(usernet: str) -> list[str]:
    """The TCP connections to the guest's SSH server that QEMU's user network holds open."""
    found = []
    for line in usernet.splitlines():
        match = USERNET_TCP.match(line)
        if match and match["state"] not in CLOSED_STATES and int(match["dport"]) == GUEST_SSH_PORT:
            found.append(" ".join(line.split()))
    return found


def open_connections_warning(still_open: list[str], state: str) -> str:
    when = "rewind" if state == "restored" else "rewind point"
    return (
        f"{len(still_open)} SSH connection(s) to the VM were still open at the {when} (a login session? "
        "it ends with the rewind): " + "; ".join(still_open)
    )


def find_snapshot(node: dict[str, Any], tag: str) -> dict[str, Any] | None:
    for snapshot in (node.get("image") or {}).get("snapshots") or []:
        if snapshot.get("name") == tag:
            return snapshot
    return None


class Monitor:
    """The VM's QMP monitor: a synchronous qemu.qmp client with a bound on every call."""

    def __init__(self, vm_dir: str, timeout: float) -> None:
        self.path = os.path.join(vm_dir, QMP_SOCKET)
        self.timeout = timeout
        if not os.path.exists(self.path):
            raise RewindError(
                f"{self.path} does not exist: the VM is not running, or was started before rewind points "
                "existed (make lab restarts it with its monitor)"
            )
        self.qmp = QEMUMonitorProtocol(self.path)
        try:
            self.qmp.connect()
        except Exception as exc:  # qemu.qmp raises its own ConnectError, OSError, asyncio errors
            raise RewindError(f"cannot connect to QEMU's monitor {self.path}: {exc}") from exc
        self.command_timeout: float = COMMAND_TIMEOUT
        self.qmp.settimeout(self.command_timeout)

    def wait_longer(self, seconds: float) -> None:
        """Let each command take up to seconds (while a job keeps QEMU's main loop busy)."""
        self.command_timeout = max(seconds, COMMAND_TIMEOUT)
        self.qmp.settimeout(self.command_timeout)

    def close(self) -> None:
        # A monitor that went away mid-command must not hide why.
        with contextlib.suppress(Exception):
            self.qmp.close()

    def cmd(self, name: str, **args: Any) -> Any:
        try:
            return self.qmp.cmd(name, **args)
        except ExecuteError as exc:
            raise RewindError(f"QMP {name} failed: {exc}") from exc
        except TimeoutError as exc:
            raise RewindError(
                f"QEMU's monitor {self.path} did not answer {name} within {self.command_timeout:g} s"
            ) from exc
        except (QMPError, EOFError, OSError) as exc:
            raise RewindError(f"QEMU's monitor {self.path} went away during {name}: {exc!r}") from exc

    def node(self, overlay: str) -> dict[str, Any]:
        return overlay_node(self.cmd("query-named-block-nodes", flat=True), overlay)

    def ssh_connections_closed(self, grace: float = CONNECTIONS_GRACE) -> list[str]:
        """Wait up to grace seconds for no SSH connection to the guest; returns those still open."""
        deadline = time.monotonic() + grace
        while True:
            usernet = self.cmd("human-monitor-command", **{"command-line": "info usernet"})
            still_open = open_ssh_connections(str(usernet))
            if not still_open or time.monotonic() > deadline:
                return still_open
            time.sleep(0.2)

    def run_job(self, command: str, job_id: str, **args: Any) -> float:
        """Start a snapshot job and wait for it; returns its duration. Raises RewindError on failure."""
        started = time.monotonic()
        # A job of an earlier run that timed out may still be there, concluded: its id would be refused.
        for job in self.cmd("query-jobs"):
            if job.get("id") == job_id and job.get("status") == "concluded":
                self.cmd("job-dismiss", id=job_id)
        deadline = started + self.timeout
        # The job holds QEMU's main loop while it copies the memory: the monitor answers when it is done.
        self.wait_longer(self.timeout)
        self.cmd(command, **{"job-id": job_id, **args})
        while True:
            job = next((j for j in self.cmd("query-jobs") if j.get("id") == job_id), None)
            if job is None or job.get("status") == "concluded":
                break
            if time.monotonic() > deadline:
                raise RewindError(f"{command} did not finish within {self.timeout:g} s (job {job_id})")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        self.wait_longer(0)  # the job is over: the monitor answers at once again
        if job is not None:
            self.cmd("job-dismiss", id=job_id)
            if job.get("error"):
                raise RewindError(f"{command} failed: {job['error']}")
        return seconds


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    del system  # it works on the controller's files and sockets its parameters name
    vm_dir, tag, state = params["vm_dir"], params["tag"], params["state"]
    overlay = os.path.join(vm_dir, OVERLAY)
    monitor = Monitor(vm_dir, float(params["timeout"]))
    try:
        node = monitor.node(overlay)
        snapshot = find_snapshot(node, tag)
        name = node["node-name"]
        changed, seconds = False, 0.0
        still_open: list[str] = []
        if state == "present" and snapshot is None:
            changed = True
            if not check_mode:
                still_open = monitor.ssh_connections_closed()
                seconds = monitor.run_job(
                    "snapshot-save", "lab-rewind-save", tag=tag, vmstate=name, devices=[name]
                )
        elif state == "restored":
            if snapshot is None:
                raise RewindError(
                    f"{overlay} has no rewind point {tag!r}: run the lab first (make lab), or reset the VM "
                    "with a fresh disk (playbooks/reset.yml -e reset_mode=fresh)"
                )
            changed = True
            if not check_mode:
                still_open = monitor.ssh_connections_closed()
                seconds = monitor.run_job(
                    "snapshot-load", "lab-rewind-load", tag=tag, vmstate=name, devices=[name]
                )
                # snapshot-load leaves a VM that was stopped for it running again; make sure.
                if monitor.cmd("query-status").get("status") != "running":
                    monitor.cmd("cont")
        elif state == "absent" and snapshot is not None:
            changed = True
            if not check_mode:
                seconds = monitor.run_job("snapshot-delete", "lab-rewind-delete", tag=tag, devices=[name])
        after = find_snapshot(monitor.node(overlay), tag)
        status = monitor.cmd("query-status").get("status", "unknown")
    finally:
        monitor.close()
    return {
        "changed": changed,
        "exists": after is not None,
        "seconds": round(seconds, 2),
        "vm_state_size": int((after or {}).get("vm-state-size", 0)),
        "run_status": status,
        "open_connections": still_open,
    }


ARGUMENT_SPEC: dict[str, Any] = {
    "vm_dir": {"type": "path", "required": True},
    "state": {"type": "str", "choices": ["present", "restored", "absent"], "default": "present"},
    "tag": {"type": "str", "default": "lab-ready"},
    "timeout": {"type": "float", "default": 300},
}


def make_module() -> AnsibleModule:
    """The AnsibleModule with this module's argument spec."""
    return AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)


def main(system: System | None = None) -> None:
    module = make_module()
    if not HAS_QMP:
        module.fail_json(msg=missing_required_lib("qemu.qmp (pip install qemu.qmp; make venv installs it)"))
    try:
        result = run(module.params, module.check_mode, System(module) if system is None else system)
    except RewindError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(
            msg=f"talking to QEMU's monitor in {module.params['vm_dir']} failed: {exc or type(exc).__name__}"
        )
    if result["open_connections"]:
        module.warn(open_connections_warning(result["open_connections"], module.params["state"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
