"""The crash on a real VM, one per kernel, in five phases (side_effect.yml moves from one to the next):
crashed-read after converge, then rewound (playbooks/reset.yml back to the lab-ready point, no reboot),
crashed-splice (playbooks/crash.yml again in splice mode), hand (rewound again, then the student's own
steps from docs/lesson.md, each judged by playbooks/check.yml), reset (a fresh disk). Crashed: the stuck
tasks in the state the kernel predicts, unkillable, the oops in the kernel log, the fault explained and
the kernel's own hung-task and SysRq w reports, each checked against the kernel's own files. Rewound:
lab-ready on the same boot. Reset: a clean host. Expected states come from the one table in
plugins/module_utils/chardev_outcomes.py."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import lesson_table  # tools/lesson_table.py: on the verifier's PYTHONPATH (.config/molecule/config.yml)
import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_kernel_log import (
    parse_kernel_log,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_outcomes import (
    READER_WCHAN_PATTERNS,
    expected_outcome,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_proc import (
    parse_proc_stat,
    parse_stack,
    parse_wchan,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_record import (
    run_files,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_taint import (
    taint_letters,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    RUN_DIR,
)
from fleet_status import by_host, check_page_matches, refresh_status
from lab_testinfra import evidence, fleet_dir, phase, run_playbook
from worksheet import mismatches as worksheet_mismatches

#: The phases in the order side_effect.yml goes through them, and the victim mode of each crashed one.
PHASES = ("crashed-read", "rewound", "crashed-splice", "hand", "reset")
MODES = {"crashed-read": "read", "crashed-splice": "splice"}
PHASE = phase()
assert PHASE in PHASES, f"phase marker {PHASE!r}: expected one of {PHASES} (converge.yml writes the first)"
PROJECT = Path(__file__).resolve().parents[3]
FILES = run_files(RUN_DIR)
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def mode_of(host) -> str:
    """The victim mode of this phase's crash (the same on every VM)."""
    return MODES[PHASE]


def step_record(host, what: str) -> str:
    """What side_effect.yml recorded for the host before (boot_id) or after (reset_how) its last step."""
    name = f"{host.backend.get_hostname()}.{what}"
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "steps" / name
    assert path.exists(), f"{path}: side_effect.yml did not record it"
    return path.read_text().strip()


def no_stuck_task(host) -> list[str]:
    states = host.run("ps -eo stat=,comm=").stdout.splitlines()
    return [line for line in states if line.startswith("X") or (line.startswith("D") and "chardev" in line)]


def pid_of(host, role: str) -> int:
    """The pid in the role's PID file ("PID STARTTIME", as the victim program writes it)."""
    return int(host.file(FILES[role]).content_string.split()[0])


def oops_count(host) -> str:
    """The kernel's own count of oopses (5.10 has no oops_count: the log's headlines are counted)."""
    if host.file("/sys/kernel/oops_count").exists:
        return host.file("/sys/kernel/oops_count").content_string.strip()
    return f"{parse_kernel_log(host.run('dmesg').stdout).oops_headlines} headlines"


def read_pidfile_entry_on(host, path: str) -> tuple[int, int | None]:
    fields = host.file(path).content_string.split()
    return int(fields[0]), int(fields[1]) if len(fields) > 1 else None


def tainted_of(host) -> int:
    return int(host.file("/proc/sys/kernel/tainted").content_string)


def state_of(host, pid: int) -> str | None:
    result = host.run(f"cat /proc/{pid}/stat")
    return parse_proc_stat(result.stdout).state if result.rc == 0 else None


def results_file(host, suffix: str) -> dict:
    """A per-host result the lab wrote on the control node (results/ in the scenario's lab_state_dir)."""
    path = fleet_dir() / "results" / f"{host.backend.get_hostname()}.{suffix}"
    assert path.exists(), f"{path}: not written"
    return json.loads(path.read_text())


