"""The audit report's table of measured deltas: predicted, estimated and true, side by side.

One row per ``measured_delta`` record: the deployment and the plan in force,
the window measured, the twin's prediction of approach halting vehicle-seconds
(with its interval), the counterfactual estimate (with its interval), the true
change where evaluation forked the field, and the errors in percentage points;
then one summary line. Records written before windowed measurement (a before/
after interval comparison) are shown with what they have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.ledger.report_charts import ci_bounds, esc, number, sub
from controller.ledger.store import Record

__all__ = [
    "WITHIN_PP",
    "DeltaSummary",
    "measured_delta_section",
    "measured_status",
    "status_text",
    "summarise_deltas",
]

#: an estimate this close to the prediction (or the truth) counts as agreeing
WITHIN_PP = 5.0


@dataclass(frozen=True)
class DeltaSummary:
    """Counts over the measured-delta records of a selection."""

    records: int = 0
    measured: int = 0
    within_pp: int = 0
    superseded: int = 0
    not_measurable: int = 0
    with_truth: int = 0
    estimator_within_pp: int = 0

    def line(self) -> str:
        """One calm sentence for the report."""
        if self.records == 0:
            return "No measured delta in this selection."
        text = (
            f"{self.measured} of {self.records} deployments measured; "
            f"{self.within_pp} of them within {WITHIN_PP:g} pp of the prediction"
        )
        if self.with_truth:
            text += (
                f"; the estimate within {WITHIN_PP:g} pp of the true change in "
                f"{self.estimator_within_pp} of {self.with_truth} forked"
            )
        if self.superseded:
            text += f"; {self.superseded} superseded by a later plan"
        if self.not_measurable:
            text += f"; {self.not_measurable} not measurable"
        return text + "."


def status_text(status: str) -> str:
    """A measured delta's status in words (``not_measurable`` -> ``not measurable``)."""
    return status.replace("_", " ") if status != "?" else "status not recorded"


def measured_status(body: Mapping[str, Any]) -> str:
    """The status of a measured-delta record body (older records: from what they hold)."""
    status = body.get("status")
    if isinstance(status, str):
        return status
    return "measured" if number(sub(body, "measured").get("wait_change")) is not None else "?"


def _estimate(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The estimate; for an older record, its interval comparison."""
    estimated = sub(body, "estimated")
    if estimated:
        return estimated
    measured = sub(body, "measured")
    if body.get("status") is None and number(measured.get("wait_change")) is not None:
        return {
            "wait_change": measured.get("wait_change"),
            "nox_change": measured.get("nox_change"),
            "method": "interval before/after (older record)",
        }
    return {}


def summarise_deltas(records: Iterable[Record]) -> DeltaSummary:
    """Count the measured, agreeing, superseded and unmeasurable deltas."""
    n = measured = within = superseded = unmeasurable = truths = agree = 0
    for r in records:
        if r.kind != "measured_delta":
            continue
        n += 1
        body = r.body
        status = measured_status(body)
        superseded += status == "superseded"
        unmeasurable += status == "not_measurable"
        estimate = number(_estimate(body).get("wait_change"))
        if estimate is None:
            continue
        measured += 1
        predicted = number(sub(body, "predicted").get("wait_change"))
        if predicted is not None and abs(estimate - predicted) * 100 <= WITHIN_PP:
            within += 1
        true = number(sub(body, "true").get("wait_change"))
        if true is not None:
            truths += 1
            agree += abs(true - estimate) * 100 <= WITHIN_PP
    return DeltaSummary(n, measured, within, superseded, unmeasurable, truths, agree)


def _change(data: Mapping[str, Any], key: str, ci_key: str) -> str:
    value = number(data.get(key))
    if value is None:
        return "–"
    ci = ci_bounds(data.get(ci_key))
    text = f"{value * 100:+.1f} %"
    if ci is not None:
        text += f" ({ci[0] * 100:+.1f} … {ci[1] * 100:+.1f} %)"
    return text


def _window(body: Mapping[str, Any]) -> str:
    window = sub(body, "window")
    begin, end = number(window.get("begin_s")), number(window.get("end_s"))
    text = "–" if begin is None or end is None else f"{begin:.0f}–{end:.0f} s"
    if body.get("superseded_by") is not None:
        text += f", cut by plan {body['superseded_by']}"
    return text


def _errors(body: Mapping[str, Any]) -> str:
    errors = sub(body, "errors")
    names = (
        ("estimated_minus_predicted_pp", "est − pred"),
        ("true_minus_predicted_pp", "true − pred"),
        ("true_minus_estimated_pp", "true − est"),
    )
    shown = [
        f"{label} {value:+.1f} pp"
        for key, label in names
        if (value := number(errors.get(key))) is not None
    ]
    if not shown:
        error = number(body.get("wait_error"))
        shown = [] if error is None else [f"est − pred {error * 100:+.1f} pp"]
    return "; ".join(shown) or "–"


def measured_delta_section(records: Iterable[Record]) -> str:
    """The HTML section: heading, the table, the summary line."""
    rows = [r for r in records if r.kind == "measured_delta"]
    summary = summarise_deltas(rows)
    parts = ["<h2>Measured deltas</h2>", f"<p class='summary'>{esc(summary.line())}</p>"]
    if not rows:
        return "\n".join(parts)
    parts.append(
        "<table class='deltas'><tr><th>deployment</th><th>status</th><th>window</th>"
        "<th>predicted (interval)</th><th>estimated (interval)</th>"
        "<th>true (evaluation)</th><th>errors</th></tr>"
    )
    for r in rows:
        body = r.body
        estimate = _estimate(body)
        status = measured_status(body)
        measured = sub(body, "measured")
        reason = measured.get("reason")
        status_html = esc(status_text(status)) + (
            f"<br><small>{esc(reason)}</small>" if reason else ""
        )
        method = estimate.get("method")
        estimated_html = esc(_change(estimate, "wait_change", "wait_ci")) + (
            f"<br><small>{esc(method)}</small>" if method else ""
        )
        parts.append(
            f"<tr><td>record {esc(body.get('deployment'))}, plan "
            f"{esc(body.get('plan_in_force', body.get('sequence', '–')))}</td>"
            f"<td>{status_html}</td><td>{esc(_window(body))}</td>"
            f"<td>{esc(_change(sub(body, 'predicted'), 'wait_change', 'wait_ci'))}</td>"
            f"<td>{estimated_html}</td>"
            f"<td>{esc(_change(sub(body, 'true'), 'wait_change', 'wait_ci'))}</td>"
            f"<td>{esc(_errors(body))}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p><small>Changes of the approach halting vehicle-seconds over the window "
        "(negative = less queueing); errors in percentage points.</small></p>"
    )
    return "\n".join(parts)
