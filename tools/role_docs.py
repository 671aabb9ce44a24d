# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the "entry points and variables" section of each role's README from its argument spec.

roles/<role>/meta/argument_specs.yml is what Ansible validates every call of the role against, so it is
the one description of the role's inputs. This tool renders it into roles/<role>/README.md, between

  <!-- role_docs: begin ... -->
  <!-- role_docs: end -->

and leaves everything outside those markers (the hand-written purpose, notes, links) as it is. A README
without the markers gets the section appended; a role without a README gets one with a title and the
section. The default of a variable the spec gives no default for is taken from whether
defaults/main.yml sets it (it then says so, without copying the expression).

  python tools/role_docs.py --write     regenerate every role's section
  python tools/role_docs.py --check     exit 1 when any README differs from what --write would write
  python tools/role_docs.py --check --roles-dir roles --role chardev
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BEGIN = (
    "<!-- role_docs: begin. Generated from meta/argument_specs.yml by tools/role_docs.py: edit the spec, "
    "then run `python tools/role_docs.py --write`. -->"
)
END = "<!-- role_docs: end -->"
WIDTH = 105
NBSP = "\u00a0"
_CODE_SPLIT_RE = re.compile(r"(`[^`]*`)")
_BEGIN_RE = re.compile(r"^<!-- role_docs: begin\b.*-->\s*$", re.MULTILINE)
_END_RE = re.compile(r"^<!-- role_docs: end -->\s*$", re.MULTILINE)

# Ansible's documentation markup (ansible-doc's): the forms the specs use, and the common others.
_MARKUP_RE = re.compile(r"\b(C|V|O|RV|E|P|M|I|B|U|L)\(([^()]*)\)")
# Outside code spans: paths, placeholders such as <host>, sysctl names; they are set in code.
_CODE_WORD_RE = re.compile(
    r"(?<![\w`/])("
    r"[A-Za-z_][A-Za-z0-9_.]*=[A-Za-z0-9_.-]*[A-Za-z0-9_]"  # tasks_from=state, restrict=on
    r"|/[A-Za-z0-9_.<>/-]*[A-Za-z0-9_>/]"  # an absolute path, /run/chardev-lab
    r"|(?:[A-Za-z0-9_.<>-]+/)+(?![\w<])"  # a directory: results/, vms/<name>/
    r"|\.lab\b"
    r"|[A-Za-z0-9_.-]*<[A-Za-z0-9_.-]+>(?:[A-Za-z0-9_./<>-]*[A-Za-z0-9_/>])?"  # <host>.check.json
    r"|kernel\.[a-z_]+(?:=[0-9]+)?"  # kernel.panic_on_oops=0
    r"|(?:files|playbooks|roles|plugins|inventory|docs|tools|molecule|tasks|defaults|meta|\.lab)/[\w./<>-]*[\w>]"
    r"|[\w.-]+\.(?:json|html|yml|csv|txt|ko|py)\b"  # status.json, chardev.ko
    r")"
)
# A name with an underscore is a variable, a module or a fact (English words have none): set in code.
_IDENT_RE = re.compile(r"(?<![\w`.<>/-])([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+)(?![\w`<>/-])")


def galaxy_fqcn_prefix(root: Path) -> str:
    """'chardev_lab.lab.' from galaxy.yml (the collection the roles belong to); '' without one."""
    galaxy = root / "galaxy.yml"
    if not galaxy.is_file():
        return ""
    meta = yaml.safe_load(galaxy.read_text(encoding="utf-8")) or {}
    return f"{meta['namespace']}.{meta['name']}." if meta.get("namespace") and meta.get("name") else ""


def _markup(text: str) -> str:
    """Ansible markup to Markdown: C(x), V(x), O(x) ... become code, I() italics, B() bold, L() links."""

    def one(match: re.Match[str]) -> str:
        kind, body = match.group(1), match.group(2)
        if kind == "I":
            return f"*{body}*"
        if kind == "B":
            return f"**{body}**"
        if kind == "U":
            return f"<{body}>"
        if kind == "L":
            label, _comma, url = body.partition(",")
            return f"[{label.strip()}]({url.strip()})"
        return f"`{body}`"

    return _MARKUP_RE.sub(one, text)


def _outside_code(text: str, change: Any) -> str:
    """Apply change() to the parts of text that are not code spans."""
    return "".join(
        p if p.startswith("`") and p.endswith("`") and len(p) > 1 else change(p)
        for p in _CODE_SPLIT_RE.split(text)
    )


def render_text(text: str) -> str:
    """One description as Markdown: markup converted; names, paths and placeholders in code; what is left
    of < > escaped (<host> is not an HTML tag), and | everywhere (the text may go into a table cell)."""
    text = _markup(" ".join(str(text).split()))
    text = _outside_code(text, lambda p: _CODE_WORD_RE.sub(lambda m: f"`{m.group(1)}`", p))
    text = _outside_code(text, lambda p: _IDENT_RE.sub(lambda m: f"`{m.group(1)}`", p))
    text = _outside_code(text, lambda p: p.replace("<", "&lt;").replace(">", "&gt;"))
    return text.replace("|", "\\|")


def _wrap(text: str) -> str:
    """A paragraph filled to WIDTH, never breaking a line inside a code span."""
    glued = _CODE_SPLIT_RE.sub(lambda m: m.group(1).replace(" ", NBSP), text)
    filled = textwrap.fill(glued, width=WIDTH, break_long_words=False, break_on_hyphens=False)
    return filled.replace(NBSP, " ")


