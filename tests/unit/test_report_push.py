"""The audit report reads well: push results and gate decision as tables, units, no reprs."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.ledger import Ledger, build_report, verify_ledger
from controller.ledger.push_rows import read_push
from controller.ledger.report_gate import gate_section
from controller.ledger.report_push import push_section
from hsm.verify import load_public_key
from tests.support.ledgerdata import FakeClock, add_cycle, controller_ids, pool_push
from tests.support.softkeys import SoftwareSigner

DIGEST = "4d" * 32
#: the only tags the push section writes itself
OWN_TAGS = {"p", "span", "details", "summary", "table", "thead", "tbody", "tr", "th", "td"}


class _Page(HTMLParser):
    """The push section as a person sees it: details state, summary, table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.details_open: list[bool] = []
        self.summary = ""
        self.rows: list[list[tuple[str, str]]] = []
        self._in: str | None = None
        self._cell: list[str] = []
        self._cls = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "details":
            self.details_open.append("open" in a)
        elif tag == "summary":
            self._in = "summary"
        elif tag == "tr" and self._in != "thead":
            self.rows.append([])
        elif tag == "thead":
            self._in = "thead"
        elif tag == "td":
            self._in, self._cell, self._cls = "td", [], a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.rows:
            self.rows[-1].append(("".join(self._cell), self._cls))
            self._in = None
        elif tag in ("summary", "thead"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "summary":
            self.summary += data
        elif self._in == "td":
            self._cell.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.rows = [r for r in page.rows if r]
    return page


def deployment(push: Any, sequence: int = 7) -> dict[str, Any]:
    return {"sequence": sequence, "config_digest": DIGEST, "push": push}


def test_47_controllers_that_all_took_the_plan_fold_into_one_line() -> None:
    body = deployment(pool_push(7, DIGEST, controller_ids(47)))
    html = push_section(body)
    page = parse(html)
    assert page.details_open == [False]
    assert page.summary == "47 controllers: all staged, activated and read back"
    assert len(page.rows) == 47 and all(len(r) == 5 for r in page.rows)
    ids = [r[0][0] for r in page.rows]
    assert ids == sorted(ids) and ids[0] == "n01"
    assert page.rows[0][1:4] == [("OK", "ok"), ("OK", "ok"), ("plan 7", "ok")]
    assert not any("{" in text or "'" in text for row in page.rows for text, _ in row)
    assert 'Push: <span class="ok">ok</span> — outcome activated' in html
    assert "activation at field time 5060.0 s" in html
    assert "took 0.72 s (stage 0.21 s, activate 0.41 s, read-back 0.10 s)" in html


def test_failed_controllers_come_first_and_the_table_is_open() -> None:
    refused = {"n31": (14, "activation time is in the past"), "n07": (13, "sequence mismatch")}
    body = deployment(pool_push(7, DIGEST, controller_ids(47), refused=refused, unread=("n12",)))
    page = parse(push_section(body))
    assert page.details_open == [True]
    assert page.summary == (
        "47 controllers: 3 did not take the plan (n07, n12, n31); "
        "44 staged, activated and read back"
    )
    assert [r[0][0] for r in page.rows[:4]] == ["n07", "n12", "n31", "n01"]
    n07, n12 = page.rows[0], page.rows[1]
    assert n07[2] == ("SEQUENCE_MISMATCH (status 13)", "bad")
    assert n07[3] == ("plan 6 (expected 7)", "bad")
    assert "activate: sequence mismatch" in n07[4][0]
    assert n12[3] == ("not read back", "bad")
    assert "error: read-back timed out after 2.0 s" in n12[4][0]
    assert all(r[3] == ("plan 7", "ok") for r in page.rows[3:])


def test_a_status_name_is_shown_with_its_code() -> None:
    body = deployment(pool_push(7, DIGEST, ["J1"], refused={"J1": (13, "no")}))
    (row,) = read_push(body).rows
    assert row.activate.text == "SEQUENCE_MISMATCH (status 13)" and row.activate.state == "failed"


def test_the_lockstep_evaluation_s_rows_say_read_back_was_not_recorded() -> None:
    ok = {"status": 0, "status_name": "OK", "message": "done"}
    push = {
        "ok": True,
        "message": "",
        "results": {
            "controllers": {"B": {"stage": ok, "activate": ok}, "A": {"stage": ok, "activate": ok}}
        },
    }
    page = parse(push_section(deployment(push)))
    assert page.details_open == [False]
    assert page.summary == "2 controllers: all staged and activated (no read-back recorded)"
    assert [r[0][0] for r in page.rows] == ["A", "B"]
    assert page.rows[0][3] == ("not recorded", "muted")

    refused = {"status": 2, "status_name": "BAD_SIGNATURE", "message": "signature"}
    aborted = {"status": 0, "status_name": "OK", "message": "aborted"}
    push = {
        "ok": False,
        "message": "staging refused at 2 controller(s): A, C",
        "results": {
            "controllers": {
                "A": {"stage": refused},
                "B": {"stage": ok, "abort": aborted},
                "C": {"error": "no controller for this light"},
            }
        },
    }
    page = parse(push_section(deployment(push)))
    assert page.details_open == [True]
    assert page.summary == "3 controllers: none took the plan (A, B, C)"
    a, b, c = page.rows
    assert a[1] == ("BAD_SIGNATURE (status 2)", "bad") and a[2] == ("not attempted", "muted")
    assert b[1] == ("OK", "ok") and b[2] == ("not attempted", "muted")
    assert "abort: aborted" in b[4][0]
    assert c[1] == ("not staged", "bad") and "no controller for this light" in c[4][0]


def test_a_push_settled_by_read_back_shows_what_each_controller_runs() -> None:
    rows = [
        {
            "tls_id": "J2",
            "reachable": False,
            "readback": {"sequence": 0, "digest": ""},
            "abort": None,
            "error": "timeout",
            "state": "unreachable",
        },
        {
            "tls_id": "J1",
            "reachable": True,
            "readback": {"sequence": 7, "digest": DIGEST},
            "abort": None,
            "error": None,
            "state": "activated",
        },
        {
            "tls_id": "J3",
            "reachable": True,
            "readback": {"sequence": 6, "digest": "aa"},
            "abort": {"status": 0, "message": "dropped"},
            "error": None,
            "state": "aborted",
        },
    ]
    push = {
        "ok": False,
        "message": "read back: partial",
        "results": {"sequence": 7, "digest": DIGEST, "outcome": "partial", "controllers": rows},
    }
    page = parse(push_section(deployment(push)))
    assert page.summary == "3 controllers: 2 did not take the plan (J2, J3); 1 read back"
    j2, j3, j1 = page.rows
    assert j1[1] == ("not recorded (interrupted)", "muted") and j1[3] == ("plan 7", "ok")
    assert j2[3] == ("unreachable", "bad") and "error: timeout" in j2[4][0]
    assert j3[3] == ("plan 6 (expected 7)", "bad")
    assert "read back at start-up: aborted; abort: dropped" in j3[4][0]


def test_a_push_that_raised_and_older_records_read_without_reprs() -> None:
    raised = {"ok": False, "message": "push raised TimeoutError: x", "results": {"error": "boom"}}
    html = push_section(deployment(raised))
    assert "<details" not in html
    assert "failed</span> — push raised TimeoutError: x; error: boom" in html
    older = [{"intersection": "J1", "ok": True, "status": "Good", "message": "staged"}]
    page = parse(push_section(deployment(older)))
    assert page.summary == "1 controller: all reported OK"
    assert page.rows[0][4][0] == "staged; status: Good"
    fake = {"ok": True, "message": "", "results": {"J1": {"status": 7}}}
    page = parse(push_section(deployment(fake)))
    assert (
        page.summary == "1 controller: none took the plan (J1)"
        and page.rows[0][4][0] == "status: 7"
    )
    assert push_section(deployment(None)) == "<p>No push results recorded.</p>"


def test_html_in_controller_ids_and_messages_is_rendered_inert() -> None:
    evil_id = "<script>alert(1)</script>"
    evil_message = '<img src=x onerror="alert(2)">'
    body = deployment(pool_push(7, DIGEST, ["J1", evil_id], refused={evil_id: (2, evil_message)}))
    html = push_section(body)
    page = parse(html)
    assert set(page.tags) <= OWN_TAGS  # no script, no img
    assert "<script>" not in html and "<img" not in html
    assert page.rows[0][0][0] == evil_id
    assert f"activate: {evil_message}" in page.rows[0][4][0]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "ok",
        "message",
        "results",
        "controllers",
        "stage",
        "activate",
        "readback",
        "abort",
        "status",
        "name",
        "sequence",
        "digest",
        "error",
        "state",
        "tls_id",
        "latency_s",
        "total",
    ]
)
_shaped = st.recursive(
    _json, lambda inner: st.dictionaries(_keys, inner, max_size=5), max_leaves=30
)