def first_fault_address(host) -> int:
    """The faulting address of the first oops, as the kernel printed it (dmesg), not as the lab parsed it."""
    headline = r"BUG: unable to handle (?:page fault for address: |kernel paging request at )([0-9a-f]+)"
    match = re.search(headline, host.run("dmesg").stdout)
    assert match, evidence(host, "dmesg | grep -m3 BUG")
    return int(match.group(1), 16)


def btf_member_offsets(host, struct: str) -> dict[str, int]:
    """Byte offset of each member of a struct, read by pahole (the field's own tool, on the control node)
    from the VM's /sys/kernel/btf/vmlinux: a check of the lab's BTF reader by another implementation."""
    pahole = shutil.which("pahole")
    assert pahole, "pahole is missing on the control node (make test-deps installs dwarves)"
    local = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / f"{host.backend.get_hostname()}.btf"
    # base64: the BTF is binary, and testinfra's command output is text.
    local.write_bytes(__import__("base64").b64decode(host.check_output("base64 -w0 /sys/kernel/btf/vmlinux")))
    out = subprocess.run(
        [pahole, "-F", "btf", "-C", struct, str(local)], capture_output=True, text=True, check=False
    )
    offsets = {}
    for line in out.stdout.splitlines():
        # "	ssize_t                    (*read)(struct file *, char *, size_t, loff_t *); /*    16     8 */"
        match = re.search(r"\(\*(\w+)\)\(.*/\*\s+(\d+)\s+\d+\s+\*/", line) or re.search(
            r"\s(\w+);\s+/\*\s+(\d+)\s+\d+\s+\*/", line
        )
        if match:
            offsets[match.group(1)] = int(match.group(2))
    assert offsets, out.stdout + out.stderr
    return offsets


#: The file_operations member the lab's own victim's first fault reads, per mode: its read() (os.read,
#: unbuffered) calls f_op->read, splice() f_op->splice_read. A student's Python shell may fault
#: elsewhere first (text mode asks the position: .llseek on 5.10): checked against pahole, not this.
FIRST_MEMBER = {"read": "read", "splice": "splice_read"}


def check_explanation(host, explanation: dict, member: str | None) -> None:
    """The lab's explanation of the first fault, against the kernel's own files: the address in dmesg,
    the layout recorded from /sys/module/chardev/sections and /proc/kallsyms before the unload, and the
    member at that offset as pahole reads the kernel's BTF (and, when given, that it is `member`)."""
    address = first_fault_address(host)
    assert int(explanation["address"], 16) == address, explanation
    layout = json.loads(host.file(FILES["layout"]).content_string)
    assert layout["boot_id"] == host.file(BOOT_ID).content_string.strip(), layout
    symbols = {sym["name"]: int(sym["address"], 16) for sym in layout["symbols"]}
    assert "chardev_fops" in symbols, layout
    offset = address - symbols["chardev_fops"]
    assert explanation["symbol"] == "chardev_fops" and explanation["offset"] == offset, explanation
    members = btf_member_offsets(host, "file_operations")
    at_offset = [name for name, start in members.items() if start == offset]
    assert explanation["member"] in at_offset, (explanation, offset, members)
    if member is not None:
        assert explanation["member"] == member, explanation
    assert f"chardev_fops+0x{offset:x}" in explanation["text"], explanation["text"]


def check_kernel_diagnostics(host, record: dict, expected: dict, pids: dict[str, int]) -> None:
    """The kernel's own reports, read from dmesg: a SysRq w entry for each task in D, and no hung-task
    report of it (the oops silenced the detector: the kernel is tainted D), although the lesson lowered
    its timeout to 10 s and the task has been blocked longer; neither applies to a task in X."""
    log = host.run("dmesg").stdout
    assert host.file("/proc/sys/kernel/hung_task_timeout_secs").content_string.strip() == "10"
    assert "D" in taint_letters(tainted_of(host))
    for role, want in expected["tasks"].items():
        pid = pids[role]
        if want["state"] == "D":
            dump = log[log.rindex("sysrq: Show Blocked State") :]
            assert re.search(rf"task:\S+\s+state:D .*pid:\s*{pid}\b", dump), dump[:3000]
            assert record["sysrq_w"]["shown"][role] is True, record["sysrq_w"]
            assert not re.search(rf"INFO: task [^\n]*:{pid} blocked for more than", log), evidence(
                host, "dmesg | grep -A4 'blocked for more'"
            )
            assert record["hung_task"]["silenced"] and record["hung_task"]["reported"][role] is False
        else:
            assert role in record["hung_task"]["not_applicable"], record["hung_task"]


