"""The licence the project states is the one its files carry: LICENSE (GPL-3.0-or-later) for the
Ansible content and tools, files/chardev/LICENSE (GPL-2.0) for the kernel module, which the kernel
requires to be GPL-compatible (MODULE_LICENSE("GPL"))."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEADER = "# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)"
SHIPPED_PYTHON = sorted(
    path
    for pattern in (
        "plugins/*/*.py",
        "roles/*/files/*.py",
        "tools/*.py",
    )
    for path in REPO.glob(pattern)
)


def test_license_files_are_the_gpl_texts() -> None:
    assert "GNU GENERAL PUBLIC LICENSE\n                       Version 3" in (REPO / "LICENSE").read_text()
    assert (
        "GNU GENERAL PUBLIC LICENSE\n                       Version 2"
        in (REPO / "files/chardev/LICENSE").read_text()
    )


@pytest.mark.parametrize("path", SHIPPED_PYTHON, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_python_file_carries_the_header(path: Path) -> None:
    assert HEADER in path.read_text().splitlines()[:4], f"{path}: no GPL-3.0-or-later header"


@pytest.mark.parametrize("meta", sorted(REPO.glob("roles/*/meta/main.yml")), ids=lambda p: p.parts[-3])
def test_every_role_states_the_project_license(meta: Path) -> None:
    assert yaml.safe_load(meta.read_text())["galaxy_info"]["license"] == "GPL-3.0-or-later"


def test_the_kernel_module_is_gpl_2() -> None:
    source = (REPO / "files/chardev/chardev.c").read_text()
    assert source.startswith("// SPDX-License-Identifier: GPL-2.0\n")
    assert 'MODULE_LICENSE("GPL");' in source
