"""Unit tests for the tools around the lesson worksheet (docs/lesson.md), imported by their module names
from tools/ and molecule/resources/tests/ on pytest's pythonpath (pyproject.toml):

* molecule/resources/tests/worksheet.py: the worksheet's runnable parts, and how an output is compared;
* tools/lesson_table.py: the table "what it says on each kernel", written from check.yml's verdicts;
* molecule/crash/files/python_terminal.py: the student's second terminal, a real `python3 -i` started
  here in tmp_path (the only process this file starts; it is killed by its pid file at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lesson_table
import pytest
import worksheet

REPO_ROOT = Path(__file__).resolve().parents[2]
LESSON = REPO_ROOT / "docs/lesson.md"
PYTHON_TERMINAL = REPO_ROOT / "molecule/crash/files/python_terminal.py"

# ---------------------------------------------------------------------------------------------------------
# worksheet.py
# ---------------------------------------------------------------------------------------------------------


def step(terminal: str, text: str, *output: str) -> dict[str, Any]:
    return {"terminal": terminal, "input": text, "output": list(output)}


def test_parse_the_real_worksheet() -> None:
    parts = worksheet.parse(LESSON.read_text(encoding="utf-8"))
    assert list(parts) == ["refused", "crash"]
    assert parts["refused"] == [
        step("shell", "cat /sys/module/chardev/version", "1.0-safe"),
        step("python", 'f = open("/dev/chardev", "r")'),
        step("shell", "rmmod chardev", "rmmod: ERROR: Module chardev is in use"),
        step("python", "f.read()", "'I already told you <n> times Hello world!\\n'"),
        step("python", "f.close()"),
    ]
    crash = parts["crash"]
    assert [(s["terminal"], s["input"]) for s in crash] == [
        ("shell", "cat /sys/module/chardev/version"),
        ("shell", "cat /dev/chardev"),
        ("shell", "cat /dev/chardev"),
        ("python", 'f = open("/dev/chardev", "r")'),
        ("shell", "rmmod chardev"),
        ("shell", "grep -c '^chardev ' /proc/modules"),
        ("python", "f.read()"),
        ("shell", "dmesg | grep -c 'BUG: unable to handle page fault for address'"),
        ("shell", "dmesg | grep -c 'Fixing recursive fault but reboot is needed!'"),
        ("shell", "ps -o stat= -C python3"),
    ]
    assert [s["output"] for s in crash] == [
        ["1.0-crash"],
        ["I already told you 0 times Hello world!"],
        ["I already told you 1 times Hello world!"],
        [],
        [],
        ["0"],
        [],  # never returns
        ["2"],
        ["1"],
        ["<state>"],
    ]


def test_the_real_worksheet_matches_what_a_vm_prints() -> None:
    parts = worksheet.parse(LESSON.read_text(encoding="utf-8"))
    refused = {s["input"]: s["output"] for s in parts["refused"]}
    assert worksheet.mismatches(refused["f.read()"], "'I already told you 3 times Hello world!\\n'\n") == []
    # raw over SSH: CRLF line ends
    assert worksheet.mismatches(refused["rmmod chardev"], "rmmod: ERROR: Module chardev is in use\r\n") == []
    ps = parts["crash"][-1]["output"]
    assert worksheet.mismatches(ps, "D\n") == worksheet.mismatches(ps, "X\n") == []
    assert worksheet.mismatches(ps, "D\nS\n") == ["2 output lines, the worksheet shows 1: ['D', 'S']"]
    assert worksheet.mismatches(ps, "") == ["0 output lines, the worksheet shows 1: []"]


def test_parse_synthetic_markdown() -> None:
    text = """\
# Title

```console
# not in a part: shown, not run
out
```

<!-- worksheet: one -->
Prose, and a block of another kind, which is not run:

```text
# make lesson
```

```console
# echo a
a
# true
# printf 'x\\n\\ny\\n'
x

y
```

```pycon
>>> 1 + 1
2
>>> # <!-- worksheet: end --> inside a block is text
```
<!-- worksheet: end -->

```pycon
>>> outside()
```

