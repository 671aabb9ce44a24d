#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: turn the lab hosts' probe results into status.json, an HTML page and a table."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_status_report
short_description: Write the lab fleet's status as JSON and as one HTML page, and return a table
description:
  - Runs on the control node. Takes the result of M(chardev_lab.lab.lab_status_probe) for each lab host, as
    registered with C(ignore_unreachable), and each host's demo result, the C(<host>.json) file that the
    C(chardev_demo) role writes in O(results_dir).
  - Decides one state for each host. V(unreachable) when the probe could not reach it. V(crashed) when
    the probe found a crash marker. V(not-ready) when the probe failed, the kernel headers are missing,
    the module is not loaded, the device node is wrong, the demo failed, stuck tasks exist without a
    crash marker, or an interrupted crash run's victim is alive (its crash phase V(leftover) or V(armed),
    see M(chardev_lab.lab.chardev_crash_state)). V(ready) otherwise.
  - Writes, each file atomically, C(status.json) (a list with one object per host), C(meta.json)
    (the generation time and the counts) and C(index.html) (one self-contained page, no network
    needed) in O(dest).
  - Returns the rows, the counts and the lines of a fixed-width table for the terminal.
  - It always reports C(changed=false). The report is rewritten on every run (its time changes), and it
    is not lab state, so idempotence checks of the lab must not see it.
author:
  - chardev-lab contributors (@chardev-lab)
options:
  hosts:
    description:
      - The lab hosts to report, in the order of the report.
    type: list
    elements: str
    required: true
  probes:
    description:
      - Host name to its registered M(chardev_lab.lab.lab_status_probe) result.
      - A result with C(unreachable) set makes the host's row V(unreachable). A result without
        C(kernel) (the probe failed) makes it V(not-ready). A host that is missing, or has an empty
        result, counts as unreachable (it was not probed).
    type: dict
    default: {}
  students:
    description:
      - Host name to the student who uses it (the host variable C(lab_student)).
      - Missing or empty means no student.
    type: dict
    default: {}
  results_dir:
    description:
      - The directory on the control node with the demo results, C(<host>.json).
      - A host without a file there shows its demo as V(not run).
    type: path
  dest:
    description:
      - The directory on the control node for C(status.json), C(meta.json) and C(index.html). It is
        created when missing.
    type: path
    required: true
  title:
    description:
      - The title of the HTML page.
    type: str
    default: chardev-lab status
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode nothing is written (RV(written) is false). The rows, the counts and the table are
        still returned.
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: chardev_lab.lab.lab_status_probe
    description: Reads the state of one lab host.
"""

EXAMPLES = r"""
- name: Write the fleet's status
  chardev_lab.lab.lab_status_report:
    hosts: "{{ groups['lab'] }}"
    probes: "{{ dict(groups['lab'] | zip(groups['lab'] | map('extract', hostvars)
      | map(attribute='lab_status_probe_result', default={}))) }}"
    results_dir: "{{ lab_state_dir }}/results"
    dest: "{{ lab_state_dir }}/status"
  register: __lab_status_report
  delegate_to: localhost

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ __lab_status_report.table }}"
"""

RETURN = r"""
rows:
  description:
    - One object per host, as in C(status.json).
    - C(state) is V(ready), V(crashed), V(unreachable) or V(not-ready), and C(reason) says why.
    - Facts the probe could not read (an unreachable host) are null.
  returned: always
  type: list
  elements: dict
  sample:
    - host: lab-vm-1
      student: alice
      state: crashed
      reason: >-
        crash record /run/chardev-lab/crashed.json (crashed); taint flag D (oops); 1 stuck task;
        reset: playbooks/reset.yml
      reachable: true
      kernel: 6.1.0-56-amd64
      headers: true
      module_loaded: false
      variant: null
      node_ok: false
      node: /dev/chardev does not exist
      demo: passed
      demo_errors: []
      crashed: true
      crash_reasons: ["crash record /run/chardev-lab/crashed.json (crashed)", "taint flag D (oops)"]
      crash_phase: done
      stuck_tasks: [{pid: 1576, state: X, comm: python3, wchan: null}]
      tainted: 12416
      taint_letters: DOE
      oops_count: 2
      reboot_required: true
