"""Browser tests: the status page in headless Chromium (Debian packages chromium and chromium-driver, and
selenium). Skipped, saying what is missing, on a machine without them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The page helper (shared with the molecule scenarios' tests) and the report module that renders pages.
for directory in (REPO_ROOT / "molecule/resources/tests", REPO_ROOT / "roles/lab_status/library"):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))

from status_page import missing_tools  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = missing_tools()
    if missing:
        skip = pytest.mark.skip(reason="headless Chromium not available, missing: " + ", ".join(missing))
        for item in items:
            item.add_marker(skip)