def _paragraphs(description: Any) -> list[str]:
    if description is None:
        return []
    if isinstance(description, list):
        return [str(d) for d in description]
    return [str(description)]


def _value(value: Any) -> str:
    """A default or choice as YAML would write it, in code."""
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif value is None:
        shown = "null"
    elif isinstance(value, str):
        # Quoted where YAML would read it as something else: "0644", "", "yes".
        plain = value and value.strip() == value and yaml.safe_load(value) == value and ": " not in value
        shown = value if plain else f'"{value}"'
    else:
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("...").strip()
    return f"`{shown}`"


def _type(option: dict[str, Any]) -> str:
    kind = str(option.get("type", "str"))
    if kind == "list" and option.get("elements"):
        kind = f"list of {option['elements']}"
    if option.get("choices"):
        kind += ": " + ", ".join(_value(c) for c in option["choices"])
    return kind


def _default(name: str, option: dict[str, Any], defaults: dict[str, Any]) -> str:
    if option.get("required"):
        return "**required**"
    if "default" in option:
        return _value(option["default"])
    if name in defaults:
        return "set in [defaults/main.yml](defaults/main.yml)"
    return "unset"


def render_section(role: Path, fqcn_prefix: str = "") -> str:
    """The generated section of one role's README, markers included."""
    spec_file = role / "meta" / "argument_specs.yml"
    specs = (yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}).get("argument_specs") or {}
    defaults_file = role / "defaults" / "main.yml"
    defaults = (
        (yaml.safe_load(defaults_file.read_text(encoding="utf-8")) or {}) if defaults_file.is_file() else {}
    )
    role_name = f"{fqcn_prefix}{role.name}"

    lines = [
        BEGIN,
        "",
        "## Entry points and variables",
        "",
        "Generated from [meta/argument_specs.yml](meta/argument_specs.yml), which Ansible checks every call",
        "of the role against: a wrong type, a value outside the choices or a missing required variable stops",
        "the play before the role runs.",
    ]
    # main first, then the others in the spec's order.
    for entry in sorted(specs, key=lambda e: e != "main"):
        spec = specs[entry] or {}
        title = f"### `{entry}`"
        if spec.get("short_description"):
            title += f": {render_text(spec['short_description'])}"
        lines += ["", title, ""]
        call = f"`include_role` or `import_role` with `name: {role_name}`"
        if entry == "main":
            lines.append(_wrap(f"Called as the role: `roles: [{role_name}]`, or {call}."))
        else:
            lines.append(_wrap(f"Called with {call} and `tasks_from: {entry}`."))
        for paragraph in _paragraphs(spec.get("description")):
            lines += ["", _wrap(render_text(paragraph))]
        options = spec.get("options") or {}
        lines.append("")
        if not options:
            lines.append("No variables.")
            continue
        lines += ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
        for name, option in options.items():
            option = option or {}
            description = "<br>".join(render_text(p) for p in _paragraphs(option.get("description")))
            lines.append(
                f"| `{name}` | {_type(option)} | {_default(name, option, defaults)} | {description} |"
            )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def updated_readme(current: str | None, role: Path, fqcn_prefix: str = "") -> str:
    """The README with its generated section replaced (or appended; or a new README around it)."""
    section = render_section(role, fqcn_prefix)
    if current is None:
        return f"# Role `{fqcn_prefix}{role.name}`\n\n{section}"
    begin, end = _BEGIN_RE.search(current), _END_RE.search(current)
    if begin and end and end.start() > begin.start():
        after = current[end.end() :].lstrip("\n")
        return current[: begin.start()] + section + ("\n" + after if after else "")
    return current.rstrip("\n") + "\n\n" + section


def roles_in(roles_dir: Path, only: list[str] | None = None) -> list[Path]:
    found = sorted(p for p in roles_dir.iterdir() if (p / "meta" / "argument_specs.yml").is_file())
    if only:
        missing = sorted(set(only) - {p.name for p in found})
        if missing:
            raise SystemExit(
                f"no role with meta/argument_specs.yml named {', '.join(missing)} in {roles_dir}"
            )
        found = [p for p in found if p.name in only]
    return found


def stale_readmes(roles_dir: Path, only: list[str] | None = None, root: Path = ROOT) -> list[Path]:
    """The READMEs that --write would change (or create)."""
    prefix = galaxy_fqcn_prefix(root)
    stale = []
    for role in roles_in(roles_dir, only):
        readme = role / "README.md"
        current = readme.read_text(encoding="utf-8") if readme.is_file() else None
        if current != updated_readme(current, role, prefix):
            stale.append(readme)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the variables section of each README")
    mode.add_argument("--check", action="store_true", help="exit 1 when a README is not what --write writes")
    parser.add_argument(
        "--roles-dir", type=Path, default=ROOT / "roles", help="default: the roles/ of this checkout"
    )
    parser.add_argument("--role", action="append", help="only this role (repeatable)")
    args = parser.parse_args(argv)

    root = args.roles_dir.resolve().parent
    if args.check:
        stale = stale_readmes(args.roles_dir, args.role, root)
        for readme in stale:
            print(f"{readme}: out of date with meta/argument_specs.yml (python tools/role_docs.py --write)")
        return 1 if stale else 0

    prefix = galaxy_fqcn_prefix(root)
    for role in roles_in(args.roles_dir, args.role):
        readme = role / "README.md"
        current = readme.read_text(encoding="utf-8") if readme.is_file() else None
        new = updated_readme(current, role, prefix)
        if new != current:
            readme.write_text(new, encoding="utf-8")
            print(f"{readme}: {'written' if current is None else 'updated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