@settings(max_examples=200, deadline=None)
@given(push=_shaped, sequence=st.none() | st.integers())
def test_any_recorded_push_renders_escaped_without_raising(push: Any, sequence: Any) -> None:
    html = push_section({"sequence": sequence, "config_digest": DIGEST, "push": push})
    assert set(parse(html).tags) <= OWN_TAGS


def test_the_gate_decision_shows_thresholds_and_each_verdict_with_units() -> None:
    cycle = {
        "gate": {
            "basis": "confidence_bound",
            "chosen": "policy",
            "decision": "pass",
            "verdicts": [
                {
                    "candidate": "policy",
                    "verdict": "pass",
                    "reasons": ["wait ok", "NOx ok"],
                    "wait_reduction_used": 0.4878,
                    "nox_increase_used": -0.1048,
                },
                {
                    "candidate": "<b>webster</b>",
                    "verdict": "refuse_wait",
                    "reasons": ["too little"],
                    "wait_reduction_used": -5.857,
                    "nox_increase_used": 0.5118,
                },
            ],
        },
        "gate_settings": {
            "confidence_level": 0.95,
            "decide_on": "confidence_bound",
            "max_nox_increase": 0.008,
            "min_wait_reduction": 0.12,
        },
    }
    html = gate_section(cycle)
    assert (
        "Thresholds: wait reduction ≥ 12.0 % and NOx change &lt; +0.80 %, on the pessimistic"
        in html
    )
    page = parse(html)
    assert [c[0] for c in page.rows[0][:4]] == ["policy (chosen)", "pass", "48.8 %", "-10.5 %"]
    assert page.rows[1][0][0] == "<b>webster</b>"
    assert page.rows[1][1] == ("refused: wait reduction below the threshold", "bad")
    assert page.rows[1][2:4] == [("-585.7 %", ""), ("+51.2 %", "")]
    assert gate_section(None) == "<p>No cycle record found for this deployment.</p>"
    older = gate_section({"gate": {"decision": "refuse", "reasons": ["wait -5 %"]}})
    assert (
        'Gate decision: <span class="bad">refuse</span>' in older and "<li>wait -5 %</li>" in older
    )


