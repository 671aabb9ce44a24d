"""plugins/module_utils/chardev_build_store.py: how builds are named (the stamp), which hosts may give
builds (the control node's decision), which builds the store sends and keeps and where (write-once, whole,
each with its digest, checked when read), its messages when the disk refuses, and the pruning of a cache
or store. The module, the action plugin and the filters all go through it: one way of doing each."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    LOCK_NAME,
    RELEASE_RE,
    StoreError,
    build_stamp,
    export_refusal,
    normalized_sources,
    prune_cache,
    read_store,
    wanted_builds,
    write_store,
)

RELEASE = "6.1.0-56-amd64"
SOURCES = {"chardev.c": b"int x;\n", "Makefile": b"obj-m := chardev.o\n"}
ARGS = {
    # As the role passes them: lookup('file', rstrip=false) keeps the final newline.
    "sources": {"chardev.c": "int x;\n", "Makefile": "obj-m := chardev.o\n"},
    "variant": "safe",
    "cache_variants": ["crash", "safe"],
}


def test_stamp_changes_with_each_input() -> None:
    base = build_stamp(SOURCES, "safe", "6.1.0-56-amd64")
    assert base == build_stamp(dict(reversed(SOURCES.items())), "safe", "6.1.0-56-amd64")
    assert base != build_stamp({**SOURCES, "chardev.c": b"int y;\n"}, "safe", "6.1.0-56-amd64")
    assert base != build_stamp(SOURCES, "crash", "6.1.0-56-amd64")
    assert base != build_stamp(SOURCES, "safe", "6.12.57+deb13-amd64")


def test_the_store_names_are_the_module_stamps() -> None:
    """The control node must name a build exactly as the host's cache does, or nothing is ever shared."""
    names = wanted_builds(ARGS, RELEASE)
    sources = normalized_sources(ARGS["sources"])
    assert names == {
        f"{build_stamp(sources, 'safe', RELEASE)}.ko": "safe",
        f"{build_stamp(sources, 'crash', RELEASE)}.ko": "crash",
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


NAMES = wanted_builds(ARGS, RELEASE)
SAFE = next(n for n, v in NAMES.items() if v == "safe")
CRASH = next(n for n, v in NAMES.items() if v == "crash")


def test_read_store_sends_only_the_wanted_builds_with_their_digests(tmp_path: Path) -> None:
    release_dir = tmp_path / RELEASE
    assert write_store(str(release_dir), {SAFE: b64(b"\x7fELF safe")}, NAMES) == (["safe"], [])
    (release_dir / "0123456789abcdef.ko").write_bytes(b"\x7fELF other sources")
    found, warnings = read_store(str(release_dir), NAMES)
    assert found == {SAFE: {"data": b64(b"\x7fELF safe"), "sha256": sha(b"\x7fELF safe")}}
    assert warnings == []
    assert read_store(str(tmp_path / "no-such-release"), NAMES) == ({}, [])
    assert not (tmp_path / "no-such-release").exists()


def test_write_store_keeps_only_what_was_asked_with_digests(tmp_path: Path) -> None:
    exported = {name: b64(variant.encode()) for name, variant in NAMES.items()}
    exported["../../planted.ko"] = b64(b"x")
    release_dir = tmp_path / RELEASE
    kept, warnings = write_store(str(release_dir), exported, NAMES)
    assert sorted(kept) == ["crash", "safe"] and warnings == []
    assert sorted(p.name for p in release_dir.iterdir()) == sorted(
        [LOCK_NAME, *NAMES, *(f"{name}.sha256" for name in NAMES)]
    )
    # sha256sum's own format: `cd <release> && sha256sum -c *.sha256` checks the store by hand.
    assert (release_dir / f"{SAFE}.sha256").read_text() == f"{sha(b'safe')}  {SAFE}\n"
    assert not (tmp_path / "planted.ko").exists() and not list(tmp_path.glob("../planted.ko"))
    assert oct(release_dir.stat().st_mode & 0o777) == "0o700"


def test_an_entry_that_exists_is_never_overwritten(tmp_path: Path) -> None:
    release_dir = tmp_path / RELEASE
    assert write_store(str(release_dir), {SAFE: b64(b"first")}, NAMES) == (["safe"], [])
    kept, warnings = write_store(str(release_dir), {SAFE: b64(b"second")}, NAMES)
    assert kept == [] and len(warnings) == 1
    assert (
        "holds another" in warnings[0] and "never replaced" in warnings[0] and sha(b"second") in warnings[0]
    )
    assert (release_dir / SAFE).read_bytes() == b"first"
    assert (release_dir / f"{SAFE}.sha256").read_text().split()[0] == sha(b"first")
    # The same bytes again: nothing to write, nothing to say.
    assert write_store(str(release_dir), {SAFE: b64(b"first")}, NAMES) == ([], [])


def test_a_tampered_entry_is_refused_when_read_and_kept_when_written(tmp_path: Path) -> None:
    release_dir = tmp_path / RELEASE
    write_store(str(release_dir), {SAFE: b64(b"\x7fELF safe"), CRASH: b64(b"\x7fELF crash")}, NAMES)
    (release_dir / SAFE).write_bytes(b"\x7fELF safe, doctored")
    found, warnings = read_store(str(release_dir), NAMES)
    assert sorted(found) == [CRASH]
    assert len(warnings) == 1 and SAFE in warnings[0] and "no longer matches the digest" in warnings[0]
    assert f"Remove {release_dir / SAFE}" in warnings[0]
    kept, refused = write_store(str(release_dir), {SAFE: b64(b"\x7fELF safe")}, NAMES)
    assert kept == [] and "no longer matches" in refused[0]
    assert (release_dir / SAFE).read_bytes() == b"\x7fELF safe, doctored"


def test_an_entry_without_its_digest_is_not_sent(tmp_path: Path) -> None:
    """As an older lab left them: a .ko alone."""
    release_dir = tmp_path / RELEASE
    release_dir.mkdir()
    (release_dir / SAFE).write_bytes(b"\x7fELF safe")
    found, warnings = read_store(str(release_dir), NAMES)
    assert found == {} and "has no digest" in warnings[0]


def test_a_digest_left_without_its_entry_is_replaced(tmp_path: Path) -> None:
    """An interrupted write leaves at most the digest (written first): that is no entry."""
    release_dir = tmp_path / RELEASE
    release_dir.mkdir()
    (release_dir / f"{SAFE}.sha256").write_text(f"{sha(b'old')}  {SAFE}\n")
    (release_dir / f".{SAFE}.abc123.partial").write_bytes(b"half")
    assert write_store(str(release_dir), {SAFE: b64(b"new")}, NAMES) == (["safe"], [])
    assert read_store(str(release_dir), NAMES)[0][SAFE]["sha256"] == sha(b"new")
    assert not list(release_dir.glob("*.partial"))


def test_concurrent_writers_of_one_entry_leave_one_whole_file(tmp_path: Path) -> None:
    """Eight hosts' results written at once (the action plugin runs in each host's worker): one build is
    kept, whole, with its own digest; the others are refused, none is mixed in."""
    release_dir = tmp_path / RELEASE
    contents = [bytes([n]) * (4 << 20) for n in range(8)]
    start = threading.Barrier(len(contents))
    results: list[tuple[list[str], list[str]]] = []

    def writer(data: bytes) -> None:
        start.wait()
        results.append(write_store(str(release_dir), {SAFE: b64(data)}, NAMES))

    threads = [threading.Thread(target=writer, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(kept) for kept, _warnings in results) == [0] * 7 + [1]
    stored = (release_dir / SAFE).read_bytes()
    assert stored in contents
    assert (release_dir / f"{SAFE}.sha256").read_text().split()[0] == sha(stored)
    assert sorted(p.name for p in release_dir.iterdir()) == [LOCK_NAME, SAFE, f"{SAFE}.sha256"]


def test_a_host_result_that_is_not_base64_is_not_stored(tmp_path: Path) -> None:
    kept, warnings = write_store(str(tmp_path / RELEASE), {SAFE: "not base64!"}, NAMES)
    assert kept == [] and "not base64" in warnings[0] and not (tmp_path / RELEASE).exists()


def os_error(number: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(number, os.strerror(number), str(args[0]))

    return fail


def test_a_full_store_says_where_and_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release_dir = tmp_path / RELEASE
    monkeypatch.setattr(os, "fsync", os_error(errno.ENOSPC))
    with pytest.raises(StoreError) as failed:
        write_store(str(release_dir), {SAFE: b64(b"\x7fELF safe")}, NAMES)
    message = str(failed.value)
    assert message.startswith(f"writing a build into the build store {release_dir} failed: No space left")
    assert "free some space" in message and "chardev_build_store" in message
    # Nothing half-written is left: no entry, no temporary file.
    assert sorted(p.name for p in release_dir.iterdir()) == [LOCK_NAME]


def test_an_unreadable_entry_says_where_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_dir = tmp_path / RELEASE
    write_store(str(release_dir), {SAFE: b64(b"\x7fELF safe")}, NAMES)
    real_open = open

    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(release_dir / SAFE):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(StoreError) as failed:
        read_store(str(release_dir), NAMES)
    message = str(failed.value)
    assert message.startswith(
        f"reading the build store's entry {release_dir / SAFE} failed: Permission denied"
    )
    assert "ls -ld" in message


@pytest.mark.parametrize(
    ("host", "groups", "record", "facts", "refused"),
    [
        ("vm1", ["lab", "lab_vms"], None, {}, ""),
        ("alice", ["lab", "classroom"], None, {}, "group classroom"),
        (
            "bob",
            ["lab", "lab_vms"],
            '{"host": "bob", "student": "bob"}',
            {},
            "the student bob has an account",
        ),
        ("bob", ["lab", "lab_vms"], "", {}, "cannot be read"),
        ("vm1", ["lab", "lab_vms"], None, {"lab_state_dir": "/nowhere"}, "facts name lab_state_dir"),
        ("a/b", ["lab"], None, {}, "cannot name an account record"),
    ],
    ids=["trusted", "classroom", "account-record", "unreadable-record", "facts-move-the-record", "bad-name"],
)
def test_export_refusal_is_the_control_nodes_view(
    tmp_path: Path, host: str, groups: list[str], record: str | None, facts: dict[str, Any], refused: str
) -> None:
    if record is not None:
        (tmp_path / "accounts").mkdir()
        (tmp_path / "accounts" / f"{host}.json").write_text(record)
    why = export_refusal(host, groups, str(tmp_path), facts)
    assert (refused in why and why) if refused else why == ""


def test_export_refusal_without_a_state_dir_refuses() -> None:
    assert "lab_state_dir is not set" in export_refusal("vm1", ["lab"], "", {})


@pytest.mark.parametrize("release", ["6.1.0-56-amd64", "6.12.57+deb13-amd64", "5.10.0-35-cloud-amd64"])
def test_real_release_names_are_accepted(release: str) -> None:
    assert RELEASE_RE.match(release)


@pytest.mark.parametrize("release", ["", "..", "../etc", "a/b", ".hidden"])
def test_release_names_that_leave_the_store_are_refused(release: str) -> None:
    assert not RELEASE_RE.match(release)


def test_the_cache_keeps_the_most_recently_used_builds(tmp_path: Path) -> None:
    release_dir = tmp_path / "6.1.0-56-amd64"
    release_dir.mkdir()
    for age in range(9):
        ko = release_dir / f"{age}.ko"
        ko.write_text("x")
        os.utime(ko, (1000 - age, 1000 - age))
    removed = prune_cache(str(release_dir))
    assert sorted(removed) == ["6.ko", "7.ko", "8.ko"]
    assert sorted(p.name for p in release_dir.iterdir()) == [f"{age}.ko" for age in range(6)]


def test_pruning_the_store_removes_the_digests_too(tmp_path: Path) -> None:
    release_dir = tmp_path / RELEASE
    release_dir.mkdir()
    for age in range(8):
        ko = release_dir / f"{age}.ko"
        ko.write_text("x")
        (release_dir / f"{age}.ko.sha256").write_text(f"{sha(b'x')}  {age}.ko\n")
        os.utime(ko, (1000 - age, 1000 - age))
    assert sorted(prune_cache(str(release_dir))) == ["6.ko", "7.ko"]
    assert not (release_dir / "6.ko.sha256").exists() and (release_dir / "5.ko.sha256").exists()
