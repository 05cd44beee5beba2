"""The audit report's push results: one line on the push, one table row per controller.

When every controller took the plan the table is folded away in a
``<details>`` whose summary says so in one line; when some did not, their rows
come first and the table is open. Every value comes from the ledger (and, before
that, from the controllers) and is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.ledger.push_rows import PushStep, RecordedPush, RecordedPushRow, read_push
from controller.ledger.report_charts import esc

__all__ = ["push_section", "push_summary"]

_DONE = {"stage": "staged", "activate": "activated", "readback": "read back"}
_SHOWN_FAILED = 5


def _controllers(n: int) -> str:
    return f"{n} controller" + ("" if n == 1 else "s")


def _done_text(rows: Sequence[RecordedPushRow]) -> str:
    """What every one of ``rows`` did, e.g. ``staged, activated and read back``."""
    steps = [s for s in _DONE if all(s in r.recorded_steps for r in rows)]
    words = [_DONE[s] for s in steps]
    if not words:
        return "reported OK"
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    if "readback" not in steps and steps:
        text += " (no read-back recorded)"
    return text


def push_summary(push: RecordedPush) -> str:
    """One line: how many controllers, and whether all took the plan (or which did not).

    A controller took the plan when its row shows no refusal, no step left out
    and no error (see :attr:`RecordedPushRow.ok`).
    """
    rows = push.rows
    if not rows:
        return "no per-controller results recorded"
    failed = push.failed_rows
    good = [r for r in rows if r.ok]
    if not failed:
        return f"{_controllers(len(rows))}: all {_done_text(rows)}"
    names = ", ".join(r.controller_id for r in failed[:_SHOWN_FAILED])
    if len(failed) > _SHOWN_FAILED:
        names += f" and {len(failed) - _SHOWN_FAILED} more"
    if not good:
        return f"{_controllers(len(rows))}: none took the plan ({names})"
    return (
        f"{_controllers(len(rows))}: {len(failed)} did not take the plan ({names}); "
        f"{len(good)} {_done_text(good)}"
    )


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if abs(value) < 10 else f"{value:.1f} s"


def _head(push: RecordedPush) -> str:
    facts: list[str] = []
    if push.outcome:
        facts.append(f"outcome {push.outcome}")
    if push.activate_at_field_time_s is not None:
        facts.append(f"activation at field time {push.activate_at_field_time_s:.1f} s")
    latency = push.latency_s or {}
    if "total" in latency:
        steps = [
            f"{label} {_seconds(latency[key])}"
            for key, label in (
                ("stage", "stage"),
                ("activate", "activate"),
                ("readback", "read-back"),
            )
            if key in latency
        ]
        facts.append(
            f"took {_seconds(latency['total'])}" + (f" ({', '.join(steps)})" if steps else "")
        )
    for text in dict.fromkeys(t for t in (push.message, push.reason) if t):
        facts.append(text)
    if push.error:
        facts.append(f"error: {push.error}")
    if push.ok is None:
        verdict = ""
    else:
        cls, word = ("ok", "ok") if push.ok else ("bad", "failed")
        verdict = f'<span class="{cls}">{word}</span>'
    if not verdict and not facts:
        return ""
    detail = esc("; ".join(facts))
    sep = " — " if verdict and detail else ""
    return f'<p class="push-outcome">Push: {verdict}{sep}{detail}</p>'


def _cell(step: PushStep) -> str:
    cls = {"ok": "ok", "failed": "bad"}.get(step.state, "muted")
    return f'<td class="{cls}">{esc(step.text)}</td>'


def _row(row: RecordedPushRow) -> str:
    cls = "push-ok" if row.ok else "push-failed"
    return (
        f'<tr class="{cls}"><td class="mono">{esc(row.controller_id)}</td>'
        f"{_cell(row.stage)}{_cell(row.activate)}{_cell(row.readback)}"
        f"<td>{esc(row.message) or '–'}</td></tr>"
    )


def push_section(body: Mapping[str, Any]) -> str:
    """The HTML for a ``deployment`` record body's push: the outcome line and the table."""
    push = read_push(body)
    head = _head(push)
    if not push.rows:
        return head or "<p>No push results recorded.</p>"
    failed = push.failed_rows
    collapsed = not failed and push.ok is not False and not push.error
    ordered = [*failed, *(r for r in push.rows if r.ok)]
    summary_cls = "ok" if collapsed else "bad"
    return (
        f"{head}<details class='push-results'{'' if collapsed else ' open'}>"
        f"<summary class='{summary_cls}'>{esc(push_summary(push))}</summary>"
        "<table class='push-table'><thead><tr><th>controller</th><th>stage</th>"
        "<th>activate</th><th>read-back</th><th>message</th></tr></thead><tbody>"
        + "".join(_row(r) for r in ordered)
        + "</tbody></table></details>"
    )
