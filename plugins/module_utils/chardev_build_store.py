# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The chardev build store: how builds are named and kept, one definition for its three users.

* the module ``chardev_build`` (on the target) names the builds of its cache and prunes it;
* the action plugin ``chardev_build`` (on the control node) reads and writes the store of builds shared
  by the hosts of one kernel release (``<store>/<release>/<stamp>.ko``);
* the filter ``chardev_build_stored`` asks whether the store holds a host's builds already.

A build's name is its stamp: a digest of the sources, the variant and the kernel release, so that the
same build has the same name on every host and in the store. Runs on the target's Python too (3.9 on
Debian 11): stdlib only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any

# Builds kept per kernel release, in a host's cache and in the store: the three variants of the
# current sources and a few older ones (a student editing chardev.c goes back and forth).
CACHE_KEEP = 6
# A kernel release becomes a directory name in the store: nothing that could leave it.
RELEASE_RE = re.compile(r"^[A-Za-z0-9_+~-][A-Za-z0-9._+~-]*$")


def normalized_sources(sources: dict[str, Any]) -> dict[str, bytes]:
    """The source files' bytes as the target gets them: lookup('file') strips the final newline, put
    back so the files on the target are the originals."""
    return {name: (str(text).rstrip("\n") + "\n").encode() for name, text in sources.items()}


def build_stamp(sources: dict[str, bytes], variant: str, release: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    digest.update(f"{variant}\0{release}".encode())
    return digest.hexdigest()[:16]


def prune_cache(release_dir: str, keep: int = CACHE_KEEP) -> list[str]:
    """Remove all but the keep most recently used builds of one release; returns the removed names."""
    try:
        entries = [e for e in os.scandir(release_dir) if e.name.endswith(".ko") and e.is_file()]
    except OSError:
        return []
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    removed = []
    for entry in entries[keep:]:
        os.unlink(entry.path)
        removed.append(entry.name)
    return removed


def wanted_builds(args: dict[str, Any], release: str) -> dict[str, str]:
    """File name in the store of each build these chardev_build arguments may need, to its variant."""
    sources = normalized_sources(args.get("sources") or {})
    variants = [args.get("variant"), *(args.get("cache_variants") or [])]
    return {f"{build_stamp(sources, v, release)}.ko": v for v in dict.fromkeys(variants) if v}


def store_has(store: str, release: str, args: dict[str, Any]) -> bool:
    """Whether the store holds every build these module arguments may need."""
    if not store or not RELEASE_RE.match(release):
        return False
    names = wanted_builds(args, release)
    return bool(names) and all(os.path.isfile(os.path.join(store, release, name)) for name in names)


def read_store(release_dir: str, names: dict[str, str]) -> dict[str, str]:
    """The store's builds among names, base64; each one read is marked as used (its mtime)."""
    found = {}
    for name in names:
        path = os.path.join(release_dir, name)
        try:
            with open(path, "rb") as handle:
                found[name] = base64.b64encode(handle.read()).decode("ascii")
        except OSError:
            continue
        os.utime(path)
    return found


def write_store(release_dir: str, exported: dict[str, str], names: dict[str, str]) -> list[str]:
    """Keep the host's new builds; only names this run asked for (a host cannot plant other files)."""
    kept = []
    for name, data in exported.items():
        if name not in names:
            continue
        os.makedirs(release_dir, mode=0o700, exist_ok=True)
        partial = os.path.join(release_dir, f".{name}.partial")
        with open(partial, "wb") as handle:
            handle.write(base64.b64decode(data))
        os.replace(partial, os.path.join(release_dir, name))
        kept.append(names[name])
    if kept:
        prune_cache(release_dir)
    return kept
