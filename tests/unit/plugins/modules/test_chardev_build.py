"""plugins/modules/chardev_build.py: the rebuild decision, the compiler lines shown on failure, the reload
decision, the host's cache of builds, the builds carried between hosts (import_builds, each checked
against its digest before anything is installed; export_builds) and the messages of its failed writes.
kbuild, depmod and modinfo are a fake (FakeKbuild, the runner of a FakeSystem whose root holds
lib/modules and sys/module).
The naming and pruning of builds are tested with module_utils/chardev_build_store.py, who may give builds
to the store with the action plugin."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import build_stamp
from ansible_collections.chardev_lab.lab.plugins.modules import chardev_build
from ansible_collections.chardev_lab.lab.tests.unit.plugins import fakes
from ansible_collections.chardev_lab.lab.tests.unit.plugins.fakes import FakeSystem, kernel_text

# Captured from a Debian 6.1 kbuild run on chardev.c with a missing semicolon.
KBUILD_ERROR = kernel_text("bookworm", "kbuild-error-missing-semicolon.txt")
SOURCES = {"chardev.c": b"int x;\n", "Makefile": b"obj-m := chardev.o\n"}


def test_compiler_lines_from_a_real_kbuild_failure() -> None:
    """Captured from a Debian 6.1 kbuild run on chardev.c with a missing semicolon."""
    lines = chardev_build.compiler_lines(KBUILD_ERROR)
    assert lines[0].endswith("error: expected \u2018;\u2019 before \u2018}\u2019 token")
    # gcc's source line and caret come with the error...
    assert lines[1].strip() == "134 | }" and lines[2].strip() == "| ^"
    # ...then make's own failure lines; the noise (Entering directory, CC) is left out.
    assert not any("Entering directory" in ln or "CC [M]" in ln for ln in lines)
    assert any("Error 1" in ln for ln in lines)


def test_warning_lines() -> None:
    warning = "/src/chardev.c:10:5: warning: unused variable \u2018x\u2019 [-Wunused-variable]"
    out = f"  CC [M]  /src/chardev.o\n{warning}\n"
    assert chardev_build.compiler_lines(out, chardev_build.WARNING_RE) == [warning]


def test_sources_to_write(tmp_path: Path) -> None:
    assert chardev_build.sources_to_write(str(tmp_path), SOURCES) == ["Makefile", "chardev.c"]
    (tmp_path / "Makefile").write_bytes(SOURCES["Makefile"])
    (tmp_path / "chardev.c").write_bytes(b"old\n")
    assert chardev_build.sources_to_write(str(tmp_path), SOURCES) == ["chardev.c"]


@pytest.mark.parametrize(
    ("loaded", "loaded_id", "installed_id", "pending", "want"),
    [
        (False, ("", ""), ("1.0-safe", "ABC"), False, False),  # nothing loaded
        (True, ("1.0-safe", "ABC"), ("1.0-safe", "ABC"), False, False),  # the installed build
        (True, ("1.0-crash", "ABC"), ("1.0-safe", "ABC"), False, True),  # another variant, same source
        (True, ("1.0-safe", "OLD"), ("1.0-safe", "ABC"), False, True),  # older source
        (True, ("", ""), ("1.0-safe", "ABC"), False, True),  # a build without version (not ours)
        (True, ("1.0-safe", "ABC"), ("1.0-safe", "ABC"), True, True),  # check mode, a build would happen
    ],
)
def test_reload_needed(loaded, loaded_id, installed_id, pending, want) -> None:
    assert chardev_build.reload_needed(loaded, loaded_id, installed_id, pending) is want


def run_module(
    capsys: pytest.CaptureFixture[str], system: fakes.FakeSystem | None = None, **args: Any
) -> dict[str, Any]:
    return fakes.run_module(chardev_build, args, capsys, system)


def test_check_mode_on_a_fresh_host_changes_nothing(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    result = run_module(
        capsys,
        src=str(src),
        sources={k: v.decode() for k, v in SOURCES.items()},
        variant="safe",
        kernel_release="0.0.0-missing",
        _ansible_check_mode=True,
    )
    assert result["changed"] and result["built"]
    assert result["sources_written"] == ["Makefile", "chardev.c"]
    assert not src.exists()


def test_missing_headers_are_named(tmp_path: Path, capsys) -> None:
    result = run_module(
        capsys,
        src=str(tmp_path / "src"),
        sources={k: v.decode() for k, v in SOURCES.items()},
        variant="safe",
        kernel_release="0.0.0-missing",
    )
    assert result["failed"]
    assert "kernel headers for 0.0.0-missing are missing" in result["msg"]
    assert "kernel_headers role" in result["msg"]


def test_sources_must_be_complete(tmp_path: Path, capsys) -> None:
    result = run_module(capsys, src=str(tmp_path), sources={"chardev.c": "x"}, variant="safe")
    assert result["failed"] and "Makefile" in result["msg"]


def test_unknown_variant_is_refused(tmp_path: Path, capsys) -> None:
    result = run_module(capsys, src=str(tmp_path), sources={}, variant="bogus")
    assert result["failed"] and "bogus" in result["msg"]


class FakeKbuild:
    """Stands in for make, depmod and modinfo: records the commands, makes chardev.ko like kbuild."""

    def __init__(self, fail_with: str = "") -> None:
        self.commands: list[list[str]] = []
        self.fail_with = fail_with
        self.system: FakeSystem | None = None

    def __call__(self, args, check_rc=False, **kwargs):
        self.commands.append(list(args))
        if args[0] == "make" and args[-1] == "modules":
            if self.fail_with:
                return 2, "", self.fail_with
            src = next(a[2:] for a in args if a.startswith("M="))
            variant = next(a[8:] for a in args if a.startswith("VARIANT="))
            Path(src, "chardev.ko").write_text(f"module {variant}")
        if args[0] == "modinfo" and not args[-1].endswith(".ko"):
            return 1, "", f"modinfo: ERROR: Module {args[-1]} not found.\n"  # kmod: a name, not a file
        if args[0] == "modinfo":
            # "module VARIANT [RELEASE]": what the fake kbuild writes, or a test's build from elsewhere.
            words = Path(args[-1]).read_text().split()
            release = words[2] if len(words) > 2 else "6.1.0-56-amd64"
            fields = {
                "version": f"1.0-{words[1]}",
                "srcversion": "ABC",
                "vermagic": f"{release} SMP mod_unload",
            }
            return 0, fields[args[2]] + "\n", ""
        return 0, "", ""


@pytest.fixture
def kernel_tree(tmp_path: Path) -> Path:
    root = tmp_path / "host" / "lib" / "modules"
    (root / "6.1.0-56-amd64" / "build").mkdir(parents=True)
    (root / "6.1.0-56-amd64" / "build" / "Makefile").write_text("# kbuild\n")
    return root


def build(capsys, tmp_path: Path, kbuild: FakeKbuild, monkeypatch, variant: str = "safe", **extra):
    del monkeypatch  # the tests' signature; the system is a FakeSystem
    system = FakeSystem(tmp_path / "host", kbuild)
    kbuild.system = system
    return run_module(
        capsys,
        system,
        src=str(tmp_path / "src"),
        sources={k: v.decode() for k, v in SOURCES.items()},
        variant=variant,
        kernel_release="6.1.0-56-amd64",
        cache_dir=str(tmp_path / "cache"),
        **extra,
    )


def makes(kbuild: FakeKbuild) -> list[str]:
    """The variants kbuild compiled."""
    return [next(a[8:] for a in c if a.startswith("VARIANT=")) for c in kbuild.commands if c[-1] == "modules"]


def test_build_installs_then_reuses_then_rebuilds_for_another_variant(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    kbuild = FakeKbuild()
    first = build(capsys, tmp_path, kbuild, monkeypatch)
    assert first["changed"] and first["built"] and first["version"] == "1.0-safe"
    assert (tmp_path / "src" / "chardev.c").read_bytes() == SOURCES["chardev.c"]
    assert (kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko").exists()
    assert ["depmod", "-a", "6.1.0-56-amd64"] in kbuild.commands

    again = FakeKbuild()
    second = build(capsys, tmp_path, again, monkeypatch)
    assert not second["changed"] and not second["built"] and second["sources_written"] == []
    assert not any(cmd[0] == "make" for cmd in again.commands)

    third = build(capsys, tmp_path, FakeKbuild(), monkeypatch, variant="crash")
    assert third["built"] and third["version"] == "1.0-crash"


def test_loaded_other_build_needs_a_reload(tmp_path: Path, kernel_tree: Path, capsys, monkeypatch) -> None:
    sysfs = tmp_path / "host" / "sys" / "module" / "chardev"
    sysfs.mkdir(parents=True)
    (sysfs / "version").write_text("1.0-classic\n")
    (sysfs / "srcversion").write_text("ABC\n")
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch)
    assert result["loaded_version"] == "1.0-classic" and result["reload_needed"]


def test_failed_build_shows_the_compiler_lines(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    failure = KBUILD_ERROR
    result = build(capsys, tmp_path, FakeKbuild(fail_with=failure), monkeypatch)
    assert result["failed"]
    assert "error: expected" in result["msg"] and "Entering directory" not in result["msg"]
    assert not (kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko").exists()


def test_a_variant_built_before_is_installed_from_the_cache(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    build(capsys, tmp_path, FakeKbuild(), monkeypatch, variant="safe")
    build(capsys, tmp_path, FakeKbuild(), monkeypatch, variant="crash")
    kbuild = FakeKbuild()
    back = build(capsys, tmp_path, kbuild, monkeypatch, variant="safe")
    assert back["changed"] and back["built"] and back["from_cache"] and back["compiled"] == {}
    assert makes(kbuild) == [] and ["depmod", "-a", "6.1.0-56-amd64"] in kbuild.commands
    installed = kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko"
    assert installed.read_text() == "module safe" and back["version"] == "1.0-safe"
    assert (installed.parent / "chardev.ko.stamp").read_text().strip() == back["stamp"]


def test_cache_variants_are_built_but_not_installed_then_used(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    kbuild = FakeKbuild()
    first = build(capsys, tmp_path, kbuild, monkeypatch, variant="safe", cache_variants=["crash", "safe"])
    assert first["changed"] and makes(kbuild) == ["safe", "crash"]
    assert set(first["compiled"]) == {"safe", "crash"} and first["cached_variants"] == ["crash"]
    installed = kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko"
    assert installed.read_text() == "module safe" and first["version"] == "1.0-safe"
    cached = sorted(p.read_text() for p in (tmp_path / "cache" / "6.1.0-56-amd64").iterdir())
    assert cached == ["module crash", "module safe"]

    again = FakeKbuild()
    second = build(capsys, tmp_path, again, monkeypatch, variant="safe", cache_variants=["crash"])
    assert not second["changed"] and second["cached_variants"] == [] and makes(again) == []

    switch = FakeKbuild()
    crash = build(capsys, tmp_path, switch, monkeypatch, variant="crash", cache_variants=["crash"])
    assert crash["changed"] and crash["from_cache"] and makes(switch) == []
    assert installed.read_text() == "module crash" and crash["version"] == "1.0-crash"


def test_check_mode_reports_the_cache_builds_and_writes_nothing(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    build(capsys, tmp_path, FakeKbuild(), monkeypatch, variant="safe")
    kbuild = FakeKbuild()
    check = {"cache_variants": ["crash"], "_ansible_check_mode": True}
    result = build(capsys, tmp_path, kbuild, monkeypatch, variant="safe", **check)
    assert result["changed"] and not result["built"] and result["cached_variants"] == ["crash"]
    assert makes(kbuild) == [] and len(list((tmp_path / "cache" / "6.1.0-56-amd64").iterdir())) == 1


def test_a_failed_cache_build_fails_the_task_and_caches_nothing(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    build(capsys, tmp_path, FakeKbuild(), monkeypatch, variant="safe")
    failure = KBUILD_ERROR
    result = build(capsys, tmp_path, FakeKbuild(fail_with=failure), monkeypatch, cache_variants=["crash"])
    assert result["failed"] and "crash variant" in result["msg"]
    assert [p.name for p in (tmp_path / "cache" / "6.1.0-56-amd64").iterdir() if "partial" in p.name] == []
    assert len(list((tmp_path / "cache" / "6.1.0-56-amd64").iterdir())) == 1


def stamp_of(variant: str, release: str = "6.1.0-56-amd64") -> str:
    return build_stamp(SOURCES, variant, release)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def entry(text: str, digest_of: str | None = None) -> dict[str, str]:
    """A build as the action plugin sends it from the store: its bytes and the store's sha256 of them
    (of digest_of's instead, to stand for bytes changed on the way)."""
    digest = hashlib.sha256((text if digest_of is None else digest_of).encode()).hexdigest()
    return {"data": b64(text), "sha256": digest}


def test_another_hosts_build_is_checked_cached_and_installed_without_compiling(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    builds = {
        f"{stamp_of('safe')}.ko": entry("module safe"),
        f"{stamp_of('crash')}.ko": entry("module crash"),
    }
    kbuild = FakeKbuild()
    result = build(capsys, tmp_path, kbuild, monkeypatch, cache_variants=["crash"], import_builds=builds)
    assert result["changed"] and result["built"] and result["from_cache"]
    assert result["imported"] == ["safe", "crash"] and result["cached_variants"] == ["crash"]
    assert makes(kbuild) == [] and result["compiled"] == {}
    assert kbuild.commands[0][:3] == ["modinfo", "-F", "vermagic"]
    installed = kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko"
    assert installed.read_text() == "module safe"
    assert (tmp_path / "cache" / "6.1.0-56-amd64" / f"{stamp_of('crash')}.ko").read_text() == "module crash"

    again = FakeKbuild()
    second = build(capsys, tmp_path, again, monkeypatch, cache_variants=["crash"], import_builds=builds)
    assert not second["changed"] and second["imported"] == [] and again.commands[0][0] == "modinfo"


def test_a_build_for_another_kernel_is_refused_and_compiled_here(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    builds = {f"{stamp_of('safe')}.ko": entry("module safe 5.10.0-35-amd64")}
    kbuild = FakeKbuild()
    result = build(capsys, tmp_path, kbuild, monkeypatch, import_builds=builds)
    assert kbuild.system is not None
    warned = kbuild.system.warnings
    assert result["imported"] == [] and makes(kbuild) == ["safe"] and not result["from_cache"]
    assert len(warned) == 1 and "5.10.0-35-amd64, not 6.1.0-56-amd64" in warned[0]
    assert [p.name for p in (tmp_path / "cache" / "6.1.0-56-amd64").iterdir()] == [f"{stamp_of('safe')}.ko"]


def test_builds_of_options_this_run_does_not_need_are_ignored(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    builds = {f"{stamp_of('classic')}.ko": entry("module classic"), "../../etc/evil.ko": entry("x")}
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch, import_builds=builds)
    assert result["imported"] == []
    assert [p.name for p in (tmp_path / "cache" / "6.1.0-56-amd64").iterdir()] == [f"{stamp_of('safe')}.ko"]


def test_compiled_builds_are_returned_when_asked_and_the_module_decides_nothing_else(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    """Whether a host may give builds is the control node's decision (the action plugin): the module,
    which runs under the student's root, only returns what it is asked for and takes no student."""
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch, cache_variants=["crash"], export_builds=True)
    exported = {name: base64.b64decode(data).decode() for name, data in result["exported_builds"].items()}
    assert exported == {f"{stamp_of('safe')}.ko": "module safe", f"{stamp_of('crash')}.ko": "module crash"}
    assert "export_refused" not in result

    unasked = build(capsys, tmp_path, FakeKbuild(), monkeypatch, variant="classic")
    assert "exported_builds" not in unasked and "export_refused" not in unasked
    student = build(capsys, tmp_path, FakeKbuild(), monkeypatch, export_builds=True, student="alice")
    assert student["failed"] and "student" in student["msg"]


def test_check_mode_counts_an_import_and_writes_nothing(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    builds = {f"{stamp_of('safe')}.ko": entry("module safe")}
    kbuild = FakeKbuild()
    result = build(capsys, tmp_path, kbuild, monkeypatch, import_builds=builds, _ansible_check_mode=True)
    assert result["changed"] and result["built"] and result["from_cache"] and result["imported"] == ["safe"]
    assert kbuild.commands == [] and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_build_that_does_not_match_its_digest_fails_before_anything_is_installed(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch, check_mode: bool
) -> None:
    """The bytes that arrive must be those the store's digest names, or none of them is written: not the
    crash build whose digest matches, not the safe one that was changed on the way."""
    builds = {
        f"{stamp_of('safe')}.ko": entry("module safe, doctored", digest_of="module safe"),
        f"{stamp_of('crash')}.ko": entry("module crash"),
    }
    kbuild = FakeKbuild()
    result = build(
        capsys,
        tmp_path,
        kbuild,
        monkeypatch,
        cache_variants=["crash"],
        import_builds=builds,
        _ansible_check_mode=check_mode,
    )
    assert result["failed"]
    assert (
        f"safe build {stamp_of('safe')}.ko" in result["msg"] and "does not match its digest" in result["msg"]
    )
    assert hashlib.sha256(b"module safe, doctored").hexdigest() in result["msg"]
    assert "nothing was installed" in result["msg"] and "Run the play again" in result["msg"]
    assert kbuild.commands == [] and not (tmp_path / "cache").exists()
    assert not (kernel_tree / "6.1.0-56-amd64" / "extra").exists()


@pytest.mark.parametrize(
    "sent",
    [b64("module safe"), {"data": b64("module safe")}, {"data": "not base64!", "sha256": "0" * 64}],
    ids=["bytes-without-digest", "no-sha256", "not-base64"],
)
def test_a_build_sent_without_a_usable_digest_fails_and_installs_nothing(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch, sent: Any
) -> None:
    kbuild = FakeKbuild()
    result = build(capsys, tmp_path, kbuild, monkeypatch, import_builds={f"{stamp_of('safe')}.ko": sent})
    assert result["failed"] and stamp_of("safe") in result["msg"]
    assert makes(kbuild) == [] and not (tmp_path / "cache").exists()
    assert not (kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko").exists()


def os_error(number: int, path: str) -> OSError:
    return OSError(number, os.strerror(number), path)


def test_a_full_disk_while_caching_a_build_says_where_and_what_to_do(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    def full(source: str, dest: str) -> None:
        raise os_error(errno.ENOSPC, dest)

    monkeypatch.setattr(shutil, "copyfile", full)
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch)
    assert result["failed"] and "Traceback" not in result["msg"]
    cached = tmp_path / "cache" / "6.1.0-56-amd64" / f"{stamp_of('safe')}.ko"
    assert result["msg"].startswith(f"keeping the safe build in the build cache ({cached}) failed")
    assert f"({cached}.partial)" in result["msg"]
    assert "No space left on device" in result["msg"] and "free some space" in result["msg"]


def test_a_full_disk_while_importing_a_build_says_where_and_what_to_do(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    write_file = chardev_build.write_file

    def full(path: str, data: bytes) -> None:
        if ".partial-" in path:
            raise os_error(errno.ENOSPC, path)
        write_file(path, data)

    monkeypatch.setattr(chardev_build, "write_file", full)
    builds = {f"{stamp_of('safe')}.ko": entry("module safe")}
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch, import_builds=builds)
    assert result["failed"] and "putting a build from the build store into the build cache" in result["msg"]
    assert "No space left on device" in result["msg"] and "free some space" in result["msg"]


def test_permission_denied_on_the_sources_says_where_and_what_to_do(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    def denied(path: str, data: bytes) -> None:
        raise os_error(errno.EACCES, path)

    monkeypatch.setattr(chardev_build, "write_file", denied)
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch)
    assert result["failed"]
    assert result["msg"].startswith(f"writing the sources into {tmp_path / 'src'} failed: Permission denied")
    assert str(tmp_path / "src" / "Makefile") in result["msg"] and "ls -ld" in result["msg"]


def test_a_stamp_that_cannot_be_written_says_where(
    tmp_path: Path, kernel_tree: Path, capsys, monkeypatch
) -> None:
    # A directory where the stamp file goes: a real OS error, whoever runs the test (root included).
    (kernel_tree / "6.1.0-56-amd64" / "extra" / "chardev.ko.stamp").mkdir(parents=True)
    result = build(capsys, tmp_path, FakeKbuild(), monkeypatch)
    assert (
        result["failed"]
        and "writing the build's stamp" in result["msg"]
        and "Is a directory" in result["msg"]
    )
