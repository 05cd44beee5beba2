"""Headless Chromium through selenium for tests that check what a person sees in a page.

Debian's ``chromium`` and ``chromium-driver`` (installed by ``scripts/setup.sh
--dev``) and the ``selenium`` dev extra; nothing is downloaded (no Selenium
Manager: both binaries are named). A test module skips itself when they are
missing with :data:`needs_chromium`, and opens one browser per test or module::

    @pytest.fixture(scope="module")
    def browser(tmp_path_factory):
        with open_chromium(tmp_path_factory.mktemp("chromium")) as b:
            yield b

    @needs_chromium
    def test_page(browser, tmp_path):
        browser.load(page.as_uri())
        table = browser.wait_for("table.results")
        ...
        assert browser.console_errors() == []
"""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver as ChromeDriver
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "HeadlessChromium",
    "chromium_missing",
    "needs_chromium",
    "open_chromium",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

#: flags for a container without a GPU, a sandbox or much /dev/shm, and no network chatter
_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
)


def chromium_missing() -> str | None:
    """Why headless Chromium cannot run here (None when it can)."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is missing (scripts/setup.sh --dev installs Debian's {package})"
    return None


needs_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")


class HeadlessChromium:
    """One headless Chromium session: load a URL, wait for an element, read the console.

    Use :func:`open_chromium` rather than building one directly, so that the
    browser and its driver are always shut down.
    """

    def __init__(self, driver: ChromeDriver, timeout_s: float) -> None:
        self.driver = driver
        self.timeout_s = timeout_s

    def load(self, url: str) -> None:
        """Open ``url`` and wait until the document has finished loading."""
        self.driver.get(url)
        self._wait(lambda d: d.execute_script("return document.readyState") == "complete")

    def wait_for(self, css: str, timeout_s: float | None = None) -> WebElement:
        """The first element matching the CSS selector ``css``, once it is in the page.

        Raises:
            AssertionError: nothing matched within the timeout.
        """
        from selenium.webdriver.common.by import By

        found: list[WebElement] = []

        def present(d: WebDriver) -> bool:
            found[:] = d.find_elements(By.CSS_SELECTOR, css)
            return bool(found)

        self._wait(present, timeout_s, f"no element matches {css!r}")
        return found[0]

    def find_all(self, css: str, within: WebElement | None = None) -> list[WebElement]:
        """Every element matching ``css`` (in the page, or inside ``within``)."""
        from selenium.webdriver.common.by import By

        return list((within or self.driver).find_elements(By.CSS_SELECTOR, css))

    def console_logs(self) -> list[dict[str, Any]]:
        """The browser console entries since the last call (``level``, ``message``, …)."""
        entries = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return list(entries)

    def console_errors(self) -> list[str]:
        """The messages of console entries at level SEVERE since the last call."""
        return [str(e.get("message")) for e in self.console_logs() if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path, element: WebElement | None = None) -> Path:
        """Save a PNG of the visible window, or of all of ``element``, to ``path``.

        An element taller than the window is captured whole (through the
        DevTools protocol), not cut at the window's edge. The folder is created.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        if element is None:
            if not self.driver.save_screenshot(str(path)):
                raise AssertionError(f"chromium could not write a screenshot to {path}")
            return path
        clip = self.driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return {x: r.left + window.scrollX, y: r.top + window.scrollY,"
            " width: Math.max(r.width, 1), height: Math.max(r.height, 1), scale: 1};",
            element,
        )
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _wait(self, condition: Any, timeout_s: float | None = None, message: str = "") -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            WebDriverWait(self.driver, limit).until(condition)
        except TimeoutException as e:
            raise AssertionError(f"{message or 'condition not met'} after {limit:g} s") from e


@contextmanager
def open_chromium(
    profile_dir: Path,
    *,
    window: tuple[int, int] = (1280, 1024),
    extra_flags: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> Iterator[HeadlessChromium]:
    """Start headless Chromium with its own profile in ``profile_dir``; quit it on exit.

    Args:
        profile_dir: an empty folder for the browser profile (and the driver's log).
        window: the window size in CSS pixels (what screenshots show).
        extra_flags: more Chromium command-line flags.
        timeout_s: how long :meth:`HeadlessChromium.wait_for` and ``load`` wait.
    """
    reason = chromium_missing()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*_FLAGS, f"--window-size={window[0]},{window[1]}", *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(profile_dir / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(timeout_s)
        yield HeadlessChromium(driver, timeout_s)
    finally:
        driver.quit()
