"""The operator console in headless Chromium, served by a running demo, updating live.

The shortest real demo (the field at 24x, two paired seeds over 5 minutes, no
screening, no video, no metrics endpoint) is started with ``--console-port``;
the page is loaded once, before the first cycle ends, and must then show the
cycle without a reload: a row with its stage times and the gate's decision, the
network map with every intersection, the controllers' health. A screenshot of
the whole page is saved (to ``$SIGNALTWIN_CONSOLE_SCREENSHOT`` as well when set:
that is how ``docs/img/console.png`` is made).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.settings_file import dump_settings_toml, load_settings
from controller.demo import default_demo_config
from tests.support.browser import HeadlessChromium, needs_chromium, open_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_chromium]

CLI = [sys.executable, "-c", "from controller.cli import main; main()"]
STATUSES = {"changed-latest", "changed-earlier", "unchanged"}
FIRST_ROW = "#cycles details.cycle summary.cycle-row:not([data-kind='skipped'])"
#: what the newest cycle row shows, read in one go (the page redraws as data arrive)
READ_ROW = f"""
const row = document.querySelector({FIRST_ROW!r});
return {{
  stages: row.querySelector(".stage-text").textContent,
  segments: row.querySelectorAll(".stage-bar .stage").length,
  decision: row.querySelector(".decision").textContent,
  total: row.querySelector(".total").textContent,
  intervals: row.querySelectorAll("svg.strip rect.interval").length,
}};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quick_config(tmp_path: Path) -> Path:
    """The demo's settings, with the cheapest what-if that still runs the whole cycle."""
    settings = load_settings(default_demo_config())
    quick = settings.model_copy(
        update={
            "simulation": settings.simulation.model_copy(
                update={
                    "seeds": 2,
                    "horizon_s": 300,
                    "warmup_s": 60,
                    "candidates": 2,
                    "screen_candidates": 0,
                    "surrogate": None,
                }
            ),
            "video": settings.video.model_copy(update={"enabled": False}),
        }
    )
    path = tmp_path / "quick-demo.toml"
    path.write_text(dump_settings_toml(quick), encoding="utf-8")
    return path


class Demo:
    """``signaltwin demo`` in a child process, its output collected as it comes."""

    def __init__(self, argv: list[str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                time.sleep(0.5)  # let the reader drain
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + self.output())

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C does: a graceful stop
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        code = self.process.wait(timeout=30)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Demo, int]]:
    port = _free_port()
    running = Demo(
        [
            *CLI,
            "demo",
            "--config",
            str(_quick_config(tmp_path)),
            "--state-dir",
            str(tmp_path / "demo"),
            # a bound only: the test stops the demo (SIGINT) once it has seen enough,
            # and the page must not lose its server while it is being checked
            "--cycles",
            "30",
            "--speed",
            "24",
            "--no-video",
            "--metrics-port",
            "0",
            "--console-port",
            str(port),
        ]
    )
    try:
        yield running, port
    finally:
        running.stop()


def _cycle_rows(browser: HeadlessChromium) -> int:
    count: int = browser.driver.execute_script(
        f"return document.querySelectorAll({FIRST_ROW!r}).length;"
    )
    return count


def test_the_console_shows_each_cycle_live(demo: tuple[Demo, int], tmp_path: Path) -> None:
    process, port = demo
    url = process.wait_for_line(r"operator console: (http://127\.0\.0\.1:\d+/)", 120).group(1)
    assert url == f"http://127.0.0.1:{port}/"
    with open_chromium(tmp_path / "chromium", window=(1400, 1400), timeout_s=60) as browser:
        browser.load(url)
        browser.wait_for("#connection[data-state='live']")
        # a mark that a reload would wipe: the cycle must arrive over the live stream
        browser.driver.execute_script("window.__loadedOnce = true;")
        assert "signaltwin" in browser.driver.title
        assert not _cycle_rows(browser), "the page was loaded after the first cycle"

        browser.wait_for(FIRST_ROW, 150)
        assert browser.driver.execute_script("return window.__loadedOnce === true;")
        process.wait_for_line(r"^cycle 1: (?!started)", 10)
        time.sleep(3)  # the ledger's record and the daemon's report may arrive a poll apart

        # the cycle row: slot, the gate's decision, the stage times and the total
        row = browser.driver.execute_script(READ_ROW)
        # stages under 0.05 s are not shown (observe often is, on a fast machine)
        assert re.search(r"whatif \d+\.\ds", row["stages"]), row
        assert row["segments"] >= 2, row
        assert re.match(r"gate (passed|refused)|failed in", row["decision"]), row
        assert re.fullmatch(r"\d+\.\d s", row["total"]), row
        assert row["intervals"] == 1, row  # the calm visual: one interval strip
        # the candidates with their intervals, on demand
        browser.driver.execute_script(f"document.querySelector({FIRST_ROW!r}).click();")
        candidates = browser.wait_for("#cycles details.cycle[open] table.candidates tbody")
        text = candidates.text
        assert "…" in text and "%" in text and re.search(r"pass|refuse_", text), text

        # the map: every intersection of the district, coloured by its plan
        markers = browser.find_all("#map circle.tls")
        assert len(markers) == 47
        assert {m.get_attribute("data-status") for m in markers} <= STATUSES
        markers[0].click()
        detail = browser.wait_for("#map-detail").text
        assert re.match(r"n\d\d: plan", detail), detail

        # the controllers' health from the cycle's observation
        health = browser.wait_for("#health-summary").text
        assert re.fullmatch(r"\d+ of 47 controllers answering \(cycle .+\)", health), health
        assert len(browser.find_all("#health-grid .controller")) == 47

        assert browser.console_errors() == []
        # later cycles arrive live too; give one the chance to deploy, for a fuller picture
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not browser.find_all("#deployments .deployment"):
            time.sleep(1)
        browser.driver.execute_script(
            "for (const d of document.querySelectorAll('#cycles details[open]')) d.open = false;"
        )
        assert process.process.poll() is None, "the demo ended under the page"
        shot = browser.screenshot(tmp_path / "console.png", browser.wait_for("body"))
        assert browser.console_errors() == []
    target = os.environ.get("SIGNALTWIN_CONSOLE_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    assert process.stop() in (0, 1), process.output()
