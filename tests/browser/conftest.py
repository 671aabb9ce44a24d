"""Browser tests: the status page in headless Chromium (Debian packages chromium and chromium-driver, and
selenium). Skipped, saying what is missing, on a machine without them."""

from __future__ import annotations

import pytest

# The page helper, shared with the molecule scenarios' tests (molecule/resources/tests, on pytest's
# pythonpath in pyproject.toml).
from status_page import missing_tools


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = missing_tools()
    if missing:
        skip = pytest.mark.skip(reason="headless Chromium not available, missing: " + ", ".join(missing))
        for item in items:
            item.add_marker(skip)
