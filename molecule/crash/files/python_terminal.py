#!/usr/bin/env python3
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A student's second terminal with a Python shell in it, for the worksheet test (docs/lesson.md).

The article's crash needs a Python shell that holds /dev/chardev open while another terminal runs
rmmod. This starts a real interactive `python3 -i` whose standard input is a FIFO, so that each line
the student would type is a separate command (`type`), and whose output goes to files:

  python_terminal.py start DIR            start the shell, detached (its own session), and return
  python_terminal.py type DIR LINE [-w S] type LINE, wait up to S seconds for its output, print it

The shell opens the FIFO read-write, so it never sees an end of file between two lines. A line that
never returns (f.read() on the crash variant after rmmod) prints nothing: the shell is stuck in the
kernel, as the student's is. Runs on the lab VM's Python (3.9+), stdlib only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def paths(directory: str) -> dict[str, str]:
    return {name: os.path.join(directory, name) for name in ("stdin", "stdout", "stderr", "pid")}


def start(directory: str) -> int:
    files = paths(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(files["stdin"]):
        os.mkfifo(files["stdin"], 0o600)
    if os.fork() != 0:
        # The parent waits until the shell is up (its pid file), then returns.
        for _attempt in range(100):
            if os.path.exists(files["pid"]):
                return 0
            time.sleep(0.1)
        print("the Python shell did not start", file=sys.stderr)
        return 1
    os.setsid()
    stdin = os.open(files["stdin"], os.O_RDWR)
    stdout = os.open(files["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    stderr = os.open(files["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    with open(files["pid"], "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    os.execvp("python3", ["python3", "-i", "-u", "-q"])
    return 1  # not reached


def type_line(directory: str, line: str, wait: float) -> int:
    files = paths(directory)
    before = os.path.getsize(files["stdout"])
    # The output is complete when the shell prints its next prompt (">>> " on stderr) after the line.
    with open(files["stderr"], encoding="utf-8", errors="replace") as handle:
        prompts = handle.read().count(">>> ")
    fd = os.open(files["stdin"], os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with open(files["stderr"], encoding="utf-8", errors="replace") as handle:
            if handle.read().count(">>> ") > prompts:
                break
        time.sleep(0.1)
    with open(files["stdout"], "rb") as handle:
        handle.seek(before)
        sys.stdout.write(handle.read().decode("utf-8", errors="replace"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start").add_argument("directory")
    typed = sub.add_parser("type")
    typed.add_argument("directory")
    typed.add_argument("line")
    typed.add_argument("-w", "--wait", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "start":
        return start(args.directory)
    return type_line(args.directory, args.line, args.wait)


if __name__ == "__main__":
    sys.exit(main())
