"""The chardev_build_stored filter (plugins/filter/chardev_build_store.py): whether the control node's
store holds every build a host needs already, each with its digest (an entry without one is not sent)."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.chardev_lab.lab.plugins.filter.chardev_build_store import FilterModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    wanted_builds,
    write_store,
)

RELEASE = "6.1.0-56-amd64"
ARGS = {
    "sources": {"chardev.c": "int x;\n", "Makefile": "obj-m := chardev.o\n"},
    "variant": "safe",
    "cache_variants": ["crash", "safe"],
}


def test_the_filter_says_whether_the_store_holds_every_build(tmp_path: Path) -> None:
    stored = FilterModule().filters()["chardev_build_stored"]
    names = wanted_builds(ARGS, RELEASE)
    release_dir = tmp_path / RELEASE
    release_dir.mkdir()
    assert not stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])
    safe, crash = sorted(names, key=names.get, reverse=True)
    write_store(str(release_dir), {safe: "c2FmZQ=="}, names)
    assert stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe"])
    assert not stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])
    (release_dir / crash).write_bytes(b"crash")
    assert not stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])  # no digest
    (release_dir / crash).unlink()
    write_store(str(release_dir), {crash: "Y3Jhc2g="}, names)
    assert stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])
    assert not stored(str(tmp_path), "6.12.57+deb13-amd64", ARGS["sources"], ["safe"])
    assert not stored("", RELEASE, ARGS["sources"], ["safe"])
    assert not stored(str(tmp_path), "../x", ARGS["sources"], ["safe"])