def test_the_whole_report_reads_without_reprs_and_with_units(tmp_path: Path) -> None:
    signer = SoftwareSigner()
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, signer=signer, clock=FakeClock()) as ledger:
        ledger.enrol_key(signer)
        first = add_cycle(ledger, signer, 1, push=lambda s, g: pool_push(s, g, controller_ids(47)))
        second = add_cycle(ledger, signer, 2, measured_wait=None)
        ledger.append(
            "measured_delta",
            {
                "deployment": second["deployment"],
                "status": "not_measurable",
                "measured": {"status": "not_measurable", "reason": "no readings around the end"},
                "predicted": {"wait_change": -0.2, "wait_ci": [-0.25, -0.15]},
                "window": {"begin_s": 1000.0, "end_s": 1600.0},
            },
        )
        add_cycle(ledger, signer, 3, deploy=False)
        ledger.checkpoint(signer)
    result = verify_ledger(path, [load_public_key(signer.public_key_pem())])
    with Ledger.open(path, readonly=True) as ledger:
        page = build_report(ledger, tmp_path / "r.html", verification=result)
    text = re.sub(r"<(script|style)>.*?</\1>|<[^>]+>", " ", page, flags=re.S)
    assert "{" not in text and "': " not in text
    # the cycle says which deployment pushed its plan; the timeline names records by kind
    assert (
        "cycle cycle-0001: deployed (gate: pass) → deployment record "
        f"{first['deployment']} (deployed)" in text
    )
    assert "deployment of plan sequence 1 (deployed), configuration sha256" in text
    assert f"not measurable for deployment record {second['deployment']}" in text
    # a window that could not be measured says so instead of showing dashes
    assert "not measurable: no readings around the end" in text
    assert "not_measurable" not in text
    assert "-20.0 % (-25.0 … -15.0 %)" in text  # the delta table's interval has its unit
    assert "predicted over a 900 s horizon; seeds 1, 2, 3" in text
    assert "+20 %" in page and "+13%" not in page  # round axis ticks
    assert "verified</span> <span class='mono'>(signed by " in page
    assert (
        "<summary class='ok'>47 controllers: all staged, activated and read back</summary>" in page
    )
    assert "<summary class='ok'>1 controller: all reported OK</summary>" in page
    assert "refused (gate: refuse)" in text  # an older gate verdict, as recorded
