"""Headless Chromium for browser tests: a driver context manager, a pytest fixture, and screenshots.

Uses the system's Chromium and chromedriver (Debian: ``apt-get install -y chromium chromium-driver``) through
Selenium with explicit paths, so Selenium Manager never tries to download a browser or a driver. Override the
paths with ``VLMRL_CHROMIUM`` and ``VLMRL_CHROMEDRIVER``. When something is missing the test FAILS with what to
install: these tests run in CI, and a silent skip would hide a broken setup.

Reuse in another test module, either with the context manager::

    from vlmrl_pipeline_tests.browser import chrome_driver, save_screenshot

    @pytest.mark.browser
    def test_something():
        with chrome_driver() as driver:
            driver.get(url)
            save_screenshot(driver, "something")

or with the module-scoped ``browser`` fixture, made visible to every test by importing it into
``conftest.py`` (``from vlmrl_pipeline_tests.browser import browser  # noqa: F401``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHROMIUM = "/usr/bin/chromium"
DEFAULT_CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW_SIZE = (1366, 900)

_INSTALL_HINT = (
    "Browser tests need Chromium, chromedriver and Selenium. On Debian/Ubuntu: "
    "`apt-get install -y chromium chromium-driver` and `pip install selenium`; elsewhere point VLMRL_CHROMIUM "
    "and VLMRL_CHROMEDRIVER at a Chromium binary and the chromedriver of the same version."
)


def chromium_path() -> str:
    """The Chromium binary the tests use (``VLMRL_CHROMIUM`` or /usr/bin/chromium)."""
    return os.environ.get("VLMRL_CHROMIUM", DEFAULT_CHROMIUM)


def chromedriver_path() -> str:
    """The chromedriver the tests use (``VLMRL_CHROMEDRIVER`` or /usr/bin/chromedriver)."""
    return os.environ.get("VLMRL_CHROMEDRIVER", DEFAULT_CHROMEDRIVER)


def missing_requirements() -> list[str]:
    """What is missing for a browser test, in words; empty when everything is there."""
    missing = []
    for what, path in (("Chromium", chromium_path()), ("chromedriver", chromedriver_path())):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            missing.append(f"{what} at {path}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    return missing


def require_browser() -> None:
    """Fail the current test (not skip it) with an install hint when the browser setup is incomplete."""
    missing = missing_requirements()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}. {_INSTALL_HINT}", pytrace=False)


@contextlib.contextmanager
def chrome_driver(window_size: tuple[int, int] = WINDOW_SIZE, lang: str = "en-US") -> Iterator:
    """A headless Chromium WebDriver, quit on exit. Fails the test with an install hint when one is missing."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={window_size[0]},{window_size[1]}", f"--lang={lang}",
                     "--no-first-run", "--no-default-browser-check", "--disable-extensions"):
        options.add_argument(argument)
    # With an explicit driver path Selenium never runs Selenium Manager (which would try to download one).
    service = Service(executable_path=chromedriver_path())
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium per test module (starting one costs about a second)."""
    with chrome_driver() as driver:
        yield driver


def artifacts_dir() -> Path:
    """Where screenshots go: ``VLMRL_TEST_ARTIFACTS``, or ``<repo>/test-artifacts``. Created when missing."""
    folder = Path(os.environ.get("VLMRL_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(driver, name: str, full_page: bool = False) -> Path:
    """Save a PNG of the page as ``<artifacts>/<name>.png`` and return its path.

    ``full_page`` captures the whole document rather than the window (Chromium's DevTools protocol), for long
    pages such as the report. The name is reduced to letters, digits, ``-``, ``_`` and ``.`` so any test id
    makes a valid file name.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "screenshot"
    path = artifacts_dir() / f"{safe}.png"
    if full_page:
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                      {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(shot["data"]))
    elif not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the browser could not write a screenshot to {path}")
    return path
