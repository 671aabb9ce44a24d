"""Unit tests for plugins/modules/chardev_node.py.

The pure functions get captured /proc/devices text (tests/unit/data/kernels/bookworm/proc-devices.txt)
and stat-like objects. The end-to-end tests run the module through AnsibleModule with
patch_module_args, in a tmp_path, with /proc/devices replaced by a file and mknod replaced by a fake
(creating character devices needs root; these tests do not).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.modules import chardev_node
from ansible_collections.chardev_lab.lab.plugins.modules.chardev_node import (
    ChardevNodeError,
    Node,
    Plan,
    Wanted,
)
from ansible_collections.chardev_lab.lab.tests.unit.plugins import fakes
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import FakeSystem, kernel_text

# /proc/devices of a Debian 12 QEMU guest (virtio disk, no GPU) with the chardev module loaded.
# The block section also lists a block driver called "chardev", which must be ignored.
PROC_DEVICES_LOADED = kernel_text("bookworm", "proc-devices.txt")

# The same guest after "rmmod chardev".
PROC_DEVICES_UNLOADED = "\n".join(line for line in PROC_DEVICES_LOADED.splitlines() if line != "240 chardev")

ROOT_WANTED = Wanted(major=240, minor=0, mode=0o644, uid=0, gid=0)
#: A major no driver of the sample registered: that of a node left from an earlier load of chardev.
STALE_MAJOR = 239


def stat_like(kind: int, perm: int = 0o644, rdev: int = 0, uid: int = 0, gid: int = 0) -> SimpleNamespace:
    return SimpleNamespace(st_mode=kind | perm, st_rdev=rdev, st_uid=uid, st_gid=gid)


def char_stat(major: int = 240, minor: int = 0, perm: int = 0o644, uid: int = 0, gid: int = 0) -> Any:
    return stat_like(stat.S_IFCHR, perm, os.makedev(major, minor), uid, gid)


# ---------------------------------------------------------------- /proc/devices


def test_parse_proc_devices_sections() -> None:
    devices = chardev_node.parse_proc_devices(PROC_DEVICES_LOADED)
    assert (1, "mem") in devices.char
    assert (4, "/dev/vc/0") in devices.char
    assert (240, "chardev") in devices.char
    assert (252, "chardev") in devices.block
    assert (252, "chardev") not in devices.char
    assert devices.block[-1] == (259, "blkext")


def test_find_char_major_ignores_block_devices() -> None:
    devices = chardev_node.parse_proc_devices(PROC_DEVICES_LOADED)
    assert chardev_node.find_char_major(devices, "chardev") == 240


def test_find_char_major_not_loaded() -> None:
    devices = chardev_node.parse_proc_devices(PROC_DEVICES_UNLOADED)
    # The block driver of the same name must not be mistaken for it.
    with pytest.raises(ChardevNodeError) as excinfo:
        chardev_node.find_char_major(devices, "chardev")
    assert str(excinfo.value) == "chardev is not registered in /proc/devices: load the module first"


def test_find_char_major_names_with_slashes() -> None:
    devices = chardev_node.parse_proc_devices(PROC_DEVICES_LOADED)
    assert chardev_node.find_char_major(devices, "/dev/vc/0") == 4


def test_find_char_major_several_majors() -> None:
    devices = chardev_node.parse_proc_devices("Character devices:\n240 chardev\n239 chardev\n")
    with pytest.raises(ChardevNodeError, match="several majors"):
        chardev_node.find_char_major(devices, "chardev")


@pytest.mark.parametrize(
    "text", ["240 chardev\n", "Character devices:\nfoo bar\n", "Character devices:\n12\n"]
)
def test_parse_proc_devices_rejects_garbage(text: str) -> None:
    with pytest.raises(ChardevNodeError, match="unexpected line"):
        chardev_node.parse_proc_devices(text)


# ---------------------------------------------------------------- small helpers


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0644", 0o644), ("644", 0o644), ("0660", 0o660), ("4755", 0o4755), (420, 0o644), (0, 0)],
)
def test_parse_mode(value: object, expected: int) -> None:
    assert chardev_node.parse_mode(value) == expected


@pytest.mark.parametrize("value", ["u=rw", "0689", "", "10000", True, 0o10000, -1, None, 6.44])
def test_parse_mode_rejects(value: object) -> None:
    with pytest.raises(ChardevNodeError, match="mode"):
        chardev_node.parse_mode(value)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (stat.S_IFCHR, "char device"),
        (stat.S_IFBLK, "block device"),
        (stat.S_IFREG, "regular file"),
        (stat.S_IFDIR, "directory"),
        (stat.S_IFLNK, "symbolic link"),
        (stat.S_IFIFO, "FIFO"),
        (stat.S_IFSOCK, "socket"),
    ],
)
def test_node_from_stat_kinds(kind: int, expected: str) -> None:
    assert chardev_node.node_from_stat(stat_like(kind)).kind == expected


def test_node_from_stat_char_device() -> None:
    node = chardev_node.node_from_stat(char_stat(240, 3, 0o4660, uid=1000, gid=27))
    assert node == Node(kind="char device", major=240, minor=3, mode=0o4660, uid=1000, gid=27)


def test_node_from_stat_missing() -> None:
    assert chardev_node.node_from_stat(None) == Node(kind="absent")


def test_describe_node() -> None:
    node = chardev_node.node_from_stat(char_stat(240, 0, 0o600, uid=0, gid=5))
    names = {0: "root", 5: "tty"}
    described = chardev_node.describe_node("/dev/chardev", node, names.__getitem__, names.__getitem__)
    assert described == {
        "path": "/dev/chardev",
        "kind": "char device",
        "major": 240,
        "minor": 0,
        "mode": "0600",
        "owner": "root",
        "group": "tty",
    }
    assert chardev_node.describe_node("/dev/chardev", Node(kind="directory")) == {
        "path": "/dev/chardev",
        "kind": "directory",
    }


# ---------------------------------------------------------------- plans


def present(st: Any, wanted: Wanted = ROOT_WANTED) -> Plan:
    return chardev_node.plan_present("/dev/chardev", chardev_node.node_from_stat(st), wanted)


def absent(st: Any) -> Plan:
    return chardev_node.plan_absent("/dev/chardev", chardev_node.node_from_stat(st))


def test_plan_present_missing() -> None:
    plan = present(None)
    assert plan.actions == ["mknod", "chown", "chmod"]
    assert plan.changed


def test_plan_present_correct() -> None:
    plan = present(char_stat())
    assert plan == Plan()
    assert plan.actions == []
    assert not plan.changed


def test_plan_present_stale_major() -> None:
    assert present(char_stat(major=241)).actions == ["remove", "mknod", "chown", "chmod"]


def test_plan_present_stale_minor() -> None:
    assert present(char_stat(minor=1)).actions == ["remove", "mknod", "chown", "chmod"]


def test_plan_present_wrong_mode() -> None:
    assert present(char_stat(perm=0o666)).actions == ["chmod"]


def test_plan_present_wrong_owner() -> None:
    assert present(char_stat(uid=1000)).actions == ["chown"]


def test_plan_present_wrong_group_and_mode() -> None:
    assert present(char_stat(gid=5, perm=0o600)).actions == ["chown", "chmod"]


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        (stat.S_IFREG, "regular file"),
        (stat.S_IFDIR, "directory"),
        (stat.S_IFLNK, "symbolic link"),
        (stat.S_IFIFO, "FIFO"),
        (stat.S_IFSOCK, "socket"),
    ],
)
def test_plan_present_refuses_other_file_types(kind: int, word: str) -> None:
    with pytest.raises(ChardevNodeError) as excinfo:
        present(stat_like(kind))
    assert f"/dev/chardev exists and is a {word}, not a character device" in str(excinfo.value)


def test_plan_present_refuses_block_device_with_right_numbers() -> None:
    with pytest.raises(ChardevNodeError, match="is a block device"):
        present(stat_like(stat.S_IFBLK, rdev=os.makedev(240, 0)))


def test_plan_absent_missing() -> None:
    assert absent(None) == Plan()


@pytest.mark.parametrize("st", [char_stat(), char_stat(major=241), char_stat(perm=0o600, uid=1000)])
def test_plan_absent_removes_any_char_device(st: Any) -> None:
    assert absent(st).actions == ["remove"]


@pytest.mark.parametrize("kind", [stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFBLK])
def test_plan_absent_refuses_other_file_types(kind: int) -> None:
    with pytest.raises(ChardevNodeError, match="refusing to replace or remove it"):
        absent(stat_like(kind))


def test_node_after() -> None:
    missing = Node(kind="absent")
    node = chardev_node.node_from_stat(char_stat(major=241))
    assert chardev_node.node_after(missing, Plan(mknod=True), ROOT_WANTED) == Node(
        kind="char device", major=240, minor=0, mode=0o644, uid=0, gid=0
    )
    assert chardev_node.node_after(node, Plan(remove=True), None) == missing
    assert chardev_node.node_after(missing, Plan(), None) == missing


# ---------------------------------------------------------------- end to end


class FakeDevFS:
    """Stands in for mknod: makes a regular file and remembers the device number it should have had.

    lstat_node reports such files as character devices, so the module sees what it would see after a real
    mknod, and chmod/chown/unlink act on real files.
    """

    def __init__(self) -> None:
        self.rdev: dict[str, int] = {}
        self.system: FakeSystem | None = None

    def make_char_node(self, path: str, mode: int, major: int, minor: int) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        self.rdev[path] = os.makedev(major, minor)

    def lstat_node(self, path: str) -> Any:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if path in self.rdev and stat.S_ISREG(st.st_mode):
            return SimpleNamespace(
                st_mode=stat.S_IFCHR | stat.S_IMODE(st.st_mode),
                st_rdev=self.rdev[path],
                st_uid=st.st_uid,
                st_gid=st.st_gid,
            )
        return st

    def remove_node(self, path: str) -> None:
        os.unlink(path)
        self.rdev.pop(path, None)

    def kind(self, path: str) -> str:
        return chardev_node.node_from_stat(self.lstat_node(path)).kind

    def numbers(self, path: str) -> tuple[int, int]:
        st = self.lstat_node(path)
        return os.major(st.st_rdev), os.minor(st.st_rdev)


# Names of the user running the tests: chown to oneself works without root.
ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def proc_devices(tmp_path: Path) -> Path:
    """/proc/devices of the FakeSystem rooted at tmp_path/host (system_of() gives that system)."""
    path = tmp_path / "host" / "proc" / "devices"
    path.parent.mkdir(parents=True)
    path.write_text(PROC_DEVICES_LOADED, encoding="utf-8")
    return path


def system_of(proc_devices: Path) -> FakeSystem:
    return FakeSystem(proc_devices.parents[1])


@pytest.fixture
def devfs(monkeypatch: pytest.MonkeyPatch, proc_devices: Path) -> FakeDevFS:
    fake = FakeDevFS()
    fake.system = system_of(proc_devices)
    monkeypatch.setattr(chardev_node, "make_char_node", fake.make_char_node)
    monkeypatch.setattr(chardev_node, "lstat_node", fake.lstat_node)
    monkeypatch.setattr(chardev_node, "remove_node", fake.remove_node)
    return fake


@pytest.fixture
def node_path(tmp_path: Path) -> str:
    return str(tmp_path / "chardev")


def run_module(
    capsys: pytest.CaptureFixture[str],
    check_mode: bool = False,
    system: FakeSystem | None = None,
    **args: Any,
) -> dict[str, Any]:
    args.setdefault("owner", ME)
    args.setdefault("group", MY_GROUP)
    if check_mode:
        args["_ansible_check_mode"] = True
    return fakes.run_module(chardev_node, args, capsys, system)


def test_module_creates_node_then_is_idempotent(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, path=node_path, system=devfs.system)
    assert result["changed"] is True
    assert result["actions"] == ["mknod", "chown", "chmod"]
    assert {k: result[k] for k in ("path", "major", "minor", "mode", "owner", "group")} == {
        "path": node_path,
        "major": 240,
        "minor": 0,
        "mode": "0644",
        "owner": ME,
        "group": MY_GROUP,
    }
    assert result["state"] == "present"
    # AnsibleModule's automatic stat of `path` must not leak into (or overwrite) the result.
    assert not {"uid", "gid", "size"} & result.keys()
    assert result["diff"]["before"] == {"path": node_path, "kind": "absent"}
    assert result["diff"]["after"]["kind"] == "char device"
    assert devfs.kind(node_path) == "char device"
    assert devfs.numbers(node_path) == (240, 0)
    assert stat.S_IMODE(os.stat(node_path).st_mode) == 0o644  # set despite the umask

    again = run_module(capsys, path=node_path, system=devfs.system)
    assert again["changed"] is False
    assert again["actions"] == []
    assert again["diff"]["before"] == again["diff"]["after"]


def test_module_replaces_stale_node(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    devfs.make_char_node(node_path, 0o644, STALE_MAJOR, 0)  # left from an earlier load: no driver's now
    result = run_module(capsys, path=node_path, system=devfs.system)
    assert result["changed"] is True
    assert result["actions"] == ["remove", "mknod", "chown", "chmod"]
    assert result["diff"]["before"]["major"] == STALE_MAJOR
    assert result["diff"]["after"]["major"] == 240
    assert devfs.numbers(node_path) == (240, 0)


def test_module_replaces_its_own_node_with_another_minor(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    devfs.make_char_node(node_path, 0o644, 240, 1)
    result = run_module(capsys, path=node_path, system=devfs.system)
    assert result["actions"] == ["remove", "mknod", "chown", "chmod"]
    assert devfs.numbers(node_path) == (240, 0)


@pytest.mark.parametrize("state", ["present", "absent"])
@pytest.mark.parametrize(
    ("major", "minor", "owners"),
    [(1, 3, "mem"), (4, 64, "/dev/vc/0, tty, ttyS"), (241, 0, "hidraw")],
)
def test_module_never_replaces_or_removes_a_node_of_another_driver(
    devfs: FakeDevFS,
    node_path: str,
    capsys: pytest.CaptureFixture[str],
    state: str,
    major: int,
    minor: int,
    owners: str,
) -> None:
    """A chardev_device of /dev/null (mem's 1:3), of a tty, or a stale chardev node whose major another
    driver took since: the node is left as it is, and the message names it, its major and its driver."""
    devfs.make_char_node(node_path, 0o666, major, minor)
    os.chmod(node_path, 0o666)  # (the fake mknod's mode is filtered by the umask)
    for check_mode in (True, False):
        result = run_module(capsys, check_mode=check_mode, path=node_path, state=state, system=devfs.system)
        assert result["failed"] is True
        assert result["msg"] == (
            f"{node_path} is the character device {major}:{minor} of driver {owners} "
            f"(major {major} in /proc/devices), not of chardev: refusing to replace or remove it. "
            "Give the node a path of its own (the chardev role's chardev_device, for example /dev/chardev)."
        )
        assert devfs.numbers(node_path) == (major, minor)
        assert stat.S_IMODE(os.stat(node_path).st_mode) == 0o666


def test_module_absent_removes_a_node_of_its_own_driver(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    devfs.make_char_node(node_path, 0o644, 241, 0)
    result = run_module(capsys, path=node_path, state="absent", name="hidraw", system=devfs.system)
    assert (result["changed"], result["actions"]) == (True, ["remove"])
    assert not os.path.lexists(node_path)


def test_module_fixes_mode(devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    devfs.make_char_node(node_path, 0o600, 240, 0)
    os.chmod(node_path, 0o600)
    result = run_module(capsys, path=node_path, mode="0644", system=devfs.system)
    assert result["actions"] == ["chmod"]
    assert result["diff"]["before"]["mode"] == "0600"
    assert stat.S_IMODE(os.stat(node_path).st_mode) == 0o644


def test_module_accepts_integer_mode(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, path=node_path, mode=0o640, system=devfs.system)  # unquoted YAML 0640
    assert result["mode"] == "0640"
    assert stat.S_IMODE(os.stat(node_path).st_mode) == 0o640


def test_module_check_mode_changes_nothing(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, check_mode=True, path=node_path, system=devfs.system)
    assert result["changed"] is True
    assert result["actions"] == ["mknod", "chown", "chmod"]
    assert result["major"] == 240
    assert result["diff"]["after"]["kind"] == "char device"
    assert not os.path.lexists(node_path)

    devfs.make_char_node(node_path, 0o644, STALE_MAJOR, 0)
    result = run_module(capsys, check_mode=True, path=node_path, system=devfs.system)
    assert result["changed"] is True
    assert result["actions"] == ["remove", "mknod", "chown", "chmod"]
    assert devfs.numbers(node_path) == (STALE_MAJOR, 0)

    result = run_module(capsys, check_mode=True, path=node_path, state="absent", system=devfs.system)
    assert result["changed"] is True
    assert result["actions"] == ["remove"]
    assert result["major"] == STALE_MAJOR
    assert result["state"] == "absent"
    assert devfs.kind(node_path) == "char device"


def test_module_check_mode_reports_the_mode_it_would_set(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    devfs.make_char_node(node_path, 0o600, 240, 0)
    os.chmod(node_path, 0o600)
    result = run_module(capsys, check_mode=True, path=node_path, mode="0644", system=devfs.system)
    assert result["actions"] == ["chmod"]
    assert result["mode"] == "0644"
    assert result["diff"]["before"]["mode"] == "0600"
    assert stat.S_IMODE(os.stat(node_path).st_mode) == 0o600


def test_module_fails_when_not_loaded(
    devfs: FakeDevFS, proc_devices: Path, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    proc_devices.write_text(PROC_DEVICES_UNLOADED, encoding="utf-8")
    result = run_module(capsys, path=node_path, system=devfs.system)
    assert result["failed"] is True
    assert result["msg"] == "chardev is not registered in /proc/devices: load the module first"
    assert not os.path.lexists(node_path)


def test_module_never_overwrites_a_regular_file(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Path(node_path).write_text("precious\n", encoding="utf-8")
    for state in ("present", "absent"):
        result = run_module(capsys, path=node_path, state=state, system=devfs.system)
        assert result["failed"] is True
        assert "is a regular file, not a character device" in result["msg"]
        assert Path(node_path).read_text(encoding="utf-8") == "precious\n"


def test_module_never_touches_a_directory(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkdir(node_path)
    Path(node_path, "keep").write_text("x", encoding="utf-8")
    for state in ("present", "absent"):
        result = run_module(capsys, path=node_path, state=state, system=devfs.system)
        assert result["failed"] is True
        assert "is a directory" in result["msg"]
    assert os.listdir(node_path) == ["keep"]


def test_module_does_not_follow_symlinks(
    devfs: FakeDevFS, tmp_path: Path, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = str(tmp_path / "real-node")
    devfs.make_char_node(target, 0o644, 240, 0)
    os.symlink(target, node_path)
    result = run_module(capsys, path=node_path, state="absent", system=devfs.system)
    assert result["failed"] is True
    assert "is a symbolic link" in result["msg"]
    assert os.path.islink(node_path)


def test_module_absent_removes_node_after_the_unload(
    devfs: FakeDevFS, proc_devices: Path, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    proc_devices.write_text(PROC_DEVICES_UNLOADED, encoding="utf-8")  # module already unloaded
    devfs.make_char_node(node_path, 0o644, 240, 0)
    result = run_module(capsys, path=node_path, state="absent", system=devfs.system)
    assert result["changed"] is True
    assert result["actions"] == ["remove"]
    assert (result["major"], result["minor"]) == (240, 0)
    assert result["diff"]["after"] == {"path": node_path, "kind": "absent"}
    assert not os.path.lexists(node_path)

    again = run_module(capsys, path=node_path, state="absent", system=devfs.system)
    assert again["changed"] is False
    assert again["major"] is None


def test_module_without_proc_devices_removes_nothing(
    devfs: FakeDevFS, proc_devices: Path, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without /proc/devices the driver of a node's major cannot be told: it is left as it is."""
    proc_devices.unlink()
    devfs.make_char_node(node_path, 0o644, STALE_MAJOR, 0)
    for state in ("present", "absent"):
        result = run_module(capsys, path=node_path, state=state, system=devfs.system)
        assert result["failed"] is True
        assert result["msg"].startswith("cannot read /proc/devices (No such file or directory): ")
        assert devfs.numbers(node_path) == (STALE_MAJOR, 0)
    # nothing at the path: nothing to remove, nothing to ask
    devfs.remove_node(node_path)
    assert run_module(capsys, path=node_path, state="absent", system=devfs.system)["changed"] is False


def test_module_rejects_unknown_owner(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, path=node_path, owner="no-such-user-chardev-lab", system=devfs.system)
    assert result["failed"] is True
    assert "owner 'no-such-user-chardev-lab' does not exist" in result["msg"]


def test_module_rejects_relative_path(devfs: FakeDevFS, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(capsys, path="chardev", system=devfs.system)
    assert result["failed"] is True
    assert "path must be absolute" in result["msg"]


def test_module_rejects_bad_mode(
    devfs: FakeDevFS, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(capsys, path=node_path, mode="u=rw", system=devfs.system)
    assert result["failed"] is True
    assert "mode must be an octal string" in result["msg"]
    assert not os.path.lexists(node_path)


def can_mknod() -> bool:
    """True with CAP_MKNOD (bit 27) in the effective set: root, and not a container that dropped it."""
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 27))
    return False


@pytest.mark.skipif(not can_mknod(), reason="a real mknod of a character device needs root with CAP_MKNOD")
def test_module_real_mknod_as_root(
    proc_devices: Path, node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only creates the node (1, 3 are /dev/null's numbers, listed as "mem"); never opens it.
    result = run_module(
        capsys,
        path=node_path,
        name="mem",
        minor=3,
        mode="0600",
        owner="root",
        group="root",
        system=system_of(proc_devices),
    )
    assert result["changed"] is True
    st = os.lstat(node_path)
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (0, 0)

    assert (
        run_module(capsys, path=node_path, name="mem", minor=3, mode="0600", system=system_of(proc_devices))[
            "changed"
        ]
        is False
    )
    removed = run_module(capsys, path=node_path, name="mem", state="absent", system=system_of(proc_devices))
    assert removed["changed"] is True
    assert not os.path.lexists(node_path)
