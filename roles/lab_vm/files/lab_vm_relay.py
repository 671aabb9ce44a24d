#!/usr/bin/python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Relay one guest connection to one fixed host:port: the only way out of an isolated lab VM.

QEMU runs this for every TCP connection the guest opens to a `guestfwd` address (`-netdev
user,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:python3 lab_vm_relay.py HOST 80`). Standard input and
output are that connection (both are the same socket; so is standard error, which must stay silent).
The destination is fixed on the command line by the control node, never chosen by the guest: a guest
that speaks to this address reaches the package mirror it was given and nothing else.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

CONNECT_TIMEOUT = 20.0
IDLE_TIMEOUT = 600.0
CHUNK = 65536


def relay(guest: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until both sides have closed (half-closes are passed on)."""
    peers = {guest: upstream, upstream: guest}
    open_reads = {guest, upstream}
    with selectors.DefaultSelector() as sel:
        for sock in open_reads:
            sel.register(sock, selectors.EVENT_READ)
        while open_reads:
            events = sel.select(IDLE_TIMEOUT)
            if not events:
                return
            for key, _mask in events:
                src = key.fileobj
                assert isinstance(src, socket.socket)
                data = src.recv(CHUNK)
                if data:
                    peers[src].sendall(data)
                    continue
                sel.unregister(src)
                open_reads.discard(src)
                try:
                    peers[src].shutdown(socket.SHUT_WR)
                except OSError:
                    return


def main(argv: list[str]) -> int:
    # Standard error is the guest's socket: nothing may be written to it.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    host, port = argv[1], int(argv[2])
    guest = socket.socket(fileno=os.dup(0))
    try:
        upstream = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError:
        return 1
    upstream.settimeout(None)
    try:
        relay(guest, upstream)
    except OSError:
        return 1
    finally:
        upstream.close()
        guest.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
