"""A stand-in for qemu-system-x86_64 in lab_vm_instance's tests: no guest, only QEMU's outside.

It reads the options lab_vm_instance gives QEMU the way QEMU does (option lists split on single
commas, ",," being a comma; -kernel, -serial file:, -pidfile taken whole) and fails like QEMU when a
file is missing. FAKE_QEMU_MODE says what it does, a comma-separated list of:
  boot      daemonize, then answer every connection to the forwarded SSH port with an SSH banner
  hang      daemonize, write a few console lines, never answer SSH (a guest that does not boot)
  crash     daemonize, write a panic to the console, exit at once
  die       exit 1 at once with an error on stderr, as QEMU does when a device cannot be set up
  stubborn  ignore SIGTERM (only SIGKILL stops it)
FAKE_QEMU_ARGV, when set, is a file that receives the command line (JSON).
Run through a bash wrapper (`exec -a "$0"`) so that /proc/<pid>/cmdline starts with the wrapper's
path, a name beginning with "qemu", as a real QEMU's does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

FLAGS = {"-daemonize"}


def split_options(value: str) -> list[str]:
    """A QEMU option list: single commas separate, a doubled comma is a comma."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    parts.append(current)
    return parts


def option_dict(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in split_options(value) if "=" in part)


def fail(message: str) -> None:
    sys.stderr.write(f"qemu-system-x86_64: {message}\n")
    sys.exit(1)


def main(argv: list[str]) -> None:
    modes = set(os.environ.get("FAKE_QEMU_MODE", "boot").split(","))
    if os.environ.get("FAKE_QEMU_ARGV"):
        with open(os.environ["FAKE_QEMU_ARGV"], "w", encoding="utf-8") as handle:
            json.dump(argv, handle)
    opts: dict[str, list[str]] = {}
    args = iter(argv[1:])
    for arg in args:
        opts.setdefault(arg, []).append("" if arg in FLAGS else next(args))
    if "die" in modes:
        fail("-machine q35,accel=kvm: failed to initialize kvm: Permission denied")
    for name in ("-kernel", "-initrd"):
        if not os.path.exists(opts[name][0]):
            fail(f"could not load {name[1:]} '{opts[name][0]}': No such file or directory")
    drive = option_dict(opts["-drive"][0])["file"]
    if not os.path.exists(drive):
        fail(f"-drive {opts['-drive'][0]}: Could not open '{drive}': No such file or directory")
    seed = option_dict(opts["-fw_cfg"][0])["file"]
    if not os.path.exists(seed):
        fail(f"-fw_cfg {opts['-fw_cfg'][0]}: can't load {seed}")
    hostfwd = next(p for p in split_options(opts["-netdev"][0]) if p.startswith("hostfwd="))
    _proto, address, port_and_guest = hostfwd.split(":", 2)
    port = int(port_and_guest.split("-", 1)[0])
    console = open(opts["-serial"][0].removeprefix("file:"), "w", encoding="utf-8")  # noqa: SIM115
    # The QMP monitor: like QEMU, a listening Unix socket made before daemonizing (nothing answers it).
    qmp_path = split_options(opts["-qmp"][0])[0].removeprefix("unix:")
    qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(qmp_path)
    qmp.bind(qmp_path)
    qmp.listen(1)
    listener = None
    if "boot" in modes:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((address, port))
        except OSError as exc:
            fail(f"-netdev {opts['-netdev'][0]}: could not set up host forwarding rule '{hostfwd}': {exc}")
        listener.listen(8)

    if "-daemonize" in opts:
        ready_r, ready_w = os.pipe()
        if os.fork():
            os.close(ready_w)
            sys.exit(0 if os.read(ready_r, 2) == b"ok" else 1)
        os.close(ready_r)
        os.setsid()
        with open(opts["-pidfile"][0], "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        if "stubborn" in modes:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(ready_w, b"ok")
        os.close(ready_w)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

    console.write("SeaBIOS (version fake)\nBooting from ROM...\n[    0.000000] Linux version 6.1.0-fake\n")
    if "crash" in modes:
        console.write("[    1.234567] Kernel panic - not syncing: fake panic\n")
        console.close()
        os._exit(1)
    if "hang" in modes:
        console.write("[    2.345678] fake: waiting for root device /dev/vda...\n")
    console.flush()
    while True:
        if listener is None:
            time.sleep(60)
            continue
        conn, _address = listener.accept()
        with conn:
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 fake\r\n")


if __name__ == "__main__":
    main(sys.argv)