def expectation(host) -> dict:
    return expected_outcome(host.run("uname -r").stdout.strip(), mode_of(host))


@pytest.fixture(scope="module")
def status():
    """playbooks/status.yml once for all three VMs, as an instructor would run it (make status)."""
    return refresh_status()


@pytest.mark.skipif(PHASE not in MODES, reason="checked after each crash (converge: read, then splice)")
class TestCrashed:
    def test_status_reports_the_crash_and_its_stuck_tasks(self, host, status):
        row = by_host(status)[host.backend.get_hostname()]
        assert row["state"] == "crashed" and row["crashed"] is True, row
        assert row["tainted"] == int(host.file("/proc/sys/kernel/tainted").content_string), row
        assert row["module_loaded"] is False and row["reboot_required"] is True, row
        shown = {task["pid"]: task["state"] for task in row["stuck_tasks"]}
        for role in expectation(host)["tasks"]:
            pid = pid_of(host, role)
            assert shown.get(pid) == state_of(host, pid), (role, pid, row["stuck_tasks"])

    def test_status_page_in_a_browser_matches_the_json(self, status):
        check_page_matches(status, f"status-page-{PHASE}.png")

    def test_tasks_are_stuck_in_the_expected_state(self, host):
        for role, want in expectation(host)["tasks"].items():
            pid = pid_of(host, role)
            assert state_of(host, pid) == want["state"], evidence(
                host, f"ps -o pid,stat,wchan:32,cmd -p {pid}", "dmesg | tail -40"
            )

    def test_pipe_reader_waits_in_the_pipe(self, host):
        if mode_of(host) != "splice":
            pytest.skip("read mode has no pipe reader")
        pid = pid_of(host, "reader")
        wchan = parse_wchan(host.file(f"/proc/{pid}/wchan").content_string)
        # 5.10 on x86 with ORC reads wchan 0 for every sleeper: the kernel stack says where it waits.
        places = [wchan] if wchan else parse_stack(host.run(f"cat /proc/{pid}/stack").stdout)
        assert any(p in place.lower() for place in places for p in READER_WCHAN_PATTERNS), places
        assert wchan or "pipe_read" in places, places

    def test_stuck_tasks_survive_sigkill(self, host):
        for role in expectation(host)["tasks"]:
            pid = pid_of(host, role)
            host.run(f"kill -9 {pid}")
            time.sleep(2)
            assert state_of(host, pid) in ("D", "X"), f"{role} {pid} died or woke up after SIGKILL"

    def test_kernel_log_has_the_oops_and_the_recursive_fault(self, host):
        log = parse_kernel_log(host.run("dmesg").stdout)
        assert log.oops, "no oops headline in dmesg"
        assert log.recursive_fault, "no 'Fixing recursive fault but reboot is needed!' in dmesg"
        assert log.last_unloaded_chardev, "no '[last unloaded: chardev' in dmesg"

    def test_kernel_is_tainted_by_the_oops(self, host):
        tainted = int(host.file("/proc/sys/kernel/tainted").content_string)
        assert "D" in taint_letters(tainted), tainted

    def test_the_oops_is_the_victims(self, host):
        """The kernel log's oops names the victim's own task (PID: and Comm: of the oops)."""
        log = parse_kernel_log(host.run("dmesg").stdout)
        victim = pid_of(host, "victim")
        assert (victim, "chardev-victim") in log.oops_tasks, (victim, log.oops_tasks)

    def test_the_pid_files_name_the_stuck_tasks_by_start_time(self, host):
        for role in expectation(host)["tasks"]:
            pid, starttime = read_pidfile_entry_on(host, FILES[role])
            assert starttime is not None, f"{role}: no start time in {FILES[role]}"
            assert parse_proc_stat(host.run(f"cat /proc/{pid}/stat").stdout).starttime == starttime, role

    def test_module_is_gone_and_the_record_matches(self, host):
        assert not host.file("/sys/module/chardev").exists
        record = json.loads(host.file(FILES["record"]).content_string)
        assert record["as_expected"], record["mismatches"]
        assert record["mode"] == mode_of(host)
        assert record["state"] == "crashed"
        # Marked before the rmmod, completed after the evidence.
        assert record["marked_at"] <= record["crashed_at"], record
        assert record["observed"]["oops_of_victim"] is True, record["observed"]

    def test_the_fault_is_explained_from_the_kernels_own_evidence(self, host):
        record = json.loads(host.file(FILES["record"]).content_string)
        check_explanation(host, record["explanation"], FIRST_MEMBER[mode_of(host)])
        # The report on the control node says it too.
        assert results_file(host, "crash.json")["explanation"]["text"] == record["explanation"]["text"]

    def test_the_kernel_reports_the_tasks_in_d_itself(self, host):
        record = json.loads(host.file(FILES["record"]).content_string)
        pids = {role: pid_of(host, role) for role in expectation(host)["tasks"]}
        check_kernel_diagnostics(host, record, expectation(host), pids)

    def test_a_lost_record_never_crashes_again(self, host):
        """The kernel's own word wins: with the record gone, the crash play recognises the crash (taint D,
        oops count, recursive fault), completes the record from the evidence and crashes nothing again.
        The settle time is given on the command line as a string, as users do. Last in the class: it
        rewrites the record. After the read crash only (on every kernel); splice takes the same path."""
        if PHASE != "crashed-read":
            pytest.skip("once per kernel is enough: after the read crash")
        before = (pid_of(host, "victim"), oops_count(host), tainted_of(host))
        record = json.loads(host.file(FILES["record"]).content_string)
        assert host.run(f"rm -f {FILES['record']}").rc == 0
        run = run_playbook(host, PROJECT / "playbooks/crash.yml", "-e", "chardev_crash_settle_timeout=30")
        name = host.backend.get_hostname()
        assert run.rc == 0, str(run)
        assert "no complete record says so: it is not crashed again" in run.messages(name), str(run)
        # Nothing is loaded again: the task is skipped (or, in an older role, not reached at all).
        load = run.task(name, "Load the crash variant (it replaces any other build that is not in use)")
        assert load == {} or load.get("skipped") is True, str(run)
        assert (pid_of(host, "victim"), oops_count(host), tainted_of(host)) == before
        assert "chardev" not in host.run("lsmod").stdout
        recovered = json.loads(host.file(FILES["record"]).content_string)
        assert recovered["state"] == "crashed" and recovered["as_expected"], recovered
        assert recovered["mode"] == record["mode"]


