"""The chardev_build action plugin's store: which builds it sends, which it keeps, where."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import chardev_build
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = REPO_ROOT / "roles" / "chardev" / "action_plugins" / "chardev_build.py"
RELEASE = "6.1.0-56-amd64"
ARGS = {
    # As the role passes them: lookup('file', rstrip=false) keeps the final newline.
    "sources": {"chardev.c": "int x;\n", "Makefile": "obj-m := chardev.o\n"},
    "variant": "safe",
    "cache_variants": ["crash", "safe"],
}


@pytest.fixture(scope="module")
def action():
    spec = importlib.util.spec_from_file_location("chardev_build_action", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_store_names_are_the_module_stamps(action) -> None:
    """The control node must name a build exactly as the host's cache does, or nothing is ever shared."""
    names = action.wanted_builds(action._module_code(), ARGS, RELEASE)
    sources = chardev_build.normalized_sources(ARGS["sources"])
    assert names == {
        f"{chardev_build.build_stamp(sources, 'safe', RELEASE)}.ko": "safe",
        f"{chardev_build.build_stamp(sources, 'crash', RELEASE)}.ko": "crash",
    }


def test_read_store_sends_only_the_wanted_builds(action, tmp_path: Path) -> None:
    names = action.wanted_builds(action._module_code(), ARGS, RELEASE)
    safe = next(n for n, v in names.items() if v == "safe")
    (tmp_path / safe).write_bytes(b"\x7fELF safe")
    (tmp_path / "0123456789abcdef.ko").write_bytes(b"\x7fELF other sources")
    assert action.read_store(str(tmp_path), names) == {safe: base64.b64encode(b"\x7fELF safe").decode()}
    assert action.read_store(str(tmp_path / "no-such-release"), names) == {}


def test_write_store_keeps_only_what_was_asked_and_prunes(action, tmp_path: Path) -> None:
    code = action._module_code()
    names = action.wanted_builds(code, ARGS, RELEASE)
    exported = {name: base64.b64encode(variant.encode()).decode() for name, variant in names.items()}
    exported["../../planted.ko"] = base64.b64encode(b"x").decode()
    release_dir = tmp_path / RELEASE
    kept = action.write_store(code, str(release_dir), exported, names)
    assert sorted(kept) == ["crash", "safe"]
    assert sorted(p.name for p in release_dir.iterdir()) == sorted(names)
    assert not (tmp_path / "planted.ko").exists() and not list(tmp_path.glob("../planted.ko"))
    assert oct(release_dir.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("release", ["6.1.0-56-amd64", "6.12.57+deb13-amd64", "5.10.0-35-cloud-amd64"])
def test_real_release_names_are_accepted(action, release: str) -> None:
    assert action.RELEASE_RE.match(release)


@pytest.mark.parametrize("release", ["", "..", "../etc", "a/b", ".hidden"])
def test_release_names_that_leave_the_store_are_refused(action, release: str) -> None:
    assert not action.RELEASE_RE.match(release)


def test_the_filter_says_whether_the_store_holds_every_build(action, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "chardev_build_store_filter",
        REPO_ROOT / "roles" / "chardev" / "filter_plugins" / "chardev_build_store.py",
    )
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    stored = plugin.FilterModule().filters()["chardev_build_stored"]
    names = action.wanted_builds(action._module_code(), ARGS, RELEASE)
    release_dir = tmp_path / RELEASE
    release_dir.mkdir()
    assert not stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])
    safe, crash = sorted(names, key=names.get, reverse=True)
    (release_dir / safe).write_bytes(b"safe")
    assert stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe"])
    assert not stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])
    (release_dir / crash).write_bytes(b"crash")
    assert stored(str(tmp_path), RELEASE, ARGS["sources"], ["safe", "crash"])
    assert not stored(str(tmp_path), "6.12.57+deb13-amd64", ARGS["sources"], ["safe"])
    assert not stored("", RELEASE, ARGS["sources"], ["safe"])
    assert not stored(str(tmp_path), "../x", ARGS["sources"], ["safe"])