<!-- worksheet: two -->
```console
# uname -r
<release>
```
<!-- worksheet: end -->
<!-- worksheet: one -->
```pycon
>>> again
```
<!-- worksheet: end -->
"""
    parts = worksheet.parse(text)
    assert parts == {
        "one": [
            step("shell", "echo a", "a"),
            step("shell", "true"),
            step("shell", "printf 'x\\n\\ny\\n'", "x", "", "y"),
            step("python", "1 + 1", "2"),
            step("python", "# <!-- worksheet: end --> inside a block is text"),
            step("python", "again"),
        ],
        "two": [step("shell", "uname -r", "<release>")],
    }
    assert worksheet.parse("no parts at all\n```console\n# ls\n```\n") == {}


def test_line_pattern() -> None:
    pattern = worksheet.line_pattern("I already told you <n> times Hello world!")
    assert pattern.fullmatch("I already told you 42 times Hello world!")
    assert pattern.fullmatch("I already told you 42 times Hello world!  \r")  # trailing space, CR
    assert not pattern.fullmatch("I already told you  times Hello world!")  # a placeholder is not empty
    assert not pattern.fullmatch("I already told you 42 times Hello world")
    assert not pattern.fullmatch(" I already told you 42 times Hello world!")
    # regular-expression characters are literal; several placeholders; upper case is not a placeholder
    assert worksheet.line_pattern("[<pid>] (a.b)* <state> <X>").fullmatch("[845] (a.b)* D <X>")
    assert not worksheet.line_pattern("[<pid>] (a.b)*").fullmatch("[845] (aXb)")
    assert not worksheet.line_pattern("<X>").fullmatch("D")
    assert worksheet.line_pattern("<exit code>").fullmatch("0")


def test_mismatches() -> None:
    expected = ["I already told you <n> times Hello world!", ""]
    assert worksheet.mismatches(expected, "\nI already told you 7 times Hello world!\n\n") == []
    assert worksheet.mismatches([], "") == worksheet.mismatches([], "  \n") == []
    assert worksheet.mismatches(["a", "b"], "a\nc\n") == ["worksheet 'b', got 'c'"]
    assert worksheet.mismatches(["<n>", "<n>"], "1\n") == ["1 output lines, the worksheet shows 2: ['1']"]


def test_worksheet_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert worksheet.main(["worksheet.py", str(LESSON), "refused"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert steps == worksheet.parse(LESSON.read_text(encoding="utf-8"))["refused"]
    assert worksheet.main(["worksheet.py", str(LESSON), "missing"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{LESSON} has no part 'missing' (it has refused, crash)\n"


# ---------------------------------------------------------------------------------------------------------
# tools/lesson_table.py
# ---------------------------------------------------------------------------------------------------------


def fault(
    role: str, offset: int, member: str | None, rip_function: str | None, address: str
) -> dict[str, Any]:
    """One explained fault of check.yml's verdict (chardev_crash_check's faults)."""
    return {
        "index": 0 if role == "primary" else 1,
        "role": role,
        "kind": "page_fault",
        "address": address,
        "fault_address": address,
        "symbol": "chardev_fops",
        "offset": offset,
        "struct": "file_operations",
        "member": member,
        "rip_function": rip_function,
        "pid": 1633,
        "comm": "python3",
    }


VERDICT_5_10 = {
    "verdict": "crashed",
    "as_expected": True,
    "kernel_release": "5.10.0-35-amd64",
    "mode": "read",
    "victim": {"pid": 845, "comm": "python3", "state": "D", "wchan": None, "stack": ["do_exit"]},
    "faults": [
        fault("primary", 0x10, "read", "vfs_read", "0xffffffffc06ea1b0"),
        fault("recursive", 0x78, "flush", "filp_close", "0xffffffffc06ea218"),
    ],
    "hung_task": {
        "timeout_secs": 10,
        "reports": [{"comm": "python3", "pid": 845, "seconds": 10}],
        "reported": {"victim": True},
        "not_applicable": {},
    },
}
VERDICT_6_1 = {
    "verdict": "crashed",
    "as_expected": True,
    "kernel_release": "6.1.0-56-amd64",
    "mode": "read",
    "victim": {"pid": 1633, "comm": "python3", "state": "X", "wchan": None, "stack": []},
    "faults": [
        fault("primary", 0x10, "read", "vfs_read", "0xffffffffc0a651b0"),
        fault("recursive", 0x78, "flush", "filp_close", "0xffffffffc0a65218"),
    ],
    "hung_task": {
        "timeout_secs": 10,
        "reports": [],
        "reported": {},
        "not_applicable": {"victim": "not in D: ... (pid 1633 is in X)"},
    },
}
VERDICT_6_12 = {
    "verdict": "crashed",
    "as_expected": True,
    "kernel_release": "6.12.57+deb13-amd64",
    "mode": "read",
    "victim": {"pid": 1702, "comm": "python3", "state": "X", "wchan": None, "stack": []},
    "faults": [
        fault("primary", 0x18, "read", "vfs_read", "0xffffffffc0a651b8"),
        fault("recursive", 0x80, "flush", "filp_close", "0xffffffffc0a65220"),
    ],
    "hung_task": {
        "timeout_secs": 10,
        "reports": [],
        "reported": {},
        "not_applicable": {"victim": "not in D: ... (pid 1702 is in X)"},
    },
}
ROW_5_10 = (
    "| 5.10 (Debian 11) | `D` | `chardev_fops+0x10`, `.read`, in `vfs_read` "
    "| `chardev_fops+0x78`, `.flush`, in `filp_close` | yes: blocked for more than 10 seconds |"
)
ROW_6_1 = (
    "| 6.1 (Debian 12) | `X` | `chardev_fops+0x10`, `.read`, in `vfs_read` "
    "| `chardev_fops+0x78`, `.flush`, in `filp_close` | none: the task is in X, not D |"
)
ROW_6_12 = (
    "| 6.12 (Debian 13) | `X` | `chardev_fops+0x18`, `.read`, in `vfs_read` "
    "| `chardev_fops+0x80`, `.flush`, in `filp_close` | none: the task is in X, not D |"
)


def test_kernel_series() -> None:
    assert lesson_table.kernel_series("5.10.0-35-amd64") == (5, 10)
    assert lesson_table.kernel_series("6.12.57+deb13-amd64") == (6, 12)
    for bad in ("", "linux", "6"):
        with pytest.raises(ValueError, match="cannot read a kernel series"):
            lesson_table.kernel_series(bad)


def test_fault_cell() -> None:
    assert lesson_table.fault_cell(None) == lesson_table.fault_cell({}) == "-"
    primary = VERDICT_6_1["faults"][0]
    assert lesson_table.fault_cell(primary) == "`chardev_fops+0x10`, `.read`, in `vfs_read`"
    unplaced = {"symbol": None, "address": "0xffff8881deadbeef", "member": None, "rip_function": None}
    assert lesson_table.fault_cell(unplaced) == "`0xffff8881deadbeef`"
    no_btf = {**primary, "member": None}
    assert lesson_table.fault_cell(no_btf) == "`chardev_fops+0x10`, in `vfs_read`"


def test_rows() -> None:
    assert lesson_table.row(VERDICT_5_10) == ROW_5_10
    assert lesson_table.row(VERDICT_6_1) == ROW_6_1
    assert lesson_table.row(VERDICT_6_12) == ROW_6_12


def test_row_edge_cases() -> None:
    # a D task the hung-task detector did not report (yet)
    unreported = {**VERDICT_5_10, "hung_task": {**VERDICT_5_10["hung_task"], "reported": {"victim": False}}}
    assert lesson_table.row(unreported).endswith("| none |")
    # no diagnostics (check mode), no victim, no fault; a kernel the lab does not name
    bare = {"kernel_release": "6.6.0-1-amd64", "victim": None, "faults": [], "hung_task": None}
    assert lesson_table.row(bare) == "| 6.6 (Debian) | `?` | - | - | none |"
    # the primary fault is the one marked so, whatever its place; a single fault has no "later"
    swapped = {**VERDICT_6_1, "faults": list(reversed(VERDICT_6_1["faults"]))}
    assert lesson_table.row(swapped) == ROW_6_1
    single = {**VERDICT_6_1, "faults": VERDICT_6_1["faults"][:1]}
    assert "| `chardev_fops+0x10`, `.read`, in `vfs_read` | - |" in lesson_table.row(single)


def test_table_is_sorted_by_kernel() -> None:
    assert lesson_table.table([VERDICT_6_12, VERDICT_5_10, VERDICT_6_1]) == [
        *lesson_table.HEADER,
        ROW_5_10,
        ROW_6_1,
        ROW_6_12,
    ]
    assert lesson_table.table([]) == lesson_table.HEADER


def test_rows_in() -> None:
    # the worksheet shows the three kernels of the matrix, from a real run
    assert set(lesson_table.rows_in(LESSON.read_text(encoding="utf-8"))) == {(5, 10), (6, 1), (6, 12)}
    doc = "\n".join(
        [
            "| 5.10 (Debian 11) | outside the markers |",
            lesson_table.BEGIN,
            *lesson_table.table([VERDICT_6_1, VERDICT_5_10]),
            lesson_table.END,
            "| 6.12 (Debian 13) | outside too |",
        ]
    )
    assert lesson_table.rows_in(doc) == {(5, 10): ROW_5_10, (6, 1): ROW_6_1}
    with pytest.raises(ValueError):
        lesson_table.rows_in("no markers")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    directory = tmp_path / "lesson-runs"
    directory.mkdir()
    for name, verdict in (("6.12", VERDICT_6_12), ("5.10", VERDICT_5_10), ("6.1", VERDICT_6_1)):
        (directory / f"{name}.check.json").write_text(json.dumps(verdict))
    (directory / "notes.json").write_text("not a verdict")  # not *.check.json: left out
    return directory


def test_main_writes_the_table_between_the_markers(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "lesson.md"
    shutil.copyfile(LESSON, doc)
    original = doc.read_text(encoding="utf-8")
    assert lesson_table.main(["--runs", str(runs), "--doc", str(doc)]) == 0
    assert capsys.readouterr().out == f"{doc}: 3 kernel(s) from {runs}\n"
    written = doc.read_text(encoding="utf-8")
    begin, end = lesson_table.BEGIN, lesson_table.END
    assert written[: written.index(begin)] == original[: original.index(begin)]
    assert written[written.index(end) :] == original[original.index(end) :]
    between = written[written.index(begin) + len(begin) : written.index(end)]
    assert between == "\n" + "\n".join([*lesson_table.HEADER, ROW_5_10, ROW_6_1, ROW_6_12]) + "\n"
    assert lesson_table.rows_in(written) == {(5, 10): ROW_5_10, (6, 1): ROW_6_1, (6, 12): ROW_6_12}
    assert worksheet.parse(written) == worksheet.parse(original)  # the runnable parts are untouched
    # again: the same text
    assert lesson_table.main(["--runs", str(runs), "--doc", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == written


def test_main_without_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "lesson.md"
    shutil.copyfile(LESSON, doc)
    (tmp_path / "empty").mkdir()
    assert lesson_table.main(["--runs", str(tmp_path / "empty"), "--doc", str(doc)]) == 1
    assert "no verdicts in" in capsys.readouterr().out
    assert doc.read_text(encoding="utf-8") == LESSON.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# python_terminal.py: a real interactive Python shell on this machine
# ---------------------------------------------------------------------------------------------------------


def terminal(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PYTHON_TERMINAL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def is_our_shell(pid: int) -> bool:
    """pid is still the `python3 -i -u -q` this test started (not a reused pid), and not a zombie."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z" and cmdline[1:4] == [b"-i", b"-u", b"-q"]