counts:
  description: How many hosts are in each state, and in all.
  returned: always
  type: dict
  sample: {ready: 2, crashed: 1, unreachable: 0, not-ready: 0, total: 3}
table:
  description: The lines of a fixed-width table, one summary line, one header line and one line per host.
  returned: always
  type: list
  elements: str
  sample:
    - "3 hosts: 2 ready, 1 crashed, 0 unreachable, 0 not-ready"
    - "HOST      STUDENT  STATE    KERNEL          VARIANT  NODE  DEMO    TAINT      STUCK  REASON"
generated_at:
  description: When the report was made, in UTC (ISO 8601).
  returned: always
  type: str
  sample: "2026-11-26T09:15:00+00:00"
status_file:
  description: The path of C(status.json).
  returned: always
  type: str
  sample: /work/main/.lab/status/status.json
html_file:
  description: The path of C(index.html).
  returned: always
  type: str
  sample: /work/main/.lab/status/index.html
meta_file:
  description: The path of C(meta.json) (generation time, title and counts).
  returned: always
  type: str
  sample: /work/main/.lab/status/meta.json
written:
  description: Whether the files were written (false in check mode).
  returned: always
  type: bool
  sample: true
"""

import datetime
import html
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import System

STATES = ("ready", "crashed", "unreachable", "not-ready")
STATE_TEXT = {
    "ready": "module loaded, device node right, headers present, demo not failed: the lab can run",
    "crashed": "the kernel oopsed (crash record, taint D or oops count): reset it with playbooks/reset.yml",
    "unreachable": "Ansible could not reach the host (powered off, network, SSH, or its kernel died)",
    "not-ready": "reachable but not ready: headers, module, node or demo missing or wrong (run lab.yml)",
}
STATUS_FILE = "status.json"
META_FILE = "meta.json"
HTML_FILE = "index.html"
#: How the report's time is taken; tests replace it.
#: (datetime.timezone.utc, not datetime.UTC: localhost may be an inventory host with an older Python.)
NOW: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)  # noqa: E731, UP017
ERROR_MAX = 200


def short_error(message: Any) -> str:
    """A one-line, bounded version of an Ansible error message, without its "Task failed: " prefix."""
    text = " ".join(str(message or "").split())
    text = text[len("Task failed: ") :] if text.startswith("Task failed: ") else text
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 3] + "..."


def read_demo(results_dir: str | None, host: str) -> tuple[str, list[str]]:
    """The demo result of host: ("passed"|"failed"|"not run"|"unreadable", errors)."""
    if not results_dir or not host or os.path.basename(host) != host or host.startswith("."):
        return "not run", []
    path = os.path.join(results_dir, f"{host}.json")
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return "not run", []
    except (OSError, ValueError) as exc:
        return "unreadable", [f"{path}: {exc}"]
    if not isinstance(document, dict) or "ok" not in document:
        return "unreadable", [f"{path}: not a demo result"]
    if document["ok"]:
        return "passed", []
    return "failed", [str(error) for error in document.get("errors") or []]


#: A crash run interrupted with its victim alive (chardev_crash_state's phases): never ready, the victim
#: holds the device; an armed one holds the file of a removed chardev, and using or closing it crashes
#: the kernel.
CRASH_UNDER_WAY = {
    "leftover": "a crash run was interrupted: its victim holds the device (the crash role stops it)",
    "armed": (
        "armed: a crash run's victim holds the file of a removed chardev, and using or closing it crashes "
        "the kernel (run the crash again to finish it, or reset: playbooks/reset.yml)"
    ),
}


def decide_state(row: Mapping[str, Any]) -> tuple[str, str]:
    """The row's state and the reason for it (rules in the module's description)."""
    if not row["reachable"]:
        return "unreachable", row.get("error") or "unreachable"
    if row.get("error"):
        return "not-ready", f"probe failed: {row['error']}"
    stuck = row.get("stuck_tasks") or []
    stuck_text = f"{len(stuck)} stuck task{'' if len(stuck) == 1 else 's'}"
    check = row.get("check") or {}
    if row["crashed"]:
        why = [f"check.yml: {check['explanation']}"] if check.get("explanation") else []
        return "crashed", "; ".join([*row["crash_reasons"], stuck_text, *why, "reset: playbooks/reset.yml"])
    problems = []
    if not row["headers"]:
        problems.append(f"no kernel headers for {row['kernel']}")
    if not row["module_loaded"]:
        problems.append("chardev not loaded")
    elif not row["node_ok"]:
        problems.append(row["node"])
    if row["demo"] in ("failed", "unreadable"):
        problems.append(f"demo {row['demo']}" + (f": {row['demo_errors'][0]}" if row["demo_errors"] else ""))
    if stuck:
        problems.append(f"{stuck_text} without a crash marker")
    if row.get("crash_phase") in CRASH_UNDER_WAY:
        problems.append(CRASH_UNDER_WAY[row["crash_phase"]])
    if problems:
        return "not-ready", "; ".join(problems)
    notes = [f"{row['variant']} variant loaded"]
    if check.get("verdict"):
        notes.append(f"check.yml: {check.get('summary') or check['verdict']}")
    if row["demo"] == "not run":
        notes.append("demo not run")
    if row["reboot_required"]:
        notes.append("reboot pending (/run/reboot-required)")
    return "ready", "; ".join(notes)


def build_row(host: str, student: Any, probe: Mapping[str, Any] | None, demo: tuple[str, list[str]]) -> dict:
    """One host's status object from its registered probe result and demo result."""
    probe = probe or {}
    reachable = bool(probe) and not probe.get("unreachable")
    probed = reachable and "kernel" in probe
    row: dict[str, Any] = {
        "host": host,
        "student": str(student) if student not in (None, "") else None,
        "state": None,
        "reason": None,
        "reachable": reachable,
        "kernel": probe.get("kernel") if probed else None,
        "headers": probe.get("headers") if probed else None,
        "module_loaded": probe.get("module_loaded") if probed else None,
        "variant": probe.get("variant") if probed else None,
        "node_ok": probe.get("node_ok") if probed else None,
        "node": probe.get("node") if probed else None,
        "demo": demo[0],
        "demo_errors": demo[1],
        "crashed": probe.get("crashed") if probed else None,
        "crash_reasons": list(probe.get("crash_reasons") or []) if probed else [],
        "crash_phase": probe.get("crash_phase") if probed else None,
        "stuck_tasks": [
            {key: task.get(key) for key in ("pid", "state", "comm", "wchan")}
            for task in (probe.get("stuck_tasks") or [] if probed else [])
        ],
        "tainted": probe.get("tainted") if probed else None,
        "taint_letters": probe.get("taint_letters") if probed else None,
        "oops_count": probe.get("oops_count") if probed else None,
        "reboot_required": probe.get("reboot_required") if probed else None,
        "check": probe.get("check") if probed else None,
    }
    if not probe:
        row["error"] = "not probed (no probe result for this host in this run)"
    elif not reachable:
        row["error"] = short_error(probe.get("msg") or "unreachable")
    elif not probed:
        row["error"] = short_error(probe.get("msg") or "the probe returned no result")
    row["state"], row["reason"] = decide_state(row)
    row.pop("error", None)
    return row


