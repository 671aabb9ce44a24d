"""The lab_vm role's relay (roles/lab_vm/files/lab_vm_relay.py): what QEMU runs for each connection an
isolated guest opens to a mirror (guestfwd=...-cmd:). Run as QEMU runs it, through subprocess on its
file, with a socket as its stdin and stdout."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

RELAY = Path(__file__).resolve().parents[2] / "roles/lab_vm/files/lab_vm_relay.py"


def test_relay_reaches_only_its_destination(tmp_path: Path) -> None:
    """The relay script for real: the guest side is a socket on its stdin and stdout, as QEMU gives it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        guest, qemu_side = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RELAY), "127.0.0.1", str(server.getsockname()[1])],
            stdin=qemu_side,
            stdout=qemu_side,
            stderr=qemu_side,
        )
        qemu_side.close()
        conn, _address = server.accept()
        with conn, guest:
            guest.sendall(b"GET / HTTP/1.0\r\n\r\n")
            guest.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"GET / HTTP/1.0\r\n\r\n"
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello")
            conn.close()
            assert guest.recv(100) == b"HTTP/1.0 200 OK\r\n\r\nhello"
        assert proc.wait(10) == 0


def test_relay_refused_destination_is_silent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guest, qemu_side = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, str(RELAY), "127.0.0.1", str(port)],
        stdin=qemu_side,
        stdout=qemu_side,
        stderr=qemu_side,
    )
    qemu_side.close()
    assert proc.wait(10) == 1
    with guest:
        # Nothing leaks to the guest (no traceback on the socket that stands in for stderr).
        assert guest.recv(100) == b""
