"""The audit report's gate decision: the thresholds, and each candidate's verdict with its numbers.

A cycle record's ``gate`` holds the decision, the chosen candidate and one
verdict per candidate (the wait reduction and NOx change the gate judged, as
fractions, and its reasons); ``gate_settings`` holds the thresholds it applied.
Older records carry only a decision and a list of reasons; they are shown with
what they have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.ledger.report_charts import esc, number, sub

__all__ = ["gate_reasons", "gate_section", "verdict_reason", "verdict_text"]

_WHY_REFUSED = {
    "refuse_wait": "wait reduction below the threshold",
    "refuse_nox": "NOx increase at or above the threshold",
    "refuse_failed": "the simulation failed",
}
_PASSED = ("pass", "passed", "deploy")


def verdict_reason(verdict: object) -> str:
    """Why a refusing verdict refused, in words; other verdicts as recorded."""
    return _WHY_REFUSED.get(str(verdict), str(verdict))


def verdict_text(verdict: object) -> str:
    """A gate verdict in words, e.g. ``refused: the simulation failed`` (unknown: as recorded)."""
    why = _WHY_REFUSED.get(str(verdict))
    return f"refused: {why}" if why else str(verdict)


def gate_reasons(gate: Mapping[str, Any]) -> list[str]:
    """The decision's reasons and each candidate's verdict, one line each.

    A refusing verdict reads ``refused``: its reasons say which threshold it missed.
    """
    reasons = [str(x) for x in gate.get("reasons") or []]
    for v in gate.get("verdicts") or []:
        if isinstance(v, Mapping):
            why = "; ".join(str(x) for x in v.get("reasons") or [])
            verdict = v.get("verdict")
            word = "refused" if str(verdict) in _WHY_REFUSED else str(verdict)
            reasons.append(f"{v.get('candidate')}: {word}" + (f" ({why})" if why else ""))
    return reasons


def _thresholds(settings: Mapping[str, Any]) -> str:
    wait = number(settings.get("min_wait_reduction"))
    nox = number(settings.get("max_nox_increase"))
    if wait is None and nox is None:
        return ""
    parts = []
    if wait is not None:
        parts.append(f"wait reduction ≥ {wait * 100:.1f} %")
    if nox is not None:
        parts.append(f"NOx change < {nox * 100:+.2f} %")
    level = number(settings.get("confidence_level"))
    if settings.get("decide_on") == "confidence_bound" and level is not None:
        basis = f", on the pessimistic end of the {level * 100:.0f} % confidence interval"
    elif settings.get("decide_on") == "point":
        basis = ", on the point estimate"
    else:
        basis = ""
    return f"<p>Thresholds: {esc(' and '.join(parts) + basis)}.</p>"


def _fraction(value: object, signed: bool) -> str:
    v = number(value)
    if v is None:
        return "–"
    return f"{v * 100:+.1f} %" if signed else f"{v * 100:.1f} %"


def _verdicts_table(gate: Mapping[str, Any]) -> str:
    chosen = gate.get("chosen")
    rows = []
    for v in gate.get("verdicts") or []:
        if not isinstance(v, Mapping):
            continue
        verdict = v.get("verdict")
        cls = "ok" if verdict in _PASSED else "bad"
        name = esc(v.get("candidate", "–"))
        if chosen is not None and v.get("candidate") == chosen:
            name += " <strong>(chosen)</strong>"
        reasons = "".join(f"<li>{esc(x)}</li>" for x in v.get("reasons") or [])
        rows.append(
            f"<tr><td>{name}</td><td class='{cls}'>{esc(verdict_text(verdict))}</td>"
            f"<td>{_fraction(v.get('wait_reduction_used'), signed=False)}</td>"
            f"<td>{_fraction(v.get('nox_increase_used'), signed=True)}</td>"
            f"<td>{f'<ul>{reasons}</ul>' if reasons else '–'}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<table class='gate'><tr><th>candidate</th><th>verdict</th>"
        "<th>wait reduction judged</th><th>NOx change judged</th><th>reasons</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def gate_section(cycle_body: Mapping[str, Any] | None) -> str:
    """The HTML for the gate decision of a cycle record body (None: no cycle record)."""
    if cycle_body is None:
        return "<p>No cycle record found for this deployment.</p>"
    gate = sub(cycle_body, "gate")
    if not gate:
        return "<p>The cycle record has no gate decision.</p>"
    decision = gate.get("decision", "–")
    cls = "ok" if decision in _PASSED else "bad"
    chosen = f" (chosen: {esc(gate['chosen'])})" if gate.get("chosen") else ""
    parts = [
        f'<p>Gate decision: <span class="{cls}">{esc(verdict_text(decision))}</span>{chosen}</p>',
        _thresholds(sub(cycle_body, "gate_settings")),
    ]
    if gate.get("held"):
        parts.append(f"<p class='warn'>Deployment held: {esc(gate['held'])}</p>")
    table = _verdicts_table(gate)
    own = [str(x) for x in gate.get("reasons") or []]
    if own or not table:
        items = "".join(f"<li>{esc(x)}</li>" for x in own) or "<li>(none given)</li>"
        parts.append(f"<ul>{items}</ul>")
    parts.append(table)
    return "".join(p for p in parts if p)