@pytest.mark.skipif(PHASE != "rewound", reason="checked after the rewind")
class TestRewound:
    """playbooks/reset.yml took each crashed VM back to its rewind point: lab-ready on the same boot."""

    def test_reset_rewound_the_vm(self, host):
        # reset.yml's own verdict (its closing message "rewound: lab-ready, ..." is made from it).
        assert step_record(host, "reset_how") == "rewound"

    def test_no_reboot(self, host):
        assert host.file(BOOT_ID).content_string.strip() == step_record(host, "boot_id")

    def test_safe_module_loaded_and_the_device_answers(self, host):
        version = host.file("/sys/module/chardev/version")
        assert version.exists and version.content_string.strip().endswith("-safe"), evidence(
            host, "cat /sys/module/chardev/version", "lsmod"
        )
        answer = host.run("head -c 256 /dev/chardev")
        assert answer.rc == 0, answer
        assert re.match(r"I already told you \d+ times Hello world!", answer.stdout), answer.stdout

    def test_no_stuck_task_no_record_no_oops_taint(self, host):
        assert not no_stuck_task(host), no_stuck_task(host)
        assert not host.file(FILES["record"]).exists
        letters = taint_letters(int(host.file("/proc/sys/kernel/tainted").content_string))
        # The lab's module taints O (out of tree) and E (unsigned); the oops (D) went back with the rewind.
        assert "D" not in letters and "O" in letters and "E" in letters, letters

    def test_status_reports_a_ready_host(self, host, status):
        row = by_host(status)[host.backend.get_hostname()]
        assert row["state"] == "ready" and row["module_loaded"] is True, row
        assert row["crashed"] is False and row["stuck_tasks"] == [], row
        assert row["tainted"] == int(host.file("/proc/sys/kernel/tainted").content_string), row

    def test_status_page_in_a_browser_matches_the_json(self, status):
        check_page_matches(status, "status-page-rewound.png")

    def test_the_rewind_point_holds_both_variants_builds(self, host):
        # playbooks/chardev.yml built the crash variant into the build cache before the point was kept, so
        # the crash after this rewind copies it (the crashed-splice phase checks that nothing compiled).
        listing = f"ls -la {build_cache(host)}"
        assert cached_versions(host) >= {"1.0-safe", "1.0-crash"}, evidence(host, listing)

    def test_the_lesson_settings_went_back_with_the_rewind(self, host):
        # The crash lowered the hung-task timeout for the lesson; the rewind point is from before it.
        assert host.file("/proc/sys/kernel/hung_task_timeout_secs").content_string.strip() == "120"


