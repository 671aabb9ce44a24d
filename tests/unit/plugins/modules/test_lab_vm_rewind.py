"""Unit tests for plugins/modules/lab_vm_rewind.py.

No QEMU runs here. A fake QMP server (a thread on a Unix socket at <vm_dir>/qmp.sock) speaks enough of
QEMU's monitor protocol for the module's qemu.qmp client: the greeting, qmp_capabilities,
query-named-block-nodes (flat), the snapshot-save/-load/-delete jobs seen through query-jobs and
job-dismiss, query-status and cont. It records every command it is sent, so the tests check the exact
conversation as well as the module's result.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules import lab_vm_rewind
from ansible_collections.chardev_lab.lab.tests.unit.plugins import fakes

# A Unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, with its NUL).
MAX_SOCKET_PATH = 100

OVERLAY_NODE = "#block312"
FILE_NODE = "#block121"
BASE_NODE = "#block548"

# One snapshot as QEMU 7.2's query-named-block-nodes lists it under image.snapshots.
LAB_READY = {
    "id": "1",
    "name": "lab-ready",
    "vm-state-size": 214958080,
    "date-sec": 1718000000,
    "date-nsec": 0,
    "vm-clock-sec": 412,
    "vm-clock-nsec": 0,
    "icount": -1,
}

JOB_COMMANDS = ("snapshot-save", "snapshot-load", "snapshot-delete")

# QEMU 7.2's `info usernet` for a lab VM: the SSH port forward, and no connection / one open / closing.
USERNET_HEAD = """Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  12       127.0.0.1  2201       10.0.2.15    22     0     0
"""
USERNET_CLOSED = (
    USERNET_HEAD + "  TCP[TIME_WAIT]    -1       127.0.0.1  2201       10.0.2.15    22     0     0\n"
)
USERNET_OPEN = (
    USERNET_HEAD + "  TCP[ESTABLISHED]   16       127.0.0.1  2201       10.0.2.15    22     0     0\n"
)
USERNET_STUCK = (
    USERNET_HEAD + "  TCP[FIN_WAIT_1]    26       127.0.0.1  2201       10.0.2.15    22     0    60\n"
)


# ---------------------------------------------------------------------------------------------------
# The fake QEMU monitor
# ---------------------------------------------------------------------------------------------------


class FakeQmp:
    """A QMP server with one VM's block nodes, its snapshots and its snapshot jobs.

    A job is "running" at the first query-jobs that sees it and "concluded" (its effect applied, or its
    error set) at the next one, unless `conclude` is False. `errors` maps a command to the desc of a
    GenericError it answers with; `hang_up_on` closes the connection when that command arrives (QEMU
    gone) and `silent_on` never answers it (QEMU stuck)."""

    def __init__(self, vm_dir: Path) -> None:
        self.path = str(vm_dir / lab_vm_rewind.QMP_SOCKET)
        overlay = str(vm_dir / lab_vm_rewind.OVERLAY)
        self.base = str(vm_dir.parent / "base.raw")
        # As QEMU lists an overlay drive: the qcow2 node over its file (protocol) node, which carries the
        # same file name, and the read-only backing image.
        self.nodes: list[dict[str, Any]] = [
            {"node-name": OVERLAY_NODE, "drv": "qcow2", "file": overlay, "ro": False},
            {"node-name": FILE_NODE, "drv": "file", "file": overlay, "ro": False},
            {"node-name": BASE_NODE, "drv": "raw", "file": self.base, "ro": True},
        ]
        self.snapshots: dict[str, list[dict[str, Any]]] = {OVERLAY_NODE: []}
        self.status = "running"
        self.status_after_load = "running"
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_error = ""
        self.conclude = True
        self.errors: dict[str, str] = {}
        self.hang_up_on = ""
        self.silent_on = ""
        # The answers to `info usernet`, one per call; the last one repeats.
        self.usernet = [USERNET_CLOSED]
        self.received: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._listener.settimeout(0.01)
        self._thread = threading.Thread(target=self._serve, name="fake-qmp", daemon=True)
        self._thread.start()

    # The test's view --------------------------------------------------------------------------------

    @property
    def commands(self) -> list[str]:
        return [msg["execute"] for msg in self.received]

    def arguments(self, command: str) -> dict[str, Any]:
        return next(msg.get("arguments", {}) for msg in self.received if msg["execute"] == command)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._listener.close()

    # The server -------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(0.01)
        version = {"qemu": {"major": 7, "minor": 2, "micro": 11}, "package": "Debian 1:7.2+dfsg-7+deb12u7"}
        self._send(conn, {"QMP": {"version": version, "capabilities": []}})
        # Like QEMU's parser, a stream of JSON objects: qemu.qmp ends its commands with no newline.
        decoder, buffer = json.JSONDecoder(), ""
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buffer += data.decode("utf-8")
            while buffer.strip():
                try:
                    msg, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break  # the rest of the object is still on its way
                buffer = buffer.lstrip()[end:]
                self.received.append(msg)
                if msg["execute"] == self.hang_up_on:
                    return
                if msg["execute"] == self.silent_on:
                    continue
                reply = self._answer(msg["execute"], msg.get("arguments", {}))
                if "id" in msg:
                    reply["id"] = msg["id"]
                self._send(conn, reply)

    @staticmethod
    def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
        conn.sendall((json.dumps(msg) + "\n").encode("utf-8"))

    @staticmethod
    def _error(desc: str) -> dict[str, Any]:
        return {"error": {"class": "GenericError", "desc": desc}}

    def _answer(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command in self.errors:
            return self._error(self.errors[command])
        if command == "qmp_capabilities":
            return {"return": {}}
        if command == "query-named-block-nodes":
            return {"return": self._block_nodes(args)}
        if command in JOB_COMMANDS:
            job_id = args["job-id"]
            if job_id in self.jobs:
                return self._error(f"Job ID '{job_id}' already in use")
            self.jobs[job_id] = {"id": job_id, "type": command, "status": "created", "args": args}
            return {"return": {}}
        if command == "query-jobs":
            return {"return": self._query_jobs()}
        if command == "job-dismiss":
            job = self.jobs.get(args["id"])
            if job is None:
                return self._error(f"Job not found: '{args['id']}'")
            if job["status"] != "concluded":
                return self._error(
                    f"Job '{args['id']}' in state '{job['status']}' cannot accept command verb 'dismiss'"
                )
            del self.jobs[args["id"]]
            return {"return": {}}
        if command == "query-status":
            return {
                "return": {"status": self.status, "running": self.status == "running", "singlestep": False}
            }
        if command == "cont":
            self.status = "running"
            return {"return": {}}
        if command == "human-monitor-command" and args.get("command-line") == "info usernet":
            return {"return": self.usernet.pop(0) if len(self.usernet) > 1 else self.usernet[0]}
        return {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}}

    def _block_nodes(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        assert args.get("flat") is True, "without flat, QEMU repeats the nodes of every backing chain"
        nodes = []
        for node in self.nodes:
            node = {**node, "image": {"filename": node["file"], "format": node["drv"]}}
            if node["node-name"] in self.snapshots and self.snapshots[node["node-name"]]:
                node["image"]["snapshots"] = [dict(s) for s in self.snapshots[node["node-name"]]]
            nodes.append(node)
        return nodes

    def _query_jobs(self) -> list[dict[str, Any]]:
        answer = []
        for job in self.jobs.values():
            if job["status"] == "created":
                job["status"] = "running"
            elif job["status"] == "running" and self.conclude:
                job["status"] = "concluded"
                if self.job_error:
                    job["error"] = self.job_error
                else:
                    self._finish(job["type"], job["args"])
            info = {"id": job["id"], "type": job["type"], "status": job["status"]}
            info |= {"current-progress": 1 if job["status"] == "concluded" else 0, "total-progress": 1}
            if "error" in job:
                info["error"] = job["error"]
            answer.append(info)
        return answer

    def _finish(self, command: str, args: dict[str, Any]) -> None:
        """What a successful snapshot job does to the VM."""
        for device in args["devices"]:
            snapshots = self.snapshots.setdefault(device, [])
            if command == "snapshot-save":
                snapshots.append({**LAB_READY, "id": str(len(snapshots) + 1), "name": args["tag"]})
            elif command == "snapshot-delete":
                snapshots[:] = [s for s in snapshots if s["name"] != args["tag"]]
        if command == "snapshot-load":
            self.status = self.status_after_load


# ---------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def vm_dir(tmp_path: Path) -> Iterator[Path]:
    """The VM's directory: under tmp_path, or a short temporary directory when tmp_path is too long
    for a Unix socket path."""
    path = tmp_path / "vms" / "alice"
    if len(str(path / lab_vm_rewind.QMP_SOCKET)) <= MAX_SOCKET_PATH:
        path.mkdir(parents=True)
        yield path
        return
    short = Path(tempfile.mkdtemp(prefix="rw", dir="/tmp"))
    try:
        (short / "alice").mkdir()
        yield short / "alice"
    finally:
        shutil.rmtree(short)


@pytest.fixture
def qmp(vm_dir: Path) -> Iterator[FakeQmp]:
    fake = FakeQmp(vm_dir)
    yield fake
    fake.stop()


@pytest.fixture
def with_point(qmp: FakeQmp) -> FakeQmp:
    """A VM whose overlay holds the lab-ready rewind point."""
    qmp.snapshots[OVERLAY_NODE].append(dict(LAB_READY))
    return qmp


def run_module(capsys: pytest.CaptureFixture[str], vm_dir: Path, **extra: Any) -> dict[str, Any]:
    return fakes.run_module(lab_vm_rewind, {"vm_dir": str(vm_dir), **extra}, capsys)


def job_sequence(command: str) -> list[str]:
    """A snapshot job as the module drives it: a save or load first looks at the guest's SSH connections
    (info usernet, once when none is open); then a look for a concluded job of an earlier run with its
    id, started, seen running, seen concluded, dismissed."""
    usernet = ["human-monitor-command"] if command in ("snapshot-save", "snapshot-load") else []
    return [*usernet, "query-jobs", command, "query-jobs", "query-jobs", "job-dismiss"]


CONNECT = ["qmp_capabilities", "query-named-block-nodes"]
FINISH = ["query-named-block-nodes", "query-status"]


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------


def test_overlay_node_is_the_qcow2_node_not_its_file_node(tmp_path: Path) -> None:
    overlay = str(tmp_path / "overlay.qcow2")
    nodes = [
        {"node-name": FILE_NODE, "drv": "file", "file": overlay},
        {"node-name": OVERLAY_NODE, "drv": "qcow2", "file": overlay},
    ]
    assert lab_vm_rewind.overlay_node(nodes, overlay)["node-name"] == OVERLAY_NODE


def test_overlay_node_compares_real_paths(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    nodes = [{"node-name": OVERLAY_NODE, "drv": "qcow2", "file": str(tmp_path / "real/overlay.qcow2")}]
    assert (
        lab_vm_rewind.overlay_node(nodes, str(tmp_path / "link/overlay.qcow2"))["node-name"] == OVERLAY_NODE
    )


def test_overlay_node_missing(tmp_path: Path) -> None:
    nodes = [{"node-name": BASE_NODE, "drv": "qcow2", "file": str(tmp_path / "other.qcow2")}]
    with pytest.raises(lab_vm_rewind.RewindError, match=r"no qcow2 node for .*overlay\.qcow2"):
        lab_vm_rewind.overlay_node(nodes, str(tmp_path / "overlay.qcow2"))


@pytest.mark.parametrize(
    ("node", "found"),
    [
        ({"image": {"snapshots": [LAB_READY]}}, True),
        ({"image": {"snapshots": [{**LAB_READY, "name": "other"}]}}, False),
        ({"image": {}}, False),  # QEMU leaves out "snapshots" when there are none
        ({}, False),
    ],
    ids=["present", "another-tag", "no-snapshots-key", "no-image"],
)
def test_find_snapshot(node: dict[str, Any], found: bool) -> None:
    assert (lab_vm_rewind.find_snapshot(node, "lab-ready") is not None) is found


# ---------------------------------------------------------------------------------------------------
# The module against the fake monitor
# ---------------------------------------------------------------------------------------------------


def test_present_takes_the_point(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(capsys, vm_dir, state="present")
    assert result["changed"] is True
    assert result["exists"] is True
    assert result["seconds"] > 0
    assert result["vm_state_size"] == LAB_READY["vm-state-size"]
    assert result["run_status"] == "running"
    assert qmp.commands == [*CONNECT, *job_sequence("snapshot-save"), *FINISH]
    # The VM state goes into the overlay, the only writable node with snapshots (not its file node).
    assert qmp.arguments("snapshot-save") == {
        "job-id": "lab-rewind-save",
        "tag": "lab-ready",
        "vmstate": OVERLAY_NODE,
        "devices": [OVERLAY_NODE],
    }
    assert qmp.arguments("job-dismiss") == {"id": "lab-rewind-save"}
    assert qmp.jobs == {}
    assert [s["name"] for s in qmp.snapshots[OVERLAY_NODE]] == ["lab-ready"]


def test_present_with_another_tag(
    with_point: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, vm_dir, state="present", tag="before-lab-3")
    assert result["changed"] is True
    assert with_point.arguments("snapshot-save")["tag"] == "before-lab-3"
    assert [s["name"] for s in with_point.snapshots[OVERLAY_NODE]] == ["lab-ready", "before-lab-3"]


def test_present_when_the_point_exists(
    with_point: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, vm_dir, state="present")
    assert result == {
        "changed": False,
        "exists": True,
        "seconds": 0.0,
        "vm_state_size": LAB_READY["vm-state-size"],
        "run_status": "running",
        "open_connections": [],
        "invocation": result["invocation"],
    }
    assert with_point.commands == [*CONNECT, *FINISH]


def test_restored_loads_the_point(
    with_point: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, vm_dir, state="restored")
    assert result["changed"] is True
    assert result["exists"] is True
    assert result["seconds"] > 0
    assert result["run_status"] == "running"
    # QEMU runs the VM again itself after the load: no cont.
    assert with_point.commands == [*CONNECT, *job_sequence("snapshot-load"), "query-status", *FINISH]
    assert with_point.arguments("snapshot-load") == {
        "job-id": "lab-rewind-load",
        "tag": "lab-ready",
        "vmstate": OVERLAY_NODE,
        "devices": [OVERLAY_NODE],
    }


@pytest.mark.parametrize("after_load", ["paused", "restore-vm"])
def test_restored_continues_a_stopped_vm(
    with_point: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str], after_load: str
) -> None:
    with_point.status = "guest-panicked"
    with_point.status_after_load = after_load
    result = run_module(capsys, vm_dir, state="restored")
    assert result["changed"] is True
    assert result["run_status"] == "running"
    assert with_point.commands == [
        *CONNECT,
        *job_sequence("snapshot-load"),
        "query-status",
        "cont",
        *FINISH,
    ]


def test_restored_without_a_point(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(capsys, vm_dir, state="restored")
    assert result["failed"] is True
    assert "has no rewind point 'lab-ready'" in result["msg"]
    assert "make lab" in result["msg"]
    assert "reset_mode=fresh" in result["msg"]
    assert qmp.commands == CONNECT


def test_absent_deletes_the_point(
    with_point: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, vm_dir, state="absent")
    assert result["changed"] is True
    assert result["exists"] is False
    assert result["vm_state_size"] == 0
    assert with_point.commands == [*CONNECT, *job_sequence("snapshot-delete"), *FINISH]
    assert with_point.arguments("snapshot-delete") == {
        "job-id": "lab-rewind-delete",
        "tag": "lab-ready",
        "devices": [OVERLAY_NODE],
    }
    assert with_point.snapshots[OVERLAY_NODE] == []


def test_absent_when_there_is_no_point(
    qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, vm_dir, state="absent")
    assert result["changed"] is False
    assert result["exists"] is False
    assert result["seconds"] == 0
    assert qmp.commands == [*CONNECT, *FINISH]


@pytest.mark.parametrize(
    ("state", "point", "exists"),
    [("present", False, False), ("restored", True, True), ("absent", True, True)],
)
def test_check_mode_starts_no_job(
    qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str], state: str, point: bool, exists: bool
) -> None:
    if point:
        qmp.snapshots[OVERLAY_NODE].append(dict(LAB_READY))
    qmp.status = "paused"  # not even a cont in check mode
    result = run_module(capsys, vm_dir, state=state, _ansible_check_mode=True)
    assert result["changed"] is True
    assert result["exists"] is exists
    assert result["seconds"] == 0
    assert result["run_status"] == "paused"
    assert qmp.commands == [*CONNECT, *FINISH]
    assert [s["name"] for s in qmp.snapshots[OVERLAY_NODE]] == (["lab-ready"] if point else [])


def test_job_concluding_with_an_error(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qmp.job_error = "Error while writing VM state: No space left on device"
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert result["msg"] == "snapshot-save failed: Error while writing VM state: No space left on device"
    # The failed job is dismissed all the same: its job-id is free for the next run.
    assert qmp.commands == [*CONNECT, *job_sequence("snapshot-save")]
    assert qmp.jobs == {}
    assert qmp.snapshots[OVERLAY_NODE] == []


def test_command_error(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qmp.errors["snapshot-save"] = "Device '#block548' is writable but does not support snapshots"
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert result["msg"] == (
        "QMP snapshot-save failed: Device '#block548' is writable but does not support snapshots"
    )
    assert qmp.commands == [*CONNECT, "human-monitor-command", "query-jobs", "snapshot-save"]


def test_error_on_the_first_query(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qmp.errors["query-named-block-nodes"] = "Parameter 'flat' is unexpected"
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert result["msg"] == "QMP query-named-block-nodes failed: Parameter 'flat' is unexpected"


def test_missing_socket(vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(capsys, vm_dir, state="restored")
    assert result["failed"] is True
    assert "qmp.sock does not exist: the VM is not running" in result["msg"]
    assert "make lab" in result["msg"]


def test_stale_socket(vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # What a killed QEMU leaves behind: the socket file, with nobody listening on it.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(vm_dir / lab_vm_rewind.QMP_SOCKET))
    stale.close()
    result = run_module(capsys, vm_dir, state="restored")
    assert result["failed"] is True
    # playbooks/reset.yml's rescue prints this message and the faults molecule scenario looks for it.
    assert result["msg"].startswith(f"cannot connect to QEMU's monitor {vm_dir / 'qmp.sock'}: ")


def test_overlay_node_not_found(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Another VM's disk: QEMU's qcow2 node is not this directory's overlay.
    qmp.nodes[0]["file"] = str(vm_dir.parent / "bob" / "overlay.qcow2")
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert "QEMU has no qcow2 node for" in result["msg"]
    assert "lab_vm_instance" in result["msg"]
    assert qmp.commands == CONNECT


def test_job_timeout(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qmp.conclude = False
    result = run_module(capsys, vm_dir, state="present", timeout=0.05)
    assert result["failed"] is True
    assert result["msg"] == "snapshot-save did not finish within 0.05 s (job lab-rewind-save)"
    assert qmp.commands[:5] == [*CONNECT, "human-monitor-command", "query-jobs", "snapshot-save"]
    assert set(qmp.commands[5:]) == {"query-jobs"}
    assert qmp.jobs["lab-rewind-save"]["status"] == "running"


def test_without_qemu_qmp(
    monkeypatch: pytest.MonkeyPatch, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab_vm_rewind, "HAS_QMP", False)
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert "Failed to import the required Python library (qemu.qmp" in result["msg"]
    assert "make venv installs it" in result["msg"]


def test_bad_state_is_refused(vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(capsys, vm_dir, state="rewound")
    assert result["failed"] is True
    assert "value of state must be one of: present, restored, absent" in result["msg"]


def test_monitor_closes_the_connection(
    qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two runs in a row: the first one's connection is closed, or the server would not take the second.
    run_module(capsys, vm_dir, state="present")
    result = run_module(capsys, vm_dir, state="present")
    assert result["changed"] is False
    assert qmp.commands.count("qmp_capabilities") == 2


# ---------------------------------------------------------------------------------------------------
# A monitor that goes away or stops answering: a failed result that says so, never a traceback
# ---------------------------------------------------------------------------------------------------


def test_monitor_hangs_up_mid_job(qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qmp.hang_up_on = "query-jobs"
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert "went away during query-jobs" in result["msg"], result["msg"]


def test_monitor_that_does_not_answer(
    qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    qmp.silent_on = "query-status"
    # The module gives every command 30 s; a fraction of a second is enough here.
    settimeout = lab_vm_rewind.QEMUMonitorProtocol.settimeout
    monkeypatch.setattr(
        lab_vm_rewind.QEMUMonitorProtocol, "settimeout", lambda self, _seconds: settimeout(self, 0.2)
    )
    result = run_module(capsys, vm_dir, state="present")
    assert result["failed"] is True
    assert result["msg"] == (
        f"QEMU's monitor {vm_dir / 'qmp.sock'} did not answer query-status within "
        f"{lab_vm_rewind.COMMAND_TIMEOUT} s"
    ), result["msg"]


def test_open_ssh_connections_from_info_usernet() -> None:
    assert lab_vm_rewind.open_ssh_connections(USERNET_CLOSED) == []
    assert lab_vm_rewind.open_ssh_connections(USERNET_OPEN) == [
        "TCP[ESTABLISHED] 16 127.0.0.1 2201 10.0.2.15 22 0 0"
    ]
    assert len(lab_vm_rewind.open_ssh_connections(USERNET_STUCK)) == 1
    # A guest's own connection out (to the mirror relay, port 80) is not the control node's SSH.
    out = USERNET_HEAD + "  TCP[ESTABLISHED]   17       10.0.2.15 40000   10.0.2.100    80     0     0\n"
    assert lab_vm_rewind.open_ssh_connections(out) == []


def test_the_point_waits_for_the_ssh_connections_to_close(
    qmp: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qmp.usernet = [USERNET_OPEN, USERNET_STUCK, USERNET_CLOSED]
    result = run_module(capsys, vm_dir, state="present")
    assert result["changed"] and result["open_connections"] == [] and "warnings" not in result
    assert qmp.commands.count("human-monitor-command") == 3
    assert qmp.commands.index("snapshot-save") > max(
        i for i, c in enumerate(qmp.commands) if c == "human-monitor-command"
    )


def test_a_connection_that_stays_open_is_warned_about(
    with_point: FakeQmp, vm_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_vm_rewind, "CONNECTIONS_GRACE", 0.5)
    with_point.usernet = [USERNET_OPEN]
    result = run_module(capsys, vm_dir, state="restored")
    assert result["changed"] and result["exists"]
    assert result["open_connections"] == ["TCP[ESTABLISHED] 16 127.0.0.1 2201 10.0.2.15 22 0 0"]
    # Ansible shows each distinct warning once per process: the text is checked on its own.
    warning = lab_vm_rewind.open_connections_warning(result["open_connections"], "restored")
    assert warning.startswith("1 SSH connection(s) to the VM were still open at the rewind ("), warning