def build_rows(
    hosts: Sequence[str],
    probes: Mapping[str, Any],
    students: Mapping[str, Any],
    results_dir: str | None,
) -> list[dict[str, Any]]:
    """The status list, one row per host in the order of hosts."""
    return [
        build_row(host, students.get(host), probes.get(host), read_demo(results_dir, host)) for host in hosts
    ]


def count_states(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows are in each state, and the total."""
    counts = {state: sum(1 for row in rows if row["state"] == state) for state in STATES}
    counts["total"] = len(rows)
    return counts


def summary_line(counts: Mapping[str, int]) -> str:
    total = counts["total"]
    return f"{total} host{'' if total == 1 else 's'}: " + ", ".join(f"{counts[s]} {s}" for s in STATES)


# --- terminal table ---------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("HOST", 24),
    ("STUDENT", 16),
    ("STATE", 11),
    ("KERNEL", 24),
    ("VARIANT", 10),
    ("NODE", 4),
    ("DEMO", 10),
    ("TAINT", 14),
    ("STUCK", 18),
)


def _show(value: Any, unknown: str = "-") -> str:
    if value is None:
        return unknown
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def stuck_text(tasks: Sequence[Mapping[str, Any]]) -> str:
    """ "1576X,1577D" for the table."""
    return ",".join(f"{task['pid']}{task['state']}" for task in tasks) or "-"


def taint_text(row: Mapping[str, Any]) -> str:
    if row["tainted"] is None:
        return "-"
    return f"{row['tainted']} {row['taint_letters']}".strip()


def variant_text(row: Mapping[str, Any]) -> str:
    if row["module_loaded"] is False:
        return "none"
    return _show(row["variant"])


def table_cells(row: Mapping[str, Any]) -> list[str]:
    node = "-" if row["node_ok"] is None else ("ok" if row["node_ok"] else "no")
    return [
        row["host"],
        _show(row["student"]),
        row["state"],
        _show(row["kernel"]),
        variant_text(row),
        node,
        row["demo"],
        taint_text(row),
        stuck_text(row["stuck_tasks"]),
    ]


#: The longest reason shown in the table (status.json has it whole).
REASON_WIDTH = 120
#: A no-break space. Ansible's yaml result format (PyYAML) folds a long string at a single space, which
#: would break a table line in two; it never folds at two spaces in a row or at a no-break space. So the
#: columns are separated by two spaces, and a space inside a value is shown as a no-break space.
NBSP = "\u00a0"


def _fit(text: str, width: int) -> str:
    """text on one line, cut to width (a cut ends with "~"), its spaces made no-break spaces."""
    text = " ".join(text.split())
    text = text if len(text) <= width else text[: width - 1] + "~"
    return text.replace(" ", NBSP)


def render_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A summary line, a header and one fixed-width line per host; the reason ends each line."""
    cells = [table_cells(row) for row in rows]
    widths = [
        min(cap, max([len(name)] + [len(" ".join(line[index].split())) for line in cells]))
        for index, (name, cap) in enumerate(TABLE_COLUMNS)
    ]

    def line(values: Sequence[str], reason: str) -> str:
        columns = [_fit(value, width).ljust(width) for value, width in zip(values, widths, strict=True)]
        return "  ".join([*columns, _fit(reason, REASON_WIDTH)])

    lines = [summary_line(count_states(rows)), line([name for name, _cap in TABLE_COLUMNS], "REASON")]
    lines.extend(line(values, row["reason"]) for values, row in zip(cells, rows, strict=True))
    return lines


# --- HTML page --------------------------------------------------------------------------------------------

CSS = """
:root { --ready: #e3f4e8; --ready-edge: #1e7e34; --crashed: #fbe1df; --crashed-edge: #c5221f;
  --unreachable: #e8eaed; --unreachable-edge: #5f6368; --not-ready: #fdf0cf; --not-ready-edge: #b06000; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px 28px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; color: #202124; background: #fafafa; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 24px; margin-bottom: 14px; }
h1 { margin: 0; font-size: 24px; font-weight: 600; }
.generated { color: #5f6368; }
.counts { display: flex; flex-wrap: wrap; gap: 10px; margin: 0 0 16px; padding: 0; list-style: none; }
.counts li { padding: 6px 14px; border-radius: 8px; border-left: 6px solid; font-size: 16px; }
.counts b { font-size: 22px; margin-right: 6px; }
.total { background: #fff; border-color: #9aa0a6 !important; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
th, td { padding: 6px 7px; text-align: left; vertical-align: top; border-bottom: 1px solid #dadce0; }
th { position: sticky; top: 0; background: #f1f3f4; font-size: 13px; color: #3c4043; }
td[data-key="host"], td[data-key="state"] { font-weight: 600; white-space: nowrap; }
td[data-key="kernel"], td[data-key="stuck_tasks"], td[data-key="tainted"] {
  font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
td[data-key="kernel"], td[data-key="tainted"], .task { white-space: nowrap; }
.wchan { color: #5f6368; }
td[data-key="node_ok"], td[data-key="demo"] { max-width: 190px; }
td[data-key="reason"] { min-width: 180px; }
td[data-key="student"] { overflow-wrap: anywhere; }
.detail { overflow-wrap: break-word; }
.detail { display: block; color: #5f6368; font-size: 12px; }
ul.tasks { margin: 0; padding: 0; list-style: none; }
tr.ready { background: var(--ready); } tr.ready td:first-child { border-left: 6px solid var(--ready-edge); }
tr.crashed { background: var(--crashed); }
tr.crashed td:first-child { border-left: 6px solid var(--crashed-edge); }
tr.unreachable { background: var(--unreachable); color: #3c4043; }
tr.unreachable td:first-child { border-left: 6px solid var(--unreachable-edge); }
tr.not-ready { background: var(--not-ready); }
tr.not-ready td:first-child { border-left: 6px solid var(--not-ready-edge); }
li.ready { background: var(--ready); border-color: var(--ready-edge); }
li.crashed { background: var(--crashed); border-color: var(--crashed-edge); }
li.unreachable { background: var(--unreachable); border-color: var(--unreachable-edge); }
li.not-ready { background: var(--not-ready); border-color: var(--not-ready-edge); }
.legend { margin-top: 18px; color: #3c4043; }
.legend dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 14px; margin: 8px 0 0; }
.legend dt { padding: 2px 10px; border-radius: 4px; border-left: 6px solid; font-weight: 600; }
.legend dd { margin: 0; padding: 2px 0; }
.empty { padding: 24px; text-align: center; color: #5f6368; }
@media print { body { background: #fff; padding: 0; } th { position: static; }
  .scroll { overflow: visible; } }
"""

#: The page's columns: data-key, header.
HTML_COLUMNS = (
    ("host", "Host"),
    ("student", "Student"),
    ("state", "State"),
    ("kernel", "Kernel"),
    ("headers", "Headers"),
    ("variant", "Module"),
    ("node_ok", "Node"),
    ("demo", "Demo"),
    ("crashed", "Crashed"),
    ("stuck_tasks", "Stuck tasks"),
    ("tainted", "Taint"),
    ("reboot_required", "Reboot"),
    ("reason", "Reason"),
)


def esc(value: Any) -> str:
    """Text made safe for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def _cell_html(key: str, row: Mapping[str, Any]) -> str:
    """The inner HTML of one cell: escaped text, and sometimes a second line of detail."""
    if key == "student":
        return esc(_show(row["student"], "—"))
    if key == "variant":
        text = variant_text(row)
        return esc("—" if text == "-" else text)
    if key == "node_ok":
        if row["node_ok"] is None:
            return "—"
        detail = "" if row["node_ok"] else f'<span class="detail">{esc(row["node"])}</span>'
        return ("ok" if row["node_ok"] else "no") + detail
    if key == "demo":
        errors = row.get("demo_errors") or []
        detail = f'<span class="detail">{esc("; ".join(errors))}</span>' if errors else ""
        return esc(row["demo"]) + detail
    if key == "crashed":
        if row["crashed"] is None:
            return "—"
        # The crash markers are the row's reason; the oops count is the one number worth a glance.
        oops = row.get("oops_count")
        detail = f'<span class="detail">oops_count {esc(oops)}</span>' if row["crashed"] and oops else ""
        return esc(_show(row["crashed"])) + detail
    if key == "stuck_tasks":
        tasks = row["stuck_tasks"]
        if not tasks:
            return "none" if row["reachable"] else "—"
        items = "".join(
            f'<li data-pid="{esc(task["pid"])}"><span class="task">{esc(task["pid"])} {esc(task["state"])} '
            f"{esc(task['comm'])}</span>"
            + (f' <span class="wchan">wchan {esc(task["wchan"])}</span>' if task.get("wchan") else "")
            + "</li>"
            for task in tasks
        )
        return f'<ul class="tasks">{items}</ul>'
    if key == "tainted":
        return "—" if row["tainted"] is None else esc(taint_text(row))
    value = row.get(key)
    return esc(_show(value, "—"))


def render_html(rows: Sequence[Mapping[str, Any]], generated_at: str, title: str) -> str:
    """The whole self-contained page: inline CSS, no scripts, fonts or images; every value escaped."""
    counts = count_states(rows)
    count_items = "".join(
        f'<li class="{state}" data-state="{state}" data-count="{counts[state]}">'
        f"<b>{counts[state]}</b>{state}</li>"
        for state in STATES
    )
    header_cells = "".join(f'<th scope="col" data-key="{key}">{esc(name)}</th>' for key, name in HTML_COLUMNS)
    body_rows = []
    for row in rows:
        cells = "".join(f'<td data-key="{key}">{_cell_html(key, row)}</td>' for key, _name in HTML_COLUMNS)
        body_rows.append(
            f'<tr class="{esc(row["state"])}" data-host="{esc(row["host"])}" '
            f'data-state="{esc(row["state"])}">{cells}</tr>'
        )
    if not body_rows:
        body_rows.append(f'<tr><td class="empty" colspan="{len(HTML_COLUMNS)}">No lab hosts.</td></tr>')
    legend = "".join(
        f'<dt class="{state}" style="background: var(--{state}); border-color: var(--{state}-edge)">'
        f"{state}</dt>"
        f"<dd>{esc(STATE_TEXT[state])}</dd>"
        for state in STATES
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generated" content="{esc(generated_at)}">',
            f"<title>{esc(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            "<header>",
            f"<h1>{esc(title)}</h1>",
            f'<span class="generated">generated <time datetime="{esc(generated_at)}">'
            f"{esc(generated_at)}</time> by ansible-playbook playbooks/status.yml</span>",
            "</header>",
            f'<ul class="counts"><li class="total" data-state="total" data-count="{counts["total"]}">'
            f"<b>{counts['total']}</b>hosts</li>{count_items}</ul>",
            '<div class="scroll"><table>',
            f"<thead><tr>{header_cells}</tr></thead>",
            "<tbody>",
            *body_rows,
            "</tbody>",
            "</table></div>",
            f'<section class="legend"><strong>Legend</strong><dl>{legend}</dl></section>',
            "</body>",
            "</html>",
            "",
        ]
    )


# --- files ------------------------------------------------------------------------------------------------


def write_atomic(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same directory and a rename (mode 0644)."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def report_paths(dest: str) -> dict[str, str]:
    return {
        "status_file": os.path.join(dest, STATUS_FILE),
        "meta_file": os.path.join(dest, META_FILE),
        "html_file": os.path.join(dest, HTML_FILE),
    }


def write_report(
    dest: str, rows: Sequence[Mapping[str, Any]], generated_at: str, title: str
) -> dict[str, str]:
    """Write status.json, meta.json and index.html below dest; returns their paths."""
    paths = report_paths(dest)
    os.makedirs(dest, exist_ok=True)
    meta = {"generated_at": generated_at, "title": title, "counts": count_states(rows)}
    write_atomic(paths["status_file"], json.dumps(list(rows), indent=2, ensure_ascii=False) + "\n")
    write_atomic(paths["meta_file"], json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    write_atomic(paths["html_file"], render_html(rows, generated_at, title))
    return paths


_SPACES = re.compile(r"\s+")


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """The module's work, without AnsibleModule: returns the result dict."""
    del system  # it works on the controller's files and sockets its parameters name
    hosts = [str(host) for host in params["hosts"]]
    rows = build_rows(
        hosts, params.get("probes") or {}, params.get("students") or {}, params.get("results_dir")
    )
    generated_at = NOW().isoformat(timespec="seconds")
    dest = params["dest"]
    if check_mode:
        paths = report_paths(dest)
    else:
        paths = write_report(dest, rows, generated_at, _SPACES.sub(" ", params["title"]).strip())
    return {
        # A report, not lab state: rewritten on every run (its time changes), never "changed", so the
        # idempotence checks of the lab stay at changed=0.
        "changed": False,
        "rows": rows,
        "counts": count_states(rows),
        "table": render_table(rows),
        "generated_at": generated_at,
        "written": not check_mode,
        **paths,
    }


def make_module() -> AnsibleModule:
    """The AnsibleModule with this module's argument spec."""
    return AnsibleModule(
        argument_spec={
            "hosts": {"type": "list", "elements": "str", "required": True},
            "probes": {"type": "dict", "default": {}},
            "students": {"type": "dict", "default": {}},
            "results_dir": {"type": "path"},
            "dest": {"type": "path", "required": True},
            "title": {"type": "str", "default": "chardev-lab status"},
        },
        supports_check_mode=True,
    )


def main(system: System | None = None) -> None:
    module = make_module()
    try:
        result = run(module.params, module.check_mode, System(module) if system is None else system)
    except OSError as exc:
        module.fail_json(msg=f"cannot write the status report: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