def build_cache(host) -> str:
    return f"/var/cache/chardev-lab/builds/{host.run('uname -r').stdout.strip()}"


def cached_versions(host) -> set[str]:
    """MODULE_VERSION of every build in the VM's build cache (chardev_build keeps one file per stamp)."""
    listing = host.run(f"for ko in {build_cache(host)}/*.ko; do modinfo -F version $ko; done")
    return set(listing.stdout.split())


@pytest.mark.skipif(PHASE != "crashed-splice", reason="checked after the crash that follows a rewind")
def test_the_crash_after_a_rewind_compiled_nothing(host):
    # kbuild leaves chardev.ko in the build directory each time it compiles. The crash variant's build
    # came from the rewind point's cache: the newest .ko there is older than this step, whose start
    # side_effect.yml recorded (the rewound guest's clock was set from the control node's).
    step_started = (
        (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "steps")
        .joinpath(f"{host.backend.get_hostname()}.boot_id")
        .stat()
        .st_mtime
    )
    built = host.run("stat -c %Y /usr/local/src/chardev/chardev.ko")
    assert built.rc == 0, built
    listing = "ls -la --time-style=full-iso /usr/local/src/chardev"
    assert int(built.stdout) < step_started, evidence(host, listing)
    assert cached_versions(host) >= {"1.0-safe", "1.0-crash"}


def worksheet_steps(host, part: str) -> list:
    """What each step of a worksheet part printed on the VM, as side_effect.yml kept it."""
    return json.loads(step_record(host, f"{part}.json"))


