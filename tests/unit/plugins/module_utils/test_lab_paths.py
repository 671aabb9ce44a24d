"""plugins/module_utils/lab_paths.py: the one rule for a name that becomes a path component on the
control node (host names: results/<host>.json, vms/<host>, accounts/<host>.json)."""

from __future__ import annotations

import pytest
from ansible_collections.chardev_lab.lab.plugins.module_utils.lab_paths import (
    PATH_COMPONENT_MAX,
    path_component_problem,
)


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "lab-vm-1",
        "pc-01.classroom.example.org",
        "192.0.2.13",
        "_x",
        "A_b-c.d",
        "x" * PATH_COMPONENT_MAX,
    ],
)
def test_safe_names(name: str) -> None:
    assert path_component_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../../x", "it holds '/'"),
        ("..", "it starts with '.'"),
        (".", "it starts with '.'"),
        (".ssh", "it starts with '.'"),
        ("-o", "it starts with '-'"),
        ("a..b", "it holds '..'"),
        ("a/b", "it holds '/'"),
        ("a\\b", "it holds '\\\\'"),
        ("a\nb", "it holds '\\n'"),
        ("a b", "it holds ' '"),
        ("caf\u00e9", "it holds '\u00e9'"),
        ("[::1]", "it holds ':' '[' ']'"),
        ("x" * (PATH_COMPONENT_MAX + 1), f"it is {PATH_COMPONENT_MAX + 1} characters long, more than 63"),
        ("", "it is empty"),
        (None, "it is empty"),
        (42, "it is not text (int)"),
    ],
)
def test_unsafe_names_say_why(name: object, why: str) -> None:
    problem = path_component_problem(name)
    assert problem is not None and problem.startswith(why), problem
