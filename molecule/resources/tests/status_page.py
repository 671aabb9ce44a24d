"""Read the lab's status page (.lab/status/index.html) the way a person sees it: in headless Chromium.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` package. The driver and the
browser are taken from PATH (/usr/bin/chromedriver, /usr/bin/chromium) and given to selenium by path,
so Selenium Manager never tries to download anything: the page must open with no network at all.

    rows = read_status_page(".lab/status/index.html")
    # [{"host": "lab-vm-1", "state": "crashed", "cells": {"kernel": "6.1.0-56-amd64", ...},
    #   "background": "rgb(251, 225, 223)"}, ...]
    screenshot(".lab/status/index.html", "status.png")
"""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900")
PAGE_LOAD_TIMEOUT = 30
#: Width of the window a screenshot is taken in (its height is the page's).
SCREENSHOT_WIDTH = 1400


def missing_tools() -> list[str]:
    """What is missing to drive Chromium: the Debian packages and the Python package, by name."""
    missing = [package for package, program in (("chromium", "chromium"), ("chromium-driver", "chromedriver"))
               if shutil.which(program) is None]  # fmt: skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return missing


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver, always quit at the end."""
    from selenium import webdriver

    missing = missing_tools()
    if missing:
        raise RuntimeError("cannot start headless Chromium, missing: " + ", ".join(missing))
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=str(shutil.which("chromedriver")))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, path: str | Path) -> None:
    page = Path(path).resolve()
    if not page.is_file():
        raise FileNotFoundError(page)
    driver.get(page.as_uri())


def read_status_page(path: str | Path) -> list[dict[str, Any]]:
    """Every host row of the page, in order: its data-host, its data-state, the visible text of each
    data-key cell (as the browser renders it, lines joined by "\\n") and the row's computed background
    colour (an "rgb(...)"/"rgba(...)" string)."""
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        _open(driver, path)
        rows = []
        for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-host]"):
            rows.append(
                {
                    "host": row.get_attribute("data-host"),
                    "state": row.get_attribute("data-state"),
                    "cells": {
                        cell.get_attribute("data-key"): cell.text
                        for cell in row.find_elements(By.CSS_SELECTOR, "td[data-key]")
                    },
                    "background": row.value_of_css_property("background-color"),
                }
            )
        return rows


def screenshot(path: str | Path, png: str | Path) -> Path:
    """A PNG of the whole page, beyond the window's height (DevTools protocol); returns its path."""
    with chromium() as driver:
        _open(driver, path)
        driver.set_window_size(SCREENSHOT_WIDTH, 900)
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        # The content size is at least the window's; a short page ends where its body ends.
        body = driver.execute_script("return Math.ceil(document.body.getBoundingClientRect().bottom)")
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], body), "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        target = Path(png)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target