@pytest.mark.skipif(PHASE != "hand", reason="checked after the student's own steps")
class TestHand:
    """docs/lesson.md done by hand on each VM: first the unload refused (safe variant), then the article's
    crash (crash variant, after `make lesson`'s playbook run), each judged by playbooks/check.yml."""

    @pytest.mark.parametrize("part", ["refused", "crash"])
    def test_the_worksheet_shows_what_the_vm_printed(self, host, part):
        steps = worksheet_steps(host, part)
        assert steps, f"no steps ran for part {part}"
        problems = [
            f"{step['terminal']} {step['input']!r}: {problem}"
            for step, printed in steps
            for problem in worksheet_mismatches(step["output"], printed)
        ]
        assert not problems, problems

    def test_the_first_cat_after_loading_says_0(self, host):
        printed = [out for step, out in worksheet_steps(host, "crash") if step["input"] == "cat /dev/chardev"]
        assert printed and printed[0].strip() == "I already told you 0 times Hello world!", printed

    def test_check_recognises_the_refused_unload(self, host):
        verdict = json.loads(step_record(host, "refused.check.json"))
        assert verdict["verdict"] == "not_unloaded" and verdict["variant"] == "safe", verdict
        assert "Module chardev is in use" in verdict["summary"], verdict

    def test_check_recognises_and_judges_the_crash_by_hand(self, host):
        verdict = results_file(host, "check.json")
        assert verdict["verdict"] == "crashed" and verdict["as_expected"], verdict
        assert verdict["mode"] == "read", verdict
        # Tied by the kernel's own word: the oops names the stuck Python shell, in the expected state.
        victim = verdict["victim"]
        assert victim["comm"] == "python3", victim
        log = parse_kernel_log(host.run("dmesg").stdout)
        assert (victim["pid"], "python3") in log.oops_tasks, (victim, log.oops_tasks)
        want = expected_outcome(host.run("uname -r").stdout.strip(), "read")["tasks"]["victim"]["state"]
        assert state_of(host, victim["pid"]) == want, evidence(host, f"ps -o pid,stat,cmd -p {victim['pid']}")
        check_explanation(host, verdict["explanation"], None)
        check_kernel_diagnostics(host, verdict, expected_outcome(host.run("uname -r").stdout.strip(), "read"),
                                 {"victim": victim["pid"]})  # fmt: skip

    def test_the_worksheet_table_shows_this_kernel_as_it_crashed(self, host):
        """docs/lesson.md's table row for this kernel is what this run's check.yml said (the table is
        written from real runs by tools/lesson_table.py, which reads the verdicts kept here)."""
        verdict = results_file(host, "check.json")
        series = lesson_table.kernel_series(verdict["kernel_release"])
        runs = PROJECT / ".lab" / "lesson-runs"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / f"{series[0]}.{series[1]}.check.json").write_text(json.dumps(verdict, indent=2) + "\n")
        shown = lesson_table.rows_in((PROJECT / "docs/lesson.md").read_text()).get(series)
        assert shown == lesson_table.row(verdict), (
            f"docs/lesson.md shows {shown!r} for {series}, this run says {lesson_table.row(verdict)!r}: "
            "run python3 tools/lesson_table.py (the verdict is in .lab/lesson-runs)"
        )

    def test_the_crash_by_hand_is_recorded_where_the_status_page_reads_it(self, host, status):
        record = json.loads(host.file(FILES["record"]).content_string)
        assert record["state"] == "crashed" and record["by"] == "hand", record
        row = by_host(status)[host.backend.get_hostname()]
        assert row["state"] == "crashed" and row["check"]["verdict"] == "crashed", row
        assert "chardev_fops" in row["check"]["explanation"], row["check"]


@pytest.mark.skipif(PHASE != "reset", reason="checked after the fresh disk")
class TestReset:
    def test_reset_gave_a_fresh_disk(self, host):
        assert step_record(host, "reset_how") == "fresh"
        # A new boot: the kernel of the crash is gone.
        assert host.file(BOOT_ID).content_string.strip() != step_record(host, "boot_id")

    def test_status_reports_a_clean_host(self, host, status):
        row = by_host(status)[host.backend.get_hostname()]
        assert row["crashed"] is False and row["stuck_tasks"] == [] and row["tainted"] == 0, row
        # A fresh disk: the lab is to be run again.
        assert row["state"] == "not-ready" and row["module_loaded"] is False, row

    def test_no_module_no_stuck_task_no_taint(self, host):
        assert not host.file("/sys/module/chardev").exists
        assert int(host.file("/proc/sys/kernel/tainted").content_string) == 0
        stuck = no_stuck_task(host)
        assert not stuck, stuck
        assert not host.file(FILES["record"]).exists
        # A new kernel: this boot never loaded the module.
        assert "chardev" not in host.run("dmesg").stdout
