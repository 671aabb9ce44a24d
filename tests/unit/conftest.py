"""Shared pytest setup for the unit tests of the collection's plugins (interim: the tests move to
tests/unit/plugins/<type>/ and import the collection by its package name)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

for directory in ("plugins/modules", "plugins/module_utils", "plugins/inventory"):
    if str(REPO_ROOT / directory) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / directory))
