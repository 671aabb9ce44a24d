# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The chardev build store: how builds are named and kept, one definition for its three users.

* the module ``chardev_build`` (on the target) names the builds of its cache and prunes it;
* the action plugin ``chardev_build`` (on the control node) decides which hosts may give builds to the
  store (export_refusal) and reads and writes the store of builds shared by the hosts of one kernel
  release (``<store>/<release>/<stamp>.ko``, each with its ``<stamp>.ko.sha256``);
* the filters ``chardev_build_stored`` and ``chardev_build_export_refusal`` ask whether the store holds a
  host's builds already, and whether the host may give its own.

A build's name is its stamp: a digest of the sources, the variant and the kernel release, so that the
same build has the same name on every host and in the store. Runs on the target's Python too (3.9 on
Debian 11): stdlib only.

What the store trusts: only builds from hosts the control node itself vouches for (export_refusal reads
nothing the host says). An entry is written once (never replaced while it exists), whole (a temporary
file linked into place) and with the sha256 of its bytes; an entry whose bytes no longer match that
digest is not sent, and the target checks the digest again before it installs the bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import describe_os_error

# Builds kept per kernel release, in a host's cache and in the store: the three variants of the
# current sources and a few older ones (a student editing chardev.c goes back and forth).
CACHE_KEEP = 6
# A kernel release becomes a directory name in the store: nothing that could leave it.
RELEASE_RE = re.compile(r"^[A-Za-z0-9_+~-][A-Za-z0-9._+~-]*$")
# An inventory host name becomes a file name in the control node's account records.
HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]*$")
# Hosts of this group are students' own machines (the roster's real hosts): root there is the student's.
CLASSROOM_GROUP = "classroom"
DIGEST_SUFFIX = ".sha256"
LOCK_NAME = ".lock"
PARTIAL_SUFFIX = ".partial"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# What to do when the store cannot be read or written, after the OS error's own advice.
STORE_FIX = "or set chardev_build_store to another directory (empty: every host builds for itself)"


class StoreError(Exception):
    """The store cannot be read or written: the message says which path, the OS error and what to do."""