@pytest.fixture
def shell_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "terminal"
    yield directory
    pid_file = directory / "pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if is_our_shell(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_python_terminal_for_real(shell_dir: Path) -> None:
    started = terminal("start", str(shell_dir))
    assert (started.returncode, started.stdout, started.stderr) == (0, "", "")
    assert stat.S_ISFIFO((shell_dir / "stdin").stat().st_mode)
    pid = int((shell_dir / "pid").read_text())
    assert wait_for(lambda: is_our_shell(pid))
    assert os.getsid(pid) == pid  # its own session, detached from this one
    assert wait_for(lambda: ">>> " in (shell_dir / "stderr").read_text())  # the shell is up

    typed = terminal("type", str(shell_dir), "x = 6*7")
    assert (typed.returncode, typed.stdout) == (0, "")
    assert terminal("type", str(shell_dir), "x").stdout == "42\n"
    assert terminal("type", str(shell_dir), "print('a'); print('b')").stdout == "a\nb\n"

    begin = time.monotonic()
    slow = terminal("type", str(shell_dir), "import time; time.sleep(3); print('late')", "-w", "0.5")
    took = time.monotonic() - begin
    assert (slow.returncode, slow.stdout) == (0, "")
    assert took < 2.5, f"type -w 0.5 took {took:.1f} s"
    assert is_our_shell(pid)  # still busy in the line, as a student's stuck shell would be

    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not is_our_shell(pid))
