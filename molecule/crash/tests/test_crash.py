"""The crash on a real VM: the stuck tasks in the state the kernel predicts, unkillable, the oops in
the kernel log; after the reset, a clean host. Expected states come from the one table in
roles/chardev_crash/module_utils/chardev_crash.py."""

import json
import time
from pathlib import Path

import pytest
from chardev_crash import (
    READER_WCHAN_PATTERNS,
    RUN_DIR,
    expected_outcome,
    parse_kernel_log,
    parse_proc_stat,
    parse_stack,
    parse_wchan,
    run_files,
    taint_letters,
)
from fleet_status import by_host, check_page_matches, refresh_status
from lab_testinfra import evidence, phase, run_playbook

CRASHED = phase() == "crashed"
PROJECT = Path(__file__).resolve().parents[3]
FILES = run_files(RUN_DIR)


def mode_of(host) -> str:
    return "splice" if host.backend.get_hostname().endswith("-splice") else "read"


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


def expectation(host) -> dict:
    return expected_outcome(host.run("uname -r").stdout.strip(), mode_of(host))


@pytest.fixture(scope="module")
def status():
    """playbooks/status.yml once for all six VMs, as an instructor would run it (make status)."""
    return refresh_status()


@pytest.mark.skipif(not CRASHED, reason="checked after converge, before the reset")
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
        check_page_matches(status, "status-page-crash.png")

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

    def test_a_lost_record_never_crashes_again(self, host):
        """The kernel's own word wins: with the record gone, the crash play recognises the crash (taint D,
        oops count, recursive fault), completes the record from the evidence and crashes nothing again.
        The settle time is given on the command line as a string, as users do. Last in the class: it
        rewrites the record. On the read VMs only (one per kernel); splice takes the same path."""
        if mode_of(host) != "read":
            pytest.skip("one VM per kernel is enough")
        before = (pid_of(host, "victim"), oops_count(host), tainted_of(host))
        record = json.loads(host.file(FILES["record"]).content_string)
        assert host.run(f"rm -f {FILES['record']}").rc == 0
        run = run_playbook(host, PROJECT / "playbooks/crash.yml", "-e", "chardev_crash_settle_timeout=30")
        name = host.backend.get_hostname()
        assert run.rc == 0, str(run)
        assert "no complete record says so: it is not crashed again" in run.messages(name), str(run)
        load = run.task(name, "Load the crash variant (it replaces any other build that is not in use)")
        assert load == {} or load.get("skipped") is True, str(run)
        assert (pid_of(host, "victim"), oops_count(host), tainted_of(host)) == before
        assert "chardev" not in host.run("lsmod").stdout
        recovered = json.loads(host.file(FILES["record"]).content_string)
        assert recovered["state"] == "crashed" and recovered["as_expected"], recovered
        assert recovered["mode"] == record["mode"]


@pytest.mark.skipif(CRASHED, reason="checked after the reset")
class TestReset:
    def test_status_reports_a_clean_host(self, host, status):
        row = by_host(status)[host.backend.get_hostname()]
        assert row["crashed"] is False and row["stuck_tasks"] == [] and row["tainted"] == 0, row
        # A fresh disk: the lab is to be run again.
        assert row["state"] == "not-ready" and row["module_loaded"] is False, row

    def test_no_module_no_stuck_task_no_taint(self, host):
        assert not host.file("/sys/module/chardev").exists
        assert int(host.file("/proc/sys/kernel/tainted").content_string) == 0
        states = host.run("ps -eo stat=,comm=").stdout.splitlines()
        stuck = [
            line for line in states if line.startswith("X") or (line.startswith("D") and "chardev" in line)
        ]
        assert not stuck, stuck
        assert not host.file(FILES["record"]).exists
        # A new kernel: this boot never loaded the module.
        assert "chardev" not in host.run("dmesg").stdout
