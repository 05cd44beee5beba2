"""The audit report's push results as an auditor sees them, in headless Chromium.

A signed ledger with the push rows the OPC UA pool writes: one deployment that
reached all 47 controllers, one that three controllers did not take (one of
them with an id and a message full of HTML), one refused cycle. The report is
written by ``signaltwin audit report --pubkey`` and looked at in the browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.cli import run
from controller.ledger import Ledger
from tests.support.browser import HeadlessChromium, needs_chromium, open_chromium
from tests.support.ledgerdata import (
    FakeClock,
    add_cycle,
    controller_ids,
    pool_push,
    write_pubkey,
)
from tests.support.softkeys import SoftwareSigner

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_chromium]

FLEET = controller_ids(47)
EVIL_ID = "n99<script>window.__pwned = 1</script>"
EVIL_MESSAGE = '<img src="x" onerror="window.__pwned = 2">refused'
COLUMNS = ["controller", "stage", "activate", "read-back", "message"]


def _failing_push(sequence: int, digest: str) -> dict[str, Any]:
    refused = {"n07": (13, "sequence mismatch"), EVIL_ID: (2, EVIL_MESSAGE)}
    return pool_push(sequence, digest, [*FLEET, EVIL_ID], refused=refused, unread=("n12",))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("browser-report")
    signer = SoftwareSigner()
    with Ledger.open(d / "ledger.sqlite", signer=signer, clock=FakeClock()) as ledger:
        ledger.enrol_key(signer)
        good = add_cycle(ledger, signer, 1, push=lambda s, g: pool_push(s, g, FLEET))
        bad = add_cycle(ledger, signer, 2, push=_failing_push, measured_wait=None)
        add_cycle(ledger, signer, 3, deploy=False)
        ledger.checkpoint(signer)
    out = d / "report.html"
    code = run(
        [
            "audit",
            "report",
            "--ledger",
            str(d / "ledger.sqlite"),
            "--pubkey",
            str(write_pubkey(signer, d / "pub.pem")),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return {"path": out, "good": good["deployment"], "bad": bad["deployment"]}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadlessChromium]:
    with open_chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def _cells(browser: HeadlessChromium, section: Any) -> list[list[str]]:
    """The push table's body rows as the text each cell holds (shown or not)."""
    rows: list[list[str]] = browser.driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll('table.push-table tbody tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent));",
        section,
    )
    return rows


def test_a_push_to_47_controllers_is_one_folded_line_that_opens_into_rows(
    report: dict[str, Any], browser: HeadlessChromium, tmp_path: Path
) -> None:
    browser.load(report["path"].as_uri())
    section = browser.wait_for(f"#deployment-{report['good']}")
    details = browser.find_all("details.push-results", section)
    assert len(details) == 1
    fold = details[0]
    summary = browser.find_all("summary", fold)[0]
    assert fold.get_attribute("open") is None
    assert summary.text == "47 controllers: all staged, activated and read back"
    rows = browser.find_all("table.push-table tbody tr", fold)
    assert len(rows) == 47
    assert not any(r.is_displayed() for r in rows)

    summary.click()
    assert fold.get_attribute("open") is not None
    assert all(r.is_displayed() for r in rows)
    header = [th.text for th in browser.find_all("table.push-table thead th", fold)]
    assert header == COLUMNS
    shown = [[td.text for td in browser.find_all("td", r)] for r in rows[:3]]
    assert shown[0] == [
        "n01",
        "OK",
        "OK",
        "plan 1",
        "activate: plan 1 active from field time 5060.0",
    ]
    cells = _cells(browser, section)
    assert all(len(r) == len(COLUMNS) for r in cells)
    ids = [r[0] for r in cells]
    assert ids == sorted(FLEET)
    browser.screenshot(tmp_path / "push-all-ok.png", section)

    every_cell: list[str] = browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('td, th, summary')).map(e => e.textContent);"
    )
    assert not [t for t in every_cell if "{" in t or "': " in t]  # no dict reprs anywhere
    assert browser.console_errors() == []


def test_controllers_that_did_not_take_the_plan_come_first_with_html_inert(
    report: dict[str, Any], browser: HeadlessChromium, tmp_path: Path
) -> None:
    browser.load(report["path"].as_uri())
    section = browser.wait_for(f"#deployment-{report['bad']}")
    fold = browser.find_all("details.push-results", section)[0]
    assert fold.get_attribute("open") is not None
    summary = browser.find_all("summary", fold)[0].text
    assert summary == (
        f"48 controllers: 3 did not take the plan (n07, n12, {EVIL_ID}); "
        "45 staged, activated and read back"
    )
    rows = browser.find_all("table.push-table tbody tr", fold)
    assert len(rows) == 48 and all(r.is_displayed() for r in rows)
    cells = _cells(browser, section)
    assert [r[0] for r in cells[:4]] == ["n07", "n12", EVIL_ID, "n01"]
    n07, n12, evil = cells[:3]
    assert evil[2] == "BAD_SIGNATURE (status 2)" and evil[4] == f"activate: {EVIL_MESSAGE}"
    assert n07[2:4] == ["SEQUENCE_MISMATCH (status 13)", "plan 1 (expected 2)"]
    assert n12[3] == "not read back" and "read-back timed out" in n12[4]
    failed = browser.find_all("tr.push-failed", fold)
    assert len(failed) == 3
    assert browser.find_all("td.bad", failed[1])  # shown in red
    # the controller's HTML stayed text: no element was made from it, no script ran
    assert not browser.find_all("table.push-table script, table.push-table img")
    assert browser.driver.execute_script("return window.__pwned === undefined") is True
    browser.screenshot(tmp_path / "push-failed.png", section)
    assert browser.console_errors() == []
