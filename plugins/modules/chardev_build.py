#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build and install the chardev kernel module, only when its inputs changed."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: chardev_build
short_description: Build the chardev module with kbuild and install it for the running kernel
description:
  - Builds C(chardev.ko) from O(src) with the kernel's build system
    (C(make -C /lib/modules/RELEASE/build M=SRC VARIANT=... modules)), installs it as
    C(/lib/modules/RELEASE/extra/chardev.ko) and runs C(depmod).
  - Rebuilds only when the sources, the variant or the kernel release change. They are hashed into
    a stamp stored next to the installed module; C(make -q) cannot answer this question for kbuild,
    which always descends into the kernel tree.
  - Every build is also kept in a build cache on the target (O(cache_dir), one file per stamp, the
    newest few per kernel release), so that switching back to a variant built before copies it
    instead of compiling again. O(cache_variants) builds other variants into the cache without
    installing them (the lab puts the crash variant's build in a local VM's rewind point, so that a
    crash after a rewind, which takes the disk back too, does not compile).
  - Builds travel between hosts with the same kernel release through a store on the control node
    (O(store), handled by the role's action plugin of the same name), so that a fleet compiles each
    build once per release. The action plugin sends the builds this run needs from the store
    (O(import_builds)), each with the sha256 the store keeps for it; each one the cache lacks must have
    that digest (or the task fails before anything is installed) and a C(vermagic) that names the kernel
    release (or it is compiled here) before it is put into the cache.
  - Builds this run compiles go back to the store only from a host the control node trusts with them.
    The action plugin decides, from the inventory and its own records, never from what the host says (a
    host of the group C(classroom), or one with a student's account recorded in
    C(<lab_state_dir>/accounts/), keeps its builds to itself). A store entry is written once and never
    replaced.
  - A failed build reports the compiler's error lines, not the whole make output.
  - Also reports which build of the module is loaded, if any (C(/sys/module/chardev/version) and
    C(srcversion)), so the role can reload it when another build is in the kernel.
version_added: "1.0.0"
author:
  - chardev-lab contributors (@chardev-lab)
options:
  src:
    description: Directory on the target where the sources are written and built.
    type: path
    required: true
  sources:
    description:
      - The module's source files, name to content (C(chardev.c) and C(Makefile)), read on the control
        node with C(lookup('file', ...)). They are written into O(src) when they differ, in the same
        task as the build, because a separate copy task costs two module runs per file on a slow VM.
    type: dict
    required: true
  variant:
    description: Module variant (see files/chardev/README.md).
    type: str
    choices: [safe, classic, crash]
    required: true
  kernel_release:
    description: Kernel to build for. Defaults to the running kernel.
    type: str
  name:
    description: Module name.
    type: str
    default: chardev
  cache_variants:
    description:
      - Other variants to build into the build cache, not installed (none of them is loaded either).
        One that is already there is left alone.
    type: list
    elements: str
    choices: [safe, classic, crash]
    default: []
  cache_dir:
    description: The build cache, one directory per kernel release.
    type: path
    default: /var/cache/chardev-lab/builds
  store:
    description:
      - Directory on the control node shared by every host of the play, one subdirectory per kernel
        release (the role sets C(.lab/builds)). The action plugin reads and writes it; the module never
        sees it. Needs O(kernel_release). Empty or unset, builds stay on each host.
      - Builds are matched by kernel release name. Debian and Ubuntu change that name whenever the
        kernel's module ABI changes, so two hosts with the same name load the same build.
    type: path
  import_builds:
    description:
      - Builds from other hosts, file name (C(STAMP.ko), as in the cache) to C({data, sha256}), its bytes
        in base64 and their sha256 as the store keeps it. Filled by the action plugin from O(store);
        names no option of this run needs are ignored. A build whose bytes do not have its sha256 fails
        the task before any build is written or installed.
    type: dict
    default: {}
  export_builds:
    description:
      - Return the builds this run compiles (C(exported_builds), base64), for the action plugin to keep
        in O(store). The action plugin sets it only for a host it lets give builds, and removes them
        from the result.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports whether a build would be installed (compiled or copied from the build cache), which
        sources would be written and which builds would be imported or cached; writes, builds and
        installs nothing.
      - A build of O(import_builds) counts as imported without its C(vermagic) check, which only a real
        run makes. RV(version) and RV(srcversion) are those of the build installed now, empty when
        there is none.
  diff_mode:
    support: none
  platform:
    platforms: linux
requirements:
  - The kernel headers of O(kernel_release) (role kernel_headers), make and a C compiler.
"""

EXAMPLES = r"""
- name: Build the safe variant for the running kernel
  chardev_lab.lab.chardev_build:
    src: /usr/local/src/chardev
    sources:
      chardev.c: "{{ lookup('file', 'files/chardev/chardev.c') }}"
      Makefile: "{{ lookup('file', 'files/chardev/Makefile') }}"
    variant: safe
  register: build
"""

RETURN = r"""
built:
  description: Whether a new build of the module was (or, in check mode, would be) installed, compiled or
    copied from the build cache.
  returned: always
  type: bool
  sample: true
from_cache:
  description: Whether the installed build came (or would come) from the build cache instead of the compiler.
  returned: always
  type: bool
  sample: false
compiled:
  description: The variants compiled by this run, each with the seconds its kbuild run took.
  returned: always
  type: dict
  sample: {safe: 31.2, crash: 30.4}
imported:
  description: The variants whose build came (or would come) from another host through O(import_builds).
  returned: always
  type: list
  elements: str
  sample: [safe]
stored:
  description: The variants whose new build went into O(store) for other hosts (set by the action plugin;
    a build the store holds already is never replaced).
  returned: when O(store) is set, the host may give builds (RV(export_refused) is empty) and it compiled
  type: list
  elements: str
  sample: [safe, crash]
export_refused:
  description: Why the control node keeps this host's builds out of O(store), empty when it takes them
    (set by the action plugin, from the inventory and the control node's account records).
  returned: when O(store) is set
  type: str
  sample: "the control node's record .lab/accounts/alice.json says the student alice has an account (and
    root) there"
cached_variants:
  description: The variants of O(cache_variants) compiled or imported into the build cache (or that would be).
  returned: always
  type: list
  elements: str
  sample: [crash]
ko:
  description: Installed module file.
  returned: always
  type: str
  sample: /lib/modules/6.1.0-56-amd64/extra/chardev.ko
stamp:
  description: Hash of the sources, variant and kernel release of the installed build.
  returned: always
  type: str
  sample: 9b1c0e6d2f5a4e37
version:
  description: MODULE_VERSION of the installed build (it names the variant); empty in check mode before a
    build.
  returned: always
  type: str
  sample: 1.0-safe
srcversion:
  description: srcversion of the installed build.
  returned: always
  type: str
  sample: 3A1E1F0C0E5D2B7C9A8B6D4
loaded_version:
  description: MODULE_VERSION of the loaded module, empty when none is loaded.
  returned: always
  type: str
  sample: 1.0-crash
loaded_srcversion:
  description: srcversion of the loaded module, empty when none is loaded.
  returned: always
  type: str
  sample: 3A1E1F0C0E5D2B7C9A8B6D4
reload_needed:
  description: A build of the module other than the installed one is loaded.
  returned: always
  type: bool
  sample: false
sources_written:
  description: Source files that were (or would be) written to O(src).
  returned: always
  type: list
  elements: str
  sample: [chardev.c]
warnings_lines:
  description: Compiler warning lines of the build (empty when clean).
  returned: always
  type: list
  elements: str
  sample: []
"""

import base64
import binascii
import os
import re
import shutil
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import (
    DIGEST_SUFFIX,
    build_stamp,
    normalized_sources,
    prune_cache,
    sha256_hex,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    BUILD_CACHE_DIR,
    MODULES_DIR,
    SYSFS_MODULES,
)
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_system import (
    ModuleFailure,
    System,
    execute,
    failing_on_os_error,
)

SOURCES = ("chardev.c", "Makefile")
ERROR_RE = re.compile(r"(error:|Error \d+|fatal error|undefined!|No rule to make target|\*\*\*)")
WARNING_RE = re.compile(r"warning:")


def compiler_lines(output: str, pattern: re.Pattern[str] = ERROR_RE, limit: int = 20) -> list[str]:
    """The lines worth showing a student from a kbuild run, with the source line after each error."""
    lines = output.splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if pattern.search(line):
            picked.append(line.rstrip())
            # gcc prints the offending source line and a caret below an error: keep them.
            if pattern is ERROR_RE and "error:" in line:
                picked.extend(ln.rstrip() for ln in lines[i + 1 : i + 3] if ln.startswith(" "))
    return picked[:limit]


def sources_to_write(src: str, sources: dict[str, bytes]) -> list[str]:
    """Names of the sources whose file in src is missing or different."""
    stale = []
    for name in sorted(sources):
        try:
            with open(os.path.join(src, name), "rb") as handle:
                if handle.read() == sources[name]:
                    continue
        except OSError:
            pass
        stale.append(name)
    return stale


def read_first_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def reload_needed(
    loaded: bool, loaded_id: tuple[str, str], installed_id: tuple[str, str], pending: bool
) -> bool:
    """A loaded module must be replaced when it is not the installed build. A module loaded from
    elsewhere may carry no version at all: that counts as different. In check mode before a build
    (pending) the installed identity is unknown, and a loaded module would be replaced."""
    return loaded and (pending or loaded_id != installed_id or not all(loaded_id))


def cached_ko(cache_dir: str, release: str, stamp: str) -> str:
    return os.path.join(cache_dir, release, f"{stamp}.ko")


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def copy_atomically(source: str, dest: str) -> None:
    """dest gets source's bytes, mode 0644, in one rename: an interrupted copy leaves no half file."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    partial = f"{dest}.partial"
    shutil.copyfile(source, partial)
    os.chmod(partial, 0o644)
    os.replace(partial, dest)


def verified_import(entry: Any, variant: str, name: str, release: str) -> bytes:
    """The bytes of a build from the control node's store, once their sha256 is the digest the control
    node sent with them: what this host installs is what the store holds, or nothing."""
    data = entry.get("data") if isinstance(entry, dict) else None
    want = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(data, str) or not isinstance(want, str):
        raise ModuleFailure(
            f"import_builds[{name}] must be {{data: base64, sha256: digest}}, as the chardev_build action "
            "plugin sends it from the store: nothing was installed. Run the task through the action plugin "
            "(chardev_lab.lab.chardev_build with store set)"
        )
    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModuleFailure(f"the {variant} build {name} from the build store is not base64 ({exc})") from exc
    got = sha256_hex(content)
    if got != want.lower():
        raise ModuleFailure(
            f"the {variant} build {name} from the control node's build store does not match its digest "
            f"(its bytes have sha256 {got}, the store's digest is {want}): it changed on its way here, so "
            "nothing was installed. Run the play again; if this repeats, remove "
            f"{release}/{name} and {release}/{name}{DIGEST_SUFFIX} from the build store on the control node"
        )
    return content


def import_build(system: System, content: bytes, dest: str, release: str) -> str:
    """Put another host's build into the cache at dest, atomically. Returns why it was refused, or ""."""
    with failing_on_os_error(f"putting a build from the build store into the build cache ({dest})"):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        # modinfo takes a name that does not end in .ko for a module name, not a file.
        partial = os.path.join(os.path.dirname(dest), f".partial-{os.path.basename(dest)}")
        write_file(partial, content)
        os.chmod(partial, 0o644)
        vermagic = modinfo_field(system, partial, "vermagic").split()
        if vermagic[:1] != [release]:
            os.unlink(partial)
            return f"its vermagic names {vermagic[0] if vermagic else 'no kernel'}, not {release}"
        os.replace(partial, dest)
    return ""


def make_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "sources": {"type": "dict", "required": True},
            "variant": {"type": "str", "required": True, "choices": ["safe", "classic", "crash"]},
            "kernel_release": {"type": "str"},
            "name": {"type": "str", "default": "chardev"},
            "cache_variants": {
                "type": "list",
                "elements": "str",
                "choices": ["safe", "classic", "crash"],
                "default": [],
            },
            "cache_dir": {"type": "path", "default": BUILD_CACHE_DIR},
            "store": {"type": "path"},
            "import_builds": {"type": "dict", "default": {}},
            "export_builds": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )


def modinfo_field(system: System, ko: str, field: str) -> str:
    rc, out, _err = system.run(["modinfo", "-F", field, ko])
    return out.strip() if rc == 0 else ""


def run(params: dict[str, Any], check_mode: bool, system: System) -> dict[str, Any]:
    """Everything the module does, without AnsibleModule: the result, or ModuleFailure."""
    p = params
    release = p["kernel_release"] or os.uname().release
    name = p["name"]
    kdir = system.path(f"{MODULES_DIR}/{release}/build")
    ko = system.path(f"{MODULES_DIR}/{release}/extra/{name}.ko")
    stamp_file = f"{ko}.stamp"
    missing = [name for name in SOURCES if name not in p["sources"]]
    if missing:
        raise ModuleFailure(f"sources lacks {', '.join(missing)}")
    sources = normalized_sources(p["sources"])
    written = sources_to_write(p["src"], sources)
    if written and not check_mode:
        with failing_on_os_error(f"writing the sources into {p['src']}"):
            os.makedirs(p["src"], exist_ok=True)
            for source in written:
                write_file(os.path.join(p["src"], source), sources[source])
    stamp = build_stamp(sources, p["variant"], release)
    built = not (os.path.exists(ko) and read_first_line(stamp_file) == stamp)
    cache = p["cache_dir"]
    others = [v for v in dict.fromkeys(p["cache_variants"]) if v != p["variant"]]
    # Another host's builds of what this run needs and the cache lacks: the installed variant only when
    # it is about to be installed. Every one is checked against its digest before any is written.
    verified = []
    for variant in ([p["variant"]] if built else []) + others:
        cached = cached_ko(cache, release, build_stamp(sources, variant, release))
        entry = p["import_builds"].get(os.path.basename(cached))
        if entry is None or os.path.isfile(cached):
            continue
        verified.append((variant, cached, verified_import(entry, variant, os.path.basename(cached), release)))
    imported = []
    for variant, cached, content in verified:
        why = "" if check_mode else import_build(system, content, cached, release)
        if why:
            system.warn(f"the {variant} build from another host was refused ({why}): compiling it here")
        else:
            imported.append(variant)

    def available(variant: str) -> bool:
        return variant in imported or os.path.isfile(
            cached_ko(cache, release, build_stamp(sources, variant, release))
        )

    from_cache = built and available(p["variant"])
    to_cache = [v for v in others if not available(v)]
    result: dict[str, Any] = {
        "changed": built or bool(written) or bool(to_cache) or bool(imported),
        "built": built,
        "from_cache": from_cache,
        "compiled": {},
        "imported": imported,
        "cached_variants": [v for v in others if v in to_cache or v in imported],
        "sources_written": written,
        "ko": ko,
        "stamp": stamp,
        "warnings_lines": [],
    }
    sysfs = system.path(f"{SYSFS_MODULES}/{name}")
    result["loaded_version"] = read_first_line(f"{sysfs}/version")
    result["loaded_srcversion"] = read_first_line(f"{sysfs}/srcversion")

    def compile_into_cache(variant: str) -> str:
        """kbuild the variant in src; its .ko goes to the cache. Returns the cached file."""
        if not os.path.isfile(os.path.join(kdir, "Makefile")):
            raise ModuleFailure(
                f"the kernel headers for {release} are missing ({kdir} has no Makefile): "
                f"run the kernel_headers role first",
                **result,
            )
        make = ["make", "-C", kdir, f"M={p['src']}", f"VARIANT={variant}"]
        started = time.monotonic()
        system.run([*make, "clean"])
        rc, out, err = system.run([*make, "modules"])
        output = f"{out}\n{err}"
        if rc != 0:
            lines = compiler_lines(output) or output.strip().splitlines()[-15:]
            raise ModuleFailure(
                f"building the {variant} variant of {name}.ko for {release} failed:\n" + "\n".join(lines),
                compiler_lines=lines,
                **result,
            )
        result["compiled"][variant] = round(time.monotonic() - started, 1)
        if variant == p["variant"]:
            result["warnings_lines"] = compiler_lines(output, WARNING_RE)
        cached = cached_ko(cache, release, build_stamp(sources, variant, release))
        with failing_on_os_error(f"keeping the {variant} build in the build cache ({cached})"):
            copy_atomically(os.path.join(p["src"], f"{name}.ko"), cached)
            if p["export_builds"]:
                with open(cached, "rb") as handle:
                    exported[os.path.basename(cached)] = base64.b64encode(handle.read()).decode("ascii")
        return cached

    exported: dict[str, str] = {}
    if not check_mode:
        if built:
            cached = cached_ko(cache, release, stamp)
            if from_cache:
                with failing_on_os_error(f"marking {cached} as used"):
                    os.utime(cached)  # used now: the pruning keeps the most recently used builds
            else:
                cached = compile_into_cache(p["variant"])
            with failing_on_os_error(f"installing {ko}"):
                copy_atomically(cached, ko)
            system.run(["depmod", "-a", release], check_rc=True)
            with failing_on_os_error(f"writing the build's stamp {stamp_file}"):
                write_file(stamp_file, f"{stamp}\n".encode())
        for variant in to_cache:
            compile_into_cache(variant)
        if built or to_cache or imported:
            with failing_on_os_error(f"pruning the build cache {os.path.join(cache, release)}"):
                prune_cache(os.path.join(cache, release))
    if p["export_builds"]:
        result["exported_builds"] = exported
    exists = os.path.exists(ko)
    result["version"] = modinfo_field(system, ko, "version") if exists else ""
    result["srcversion"] = modinfo_field(system, ko, "srcversion") if exists else ""
    result["reload_needed"] = reload_needed(
        os.path.isdir(sysfs),
        (result["loaded_version"], result["loaded_srcversion"]),
        (result["version"], result["srcversion"]),
        built and check_mode,
    )
    return result


def main(system: System | None = None) -> None:
    execute(make_module(), run, system)


if __name__ == "__main__":
    main()