def store_error(what: str, exc: OSError) -> StoreError:
    return StoreError(f"{describe_os_error(what, exc)}, {STORE_FIX}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        # A store entry's digest goes with it (a host's cache has none).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path + DIGEST_SUFFIX)
    return removed


def wanted_builds(args: dict[str, Any], release: str) -> dict[str, str]:
    """File name in the store of each build these chardev_build arguments may need, to its variant."""
    sources = normalized_sources(args.get("sources") or {})
    variants = [args.get("variant"), *(args.get("cache_variants") or [])]
    return {f"{build_stamp(sources, v, release)}.ko": v for v in dict.fromkeys(variants) if v}


def store_has(store: str, release: str, args: dict[str, Any]) -> bool:
    """Whether the store holds every build these module arguments may need, each with its digest."""
    if not store or not RELEASE_RE.match(release):
        return False
    names = wanted_builds(args, release)
    return bool(names) and all(
        os.path.isfile(path) and os.path.isfile(path + DIGEST_SUFFIX)
        for path in (os.path.join(store, release, name) for name in names)
    )


def account_record(state_dir: str, host: str) -> str:
    """The control node's record of a student's account on host (written before the account exists)."""
    return os.path.join(state_dir, "accounts", f"{host}.json")


def export_refusal(host: str, groups: list[str], state_dir: str, facts: dict[str, Any] | None = None) -> str:
    """Why the control node keeps this host's builds out of the store, or "" when it may give them.

    Decided on the control node from what only the control node knows: the inventory's groups and its own
    account records. A student has root on their machine and could hand it a doctored compiler, so their
    machine's builds must never reach the others. Anything the host returns is left out: facts outrank
    the inventory's variables, so a host whose facts name lab_state_dir could point the record check
    elsewhere, and is refused."""
    if CLASSROOM_GROUP in groups:
        return f"{host} is in the group {CLASSROOM_GROUP}: a student's own machine, where the student is root"
    if "lab_state_dir" in (facts or {}):
        return (
            f"{host}'s facts name lab_state_dir (facts come from the host and outrank the inventory): "
            "the control node's account record cannot be trusted to be looked up in the right place"
        )
    if not state_dir:
        return "lab_state_dir is not set: the control node cannot tell whether a student has an account there"
    if "{{" in state_dir or "{%" in state_dir:
        return (
            f"lab_state_dir is not a path ({state_dir!r} was not rendered): its account records are unknown"
        )
    if not HOST_RE.match(host):
        return f"the host name {host!r} cannot name an account record"
    record = account_record(state_dir, host)
    try:
        with open(record, "rb") as handle:
            student = json.loads(handle.read().decode("utf-8", errors="replace")).get("student", "")
    except FileNotFoundError:
        return ""
    except (OSError, ValueError, AttributeError) as exc:
        # A record that exists but cannot be read still says an account may exist: fail safe.
        why = exc.strerror if isinstance(exc, OSError) else "not a JSON object"
        return f"the control node's account record {record} cannot be read ({why}): counted as an account"
    who = f"the student {student}" if isinstance(student, str) and student else "a student"
    return f"the control node's record {record} says {who} has an account (and root) there"


@contextlib.contextmanager
def locked(release_dir: str, shared: bool = False) -> Iterator[None]:
    """One release directory's lock (<release>/.lock), held around every read-modify-write of it, so
    that two runs or two hosts never interleave their writes or read an entry half-changed."""
    path = os.path.join(release_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise store_error("opening the build store's lock", exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_entry(release_dir: str, name: str) -> tuple[bytes, str] | None:
    """An entry's bytes and its digest as stored; None when there is no entry. OSError for the caller."""
    path = os.path.join(release_dir, name)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    try:
        with open(path + DIGEST_SUFFIX, encoding="ascii", errors="replace") as handle:
            words = handle.read().split()
    except FileNotFoundError:
        words = []
    return data, words[0] if words else ""


def entry_problem(name: str, data: bytes, digest: str) -> str:
    """Why an entry's bytes cannot be trusted, or "" when they match the digest written with them."""
    if not SHA256_RE.match(digest):
        return f"{name} has no digest (kept by an older version of the lab, or its {DIGEST_SUFFIX} is gone)"
    if sha256_hex(data) != digest:
        return f"{name} no longer matches the digest written with it: its bytes changed after it was stored"
    return ""


def read_store(release_dir: str, names: dict[str, str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The store's builds among names, each {"data": base64, "sha256": digest}, and a warning for each
    entry refused because it does not match its digest. Each one read is marked as used (its mtime)."""
    found: dict[str, dict[str, str]] = {}
    warnings = []
    if not os.path.isdir(release_dir):
        return found, warnings
    with locked(release_dir, shared=True):
        for name in names:
            path = os.path.join(release_dir, name)
            try:
                entry = read_entry(release_dir, name)
                if entry is None:
                    continue
                problem = entry_problem(name, *entry)
                if problem:
                    warnings.append(
                        f"the build store's {names[name]} build {problem}; it is not sent to any host (they "
                        f"compile it). Remove {path} and {path}{DIGEST_SUFFIX} so that a new build is kept"
                    )
                    continue
                os.utime(path)
            except OSError as exc:
                raise store_error(f"reading the build store's entry {path}", exc) from exc
            found[name] = {"data": base64.b64encode(entry[0]).decode("ascii"), "sha256": entry[1]}
    return found, warnings


def link_new_file(directory: str, name: str, data: bytes) -> None:
    """directory/name gets data, whole or not at all, and only if it does not exist: written to a temporary
    file of its own, synced, then hard-linked into place (link, unlike rename, never replaces a file).
    FileExistsError when the name is taken."""
    fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(partial, os.path.join(directory, name))
    finally:
        os.unlink(partial)


def sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_one(release_dir: str, name: str, data: bytes) -> tuple[bool, str]:
    """Keep one new build, under the lock, write-once: (whether it was written, why it was refused)."""
    path = os.path.join(release_dir, name)
    existing = read_entry(release_dir, name)
    digest = sha256_hex(data)
    if existing is not None:
        problem = entry_problem(name, *existing)
        if problem:
            return False, f"{problem}; it stays. Remove {path} and {path}{DIGEST_SUFFIX} to keep a new build"
        if existing[1] != digest:
            return False, (
                f"the store holds another {name} already (sha256 {existing[1]}, this one {digest}): the "
                f"first build of a name is kept and never replaced. Remove {path} to keep this one instead"
            )
        return False, ""  # the same bytes: nothing to write
    # The digest first, then the entry: an entry never shows without its digest. A digest left without
    # its entry by an interrupted write is not an entry, and is replaced.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + DIGEST_SUFFIX)
    link_new_file(release_dir, name + DIGEST_SUFFIX, f"{digest}  {name}\n".encode("ascii"))
    link_new_file(release_dir, name, data)
    return True, ""


def write_store(
    release_dir: str, exported: dict[str, Any], names: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Keep the host's new builds: only names this run asked for (a host cannot plant other files), each
    written once. Returns the variants written and a warning for each build refused."""
    kept: list[str] = []
    warnings: list[str] = []
    wanted = {}
    for name, data in exported.items():
        if name not in names:
            continue
        try:
            wanted[name] = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            warnings.append(f"the {names[name]} build {name} the host returned is not base64: not stored")
    if not wanted:
        return kept, warnings
    try:
        os.makedirs(release_dir, mode=0o700, exist_ok=True)
        with locked(release_dir):
            for leftover in os.listdir(release_dir):
                # Under the lock no write is under way: a temporary file is a killed writer's.
                if leftover.startswith(".") and leftover.endswith(PARTIAL_SUFFIX):
                    os.unlink(os.path.join(release_dir, leftover))
            for name, data in wanted.items():
                try:
                    written, why = store_one(release_dir, name, data)
                except FileExistsError:
                    written, why = False, f"{name} appeared while it was written (a writer without the lock)"
                if why:
                    warnings.append(f"the {names[name]} build was not stored: {why}")
                if written:
                    kept.append(names[name])
            if kept:
                sync_dir(release_dir)
                prune_cache(release_dir)
    except OSError as exc:
        raise store_error(f"writing a build into the build store {release_dir}", exc) from exc
    return kept, warnings
