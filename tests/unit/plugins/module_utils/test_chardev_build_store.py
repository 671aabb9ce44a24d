"""plugins/module_utils/chardev_build_store.py: how builds are named (the stamp), which builds the store
sends, which it keeps and where, and the pruning of a cache or store. The module, the action plugin and
the filter all name builds through it: one way of naming them."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    RELEASE_RE,
    build_stamp,
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


def test_read_store_sends_only_the_wanted_builds(tmp_path: Path) -> None:
    names = wanted_builds(ARGS, RELEASE)
    safe = next(n for n, v in names.items() if v == "safe")
    (tmp_path / safe).write_bytes(b"\x7fELF safe")
    (tmp_path / "0123456789abcdef.ko").write_bytes(b"\x7fELF other sources")
    assert read_store(str(tmp_path), names) == {safe: base64.b64encode(b"\x7fELF safe").decode()}
    assert read_store(str(tmp_path / "no-such-release"), names) == {}


def test_write_store_keeps_only_what_was_asked_and_prunes(tmp_path: Path) -> None:
    names = wanted_builds(ARGS, RELEASE)
    exported = {name: base64.b64encode(variant.encode()).decode() for name, variant in names.items()}
    exported["../../planted.ko"] = base64.b64encode(b"x").decode()
    release_dir = tmp_path / RELEASE
    kept = write_store(str(release_dir), exported, names)
    assert sorted(kept) == ["crash", "safe"]
    assert sorted(p.name for p in release_dir.iterdir()) == sorted(names)
    assert not (tmp_path / "planted.ko").exists() and not list(tmp_path.glob("../planted.ko"))
    assert oct(release_dir.stat().st_mode & 0o777) == "0o700"


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
