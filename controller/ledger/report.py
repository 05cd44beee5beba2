"""The auditor's HTML report: one self-contained page per ledger selection.

The page has no external resources: charts are inline SVG generated here, the
what-if videos are embedded as ``data:`` URIs (or linked as files copied next
to the report), and the only script is a few lines that note each video's
playback state in ``data-`` attributes (and start muted playback when the URL
ends in ``#autoplay``), which is how tests check that the video really plays.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from configs.digests import sha256_hex
from configs.errors import LedgerError
from controller.ledger.records import CycleRecord, format_time
from controller.ledger.replay import contained_artifact
from controller.ledger.report_charts import (
    bar_chart,
    ci_bounds,
    esc,
    number,
    pct,
    scatter,
    sub,
    timeline,
)
from controller.ledger.report_deltas import measured_delta_section, measured_status, status_text
from controller.ledger.report_gate import (
    gate_reasons,
    gate_section,
    verdict_reason,
    verdict_text,
)
from controller.ledger.report_push import push_section
from controller.ledger.store import Ledger, Record
from controller.ledger.verify import VerifyResult

__all__ = ["ReportSelection", "build_report", "write_report"]

logger = logging.getLogger(__name__)

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#212529;
max-width:1100px}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-bottom:1px solid #dee2e6;padding-bottom:.3rem;
margin-top:2rem}h3{font-size:1.1rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #dee2e6;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f8f9fa}.ok{color:#198754;font-weight:600}.bad{color:#dc3545;font-weight:600}
.warn{color:#b58105}.muted{color:#6c757d}.mono{font-family:ui-monospace,monospace;font-size:.85rem;word-break:break-all}
.deployment{border:1px solid #dee2e6;border-radius:6px;padding:1rem;margin:1rem 0}
video{max-width:100%;background:#000}
details.push-results>summary{cursor:pointer;padding:.25rem 0}
"""

_SCRIPT = """
(function(){
  function mark(v, ev){
    v.dataset.lastEvent = ev;
    v.dataset.readyState = String(v.readyState);
    v.dataset.currentTime = String(v.currentTime);
    if (ev === 'playing' || (ev === 'timeupdate' && v.currentTime > 0)) v.dataset.played = 'yes';
    if (v.error) v.dataset.error = String(v.error.code);
  }
  document.querySelectorAll('video').forEach(function(v){
    ['loadedmetadata','canplay','playing','timeupdate','ended','error'].forEach(function(ev){
      v.addEventListener(ev, function(){ mark(v, ev); });
    });
    if (location.hash === '#autoplay') {
      v.muted = true;
      var p = v.play();
      if (p && p.catch) p.catch(function(e){ v.dataset.playError = String(e); });
    }
  });
})();
"""


@dataclass(frozen=True)
class ReportSelection:
    """Which records the report covers: one deployment, a time range, or everything."""

    deployment: int | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass
class _Deployment:
    record: Record
    cycle: Record | None = None
    measured: list[Record] = field(default_factory=list)


# ----------------------------------------------------------------------- video


def _video_html(
    cycle: Record | None, roots: Sequence[Path], out_path: Path, link_video: bool
) -> tuple[str, str]:
    """(HTML for the video element, one-line status).

    Only a file inside ``roots`` (the ledger's folder and the ``--inputs``
    folders) whose sha256 is the recorded one is embedded or linked: the ledger
    is untrusted input, and must not make the report carry any other file.
    """
    if cycle is None:
        return "", "no cycle record"
    try:
        body = cycle.model()
    except LedgerError as e:
        return f'<p class="bad">{esc(e)}</p>', str(e)
    video = body.video if isinstance(body, CycleRecord) else None
    if not isinstance(video, Mapping) or not isinstance(video.get("path"), str):
        return "<p>No what-if video was recorded for this cycle.</p>", "none recorded"
    name = str(video["path"])
    source = contained_artifact(name, roots)
    if source is None:
        msg = (
            f"video {name} is not in the ledger's folder or an --inputs folder; "
            "copy it there to see it (not embedded)"
        )
        return f'<p class="bad">{esc(msg)}</p>', msg
    try:
        data = source.read_bytes()
    except OSError as e:
        msg = f"video {source} cannot be read ({e.strerror})"
        return f'<p class="bad">{esc(msg)}</p>', msg
    actual = sha256_hex(data)
    recorded = video.get("sha256")
    if recorded is None or actual != recorded:
        if recorded is None:
            msg = f"no sha256 recorded for {source.name} (file has {actual}); not embedded"
            status = "video digest not recorded"
        else:
            msg = (
                f"{source.name}: sha256 {actual} differs from the recorded {recorded}: "
                "the video file was changed (not embedded)"
            )
            status = "video changed since it was recorded"
        return f'<p class="bad mono">{esc(msg)}</p>', status
    digest_html = f'<span class="ok">sha256 matches the record</span> ({esc(actual)})'
    if link_video:
        target = out_path.parent / f"{out_path.stem}.record{cycle.index}{source.suffix}"
        if source.resolve() != target.resolve():
            try:
                target.write_bytes(data)  # the bytes whose digest was checked
            except OSError as e:
                raise LedgerError(f"cannot copy video {source} to {target}: {e}") from e
        src = esc(quote(target.name))
        shown = f'<a href="{src}">{esc(target.name)}</a> (copy of {esc(source.name)})'
    else:
        src = "data:video/mp4;base64," + base64.b64encode(data).decode("ascii")
        shown = f"{esc(source.name)} (embedded)"
    element = (
        f'<video controls muted playsinline preload="auto" data-record="{cycle.index}" '
        f'src="{src}"></video><p class="mono">{shown}: {digest_html}</p>'
    )
    return element, "video digest matches"


# ---------------------------------------------------------------------- report


def _cycle_of(
    dep: Record, by_index: Mapping[int, Record], by_id: Mapping[str, Record]
) -> Record | None:
    ref = dep.body.get("cycle_index")
    if isinstance(ref, int) and ref in by_index:
        return by_index[ref]
    return by_id.get(str(dep.body.get("cycle_id")))


def _deployed(dep: Record) -> bool:
    return bool(dep.body.get("result", "deployed") == "deployed")


@dataclass
class _Selected:
    records: list[Record]
    deployments: list[_Deployment]
    #: cycle record index -> the deployment record that pushed its plan
    deployment_of: dict[int, Record]

    def deployed(self, cycle_index: int) -> bool:
        dep = self.deployment_of.get(cycle_index)
        return dep is not None and _deployed(dep)


def _select(ledger: Ledger, sel: ReportSelection) -> _Selected:
    all_records = list(ledger.iter_records())
    cycles = {r.index: r for r in all_records if r.kind == "cycle"}
    cycles_by_id = {str(r.body.get("cycle_id")): r for r in cycles.values()}
    measured: dict[int, list[Record]] = {}
    for r in all_records:
        if r.kind == "measured_delta":
            measured.setdefault(int(r.body["deployment"]), []).append(r)
    deployment_of: dict[int, Record] = {}
    for r in all_records:
        if r.kind == "deployment":
            c = _cycle_of(r, cycles, cycles_by_id)
            if c is not None:
                deployment_of[c.index] = r
    if sel.deployment is not None:
        dep = ledger.get(sel.deployment)
        if dep.kind != "deployment":
            raise LedgerError(f"record {sel.deployment} is a {dep.kind} record, not a deployment")
        cycle = _cycle_of(dep, cycles, cycles_by_id)
        ms = measured.get(dep.index, [])
        chosen = {dep.index, *(m.index for m in ms), *([cycle.index] if cycle else [])}
        records = [r for r in all_records if r.index in chosen]
        return _Selected(records, [_Deployment(dep, cycle, ms)], deployment_of)
    records = [
        r
        for r in all_records
        if (sel.since is None or r.time >= sel.since) and (sel.until is None or r.time < sel.until)
    ]
    deployments = [
        _Deployment(r, _cycle_of(r, cycles, cycles_by_id), measured.get(r.index, []))
        for r in records
        if r.kind == "deployment"
    ]
    return _Selected(records, deployments, deployment_of)


def _predicted(body: Mapping[str, Any]) -> Mapping[str, Any]:
    direct = sub(body, "predicted")
    return direct if direct else sub(sub(body, "configuration"), "predicted")


def _cycle_summary(r: Record, deployment: Record | None) -> str:
    b = r.body
    gate = sub(b, "gate")
    notes = []
    if gate:
        notes.append(f"gate: {verdict_reason(gate.get('decision', '–'))}")
        if gate.get("held"):
            notes.append("deployment held")
    elif b.get("reason"):
        notes.append(str(b["reason"]))
    text = f"cycle {b.get('cycle_id')}: {b.get('outcome')}"
    if notes:
        text += f" ({', '.join(notes)})"
    if deployment is not None:
        text += (
            f" → deployment record {deployment.index} ({deployment.body.get('result', 'deployed')})"
        )
    return text


def _summary(r: Record, deployment_of: Mapping[int, Record]) -> str:
    b = r.body
    if r.kind == "cycle":
        return _cycle_summary(r, deployment_of.get(r.index))
    if r.kind == "deployment":
        return (
            f"deployment of plan sequence {b.get('sequence')} "
            f"({b.get('result', 'deployed')}), configuration sha256 "
            f"{str(b.get('config_digest'))[:12]}…"
        )
    if r.kind == "measured_delta":
        m = sub(b, "measured")
        status = measured_status(b)
        if status not in ("measured", "?"):
            return f"{status_text(status)} for deployment record {b.get('deployment')}"
        return (
            f"measured for deployment record {b.get('deployment')}: "
            f"wait {pct(m.get('wait_change'))}, NOx {pct(m.get('nox_change'))}"
        )
    if r.kind == "key_enrolment":
        return f"signing key {str(b.get('keyid'))[:16]}… enrolled"
    if r.kind == "calibration":
        scale = number(b.get("demand_scale"))
        before = number(b.get("previous_demand_scale"))
        text = "twin demand scale now " + ("–" if scale is None else f"{scale:.3f}")
        return text + (f" (was {before:.3f})" if before is not None else "")
    if r.kind == "policy_version":
        origin = f" ({b['method']})" if b.get("method") else ""
        return f"policy weights sha256 {str(b.get('sha256', ''))[:12]}…{origin}"
    if r.kind == "config_change":
        what = f": {b['summary']}" if b.get("summary") else ""
        return f"settings sha256 {str(b.get('sha256', ''))[:12]}…{what}"
    return f"{r.kind} {str(b.get('sha256', ''))[:12]}"


def build_report(
    ledger: Ledger,
    out_path: Path,
    *,
    selection: ReportSelection | None = None,
    verification: VerifyResult | None = None,
    link_video: bool = False,
    inputs: Sequence[Path] = (),
) -> str:
    """Render the HTML report for ``selection`` and return it.

    Args:
        ledger: the open ledger.
        out_path: where the report will be written (videos linked with
            ``link_video`` are copied next to it).
        selection: one deployment, a time range, or everything.
        verification: the result of :func:`controller.ledger.verify_ledger`, shown at
            the top and per deployment; without it the page says the ledger was
            not verified.
        link_video: copy videos next to the report instead of embedding them.
        inputs: folders besides the ledger's where recorded files may be found;
            no file outside them and the ledger's folder is ever read.
    """
    sel = selection or ReportSelection()
    selected = _select(ledger, sel)
    records, deployments = selected.records, selected.deployments
    roots = [ledger.path.resolve().parent, *inputs]
    title = "signaltwin ledger audit report"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<table>",
        f"<tr><th>ledger</th><td class='mono'>{esc(ledger.path)}</td></tr>",
        f"<tr><th>ledger id</th><td class='mono'>{esc(ledger.ledger_id)}</td></tr>",
        f"<tr><th>records</th><td>{ledger.size()} in the ledger, {len(records)} in this "
        "report</td></tr>",
        f"<tr><th>root hash</th><td class='mono'>{esc(ledger.root())}</td></tr>",
    ]
    if sel.deployment is not None:
        parts.append(f"<tr><th>selection</th><td>deployment record {sel.deployment}</td></tr>")
    elif sel.since or sel.until:
        since = format_time(sel.since) if sel.since else "start"
        until = format_time(sel.until) if sel.until else "end"
        parts.append(f"<tr><th>selection</th><td>{esc(since)} to {esc(until)}</td></tr>")
    if verification is None:
        parts.append(
            "<tr><th>verification</th><td class='warn'>not verified (run the report with "
            "--pubkey to verify)</td></tr>"
        )
    elif verification.ok:
        parts.append(
            f"<tr><th>verification</th><td class='ok'>verified: {verification.records} records,"
            f" {verification.checkpoints} checkpoints; records 1..{verification.covered_size} "
            "covered by signed checkpoints</td></tr>"
        )
    else:
        problems = len(verification.problems)
        more = f"{problems} problems; the first: " if problems > 1 else ""
        parts.append(
            f"<tr><th>verification</th><td class='bad'>FAILED: {esc(more)}"
            f"{esc(verification.first_problem)}</td></tr>"
        )
    if verification is not None:
        for w in verification.warnings:
            parts.append(f"<tr><th>warning</th><td class='warn'>{esc(w)}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Timeline</h2>")
    parts.append(timeline(records))
    parts.append(
        "<table><tr><th>#</th><th>time (UTC)</th><th>kind</th><th>summary</th><th>hash</th></tr>"
    )
    for r in records:
        parts.append(
            f"<tr><td>{r.index}</td><td>{esc(format_time(r.time))}</td><td>{esc(r.kind)}"
            f"</td><td>{esc(_summary(r, selected.deployment_of))}</td>"
            f"<td class='mono'>{esc(r.hash[:16])}…</td></tr>"
        )
    parts.append("</table>")

    points: list[tuple[int, float, float]] = []
    parts.append("<h2>Deployments</h2>")
    if not deployments:
        parts.append("<p>No deployment in this selection.</p>")
    for d in deployments:
        body = d.record.body
        predicted = _predicted(body)
        pw = number(predicted.get("wait_change"))
        for m in d.measured:
            mw = number(sub(m.body, "measured").get("wait_change"))
            if pw is not None and mw is not None:
                points.append((d.record.index, pw, mw))
        video_html, video_status = _video_html(d.cycle, roots, out_path, link_video)
        parts += [
            f"<section class='deployment' id='deployment-{d.record.index}'>",
            f"<h3>Deployment record {d.record.index}: sequence {esc(body.get('sequence'))} "
            f"at {esc(format_time(d.record.time))}</h3>",
            "<table>",
            f"<tr><th>configuration sha256</th><td class='mono'>"
            f"{esc(body.get('config_digest'))}</td></tr>",
            f"<tr><th>envelope signature</th><td>{_signature_html(verification, d.record)}"
            "</td></tr>",
            f"<tr><th>in a signed checkpoint</th><td>{_covered_html(verification, d.record)}"
            "</td></tr>",
            f"<tr><th>push result</th><td>{esc(body.get('result', 'deployed'))}</td></tr>",
            f"<tr><th>cycle</th><td>"
            f"{esc(d.cycle.body.get('cycle_id')) if d.cycle else 'not found'}"
            f"{f' (record {d.cycle.index})' if d.cycle else ''}</td></tr>",
            f"<tr><th>what-if video</th><td>{esc(video_status)}</td></tr>",
            "</table>",
            "<h4>Predicted against measured</h4>",
            _predicted_table(predicted, d.measured),
            "<h4>Gate decision</h4>",
            gate_section(d.cycle.body if d.cycle else None),
            "<h4>Push results</h4>",
            push_section(body),
            "<h4>What-if video (baseline | candidate)</h4>",
            video_html,
            "</section>",
        ]

    refused = [r for r in records if r.kind == "cycle" and not selected.deployed(r.index)]
    parts.append("<h2>Cycles that deployed nothing</h2>")
    if not refused:
        parts.append("<p>None in this selection.</p>")
    else:
        parts.append(
            "<table><tr><th>#</th><th>cycle</th><th>outcome</th><th>gate</th><th>reasons</th></tr>"
        )
        for r in refused:
            gate = sub(r.body, "gate")
            reasons = "; ".join(gate_reasons(gate))
            error = r.body.get("error") or sub(r.body, "report").get("error")
            if r.body.get("reason"):
                reasons = f"{reasons}; {r.body['reason']}" if reasons else str(r.body["reason"])
            if error:
                reasons = f"{reasons}; error: {error}" if reasons else f"error: {error}"
            dep = selected.deployment_of.get(r.index)
            pushed = f" → push {dep.body.get('result')}" if dep is not None else ""
            decision = verdict_text(gate["decision"]) if "decision" in gate else "–"
            parts.append(
                f"<tr><td>{r.index}</td><td>{esc(r.body.get('cycle_id'))}</td>"
                f"<td>{esc(str(r.body.get('outcome')) + pushed)}</td><td>{esc(decision)}"
                f"</td><td>{esc(reasons)}</td></tr>"
            )
        parts.append("</table>")

    parts.append(measured_delta_section(records))
    parts.append("<h2>Predicted against measured, all deployments</h2>")
    parts.append(scatter(points))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _ci_text(value: object) -> str:
    ci = ci_bounds(value)
    return "–" if ci is None else f"{ci[0] * 100:+.1f} % … {ci[1] * 100:+.1f} %"


def _signature_html(verification: VerifyResult | None, record: Record) -> str:
    sig = verification.signatures.get(record.index) if verification else None
    if sig is None:
        return "<span class='warn'>not verified</span>"
    if sig.ok:
        return f"<span class='ok'>verified</span> <span class='mono'>({esc(sig.message)})</span>"
    return f"<span class='bad'>does not verify</span>: {esc(sig.message)}"


def _covered_html(verification: VerifyResult | None, record: Record) -> str:
    if verification is None:
        return "<span class='warn'>not verified</span>"
    if record.index <= verification.covered_size:
        return "<span class='ok'>yes (verified)</span>"
    return "<span class='bad'>no</span>"


def _predicted_table(predicted: Mapping[str, Any], measured: Sequence[Record]) -> str:
    """Predicted (with intervals) against each measured-delta record, the bar chart, a note."""
    parts = [
        "<table><tr><th></th><th>wait time change</th><th>NOx change</th></tr>",
        f"<tr><th>predicted</th><td>{pct(predicted.get('wait_change'))} "
        f"(CI {esc(_ci_text(predicted.get('wait_change_ci')))})</td>"
        f"<td>{pct(predicted.get('nox_change'))} "
        f"(CI {esc(_ci_text(predicted.get('nox_change_ci')))})</td></tr>",
    ]
    charted: list[Mapping[str, Any]] = []
    labels: list[str] = []
    quantities: set[str] = set()
    for n, m in enumerate(measured, start=1):
        values = sub(m.body, "measured")
        label = f"measured #{n}"
        head = f"<tr><th>{label} <small>(record {m.index})</small></th>"
        status = measured_status(m.body)
        if number(values.get("wait_change")) is None and status != "measured":
            reason = values.get("reason")
            why = f": {reason}" if reason else ""
            parts.append(
                f"{head}<td colspan='2' class='muted'>{esc(status_text(status) + why)}</td></tr>"
            )
            continue
        charted.append(values)
        labels.append(label)
        if m.body.get("quantity"):
            quantities.add(str(m.body["quantity"]))
        parts.append(
            f"{head}<td>{pct(values.get('wait_change'))}</td>"
            f"<td>{pct(values.get('nox_change'))}</td></tr>"
        )
    parts.append("</table>")
    parts.append(bar_chart(predicted, charted, labels))
    notes = ["CI: the twin's confidence interval"]
    horizon = number(predicted.get("horizon_s"))
    if horizon is not None:
        notes.append(f"predicted over a {horizon:.0f} s horizon")
    seeds = predicted.get("seeds")
    if isinstance(seeds, list) and seeds:
        notes.append("seeds " + ", ".join(str(x) for x in seeds))
    if quantities:
        notes.append("measured: change of " + " and ".join(sorted(quantities)))
    notes.append("negative = less than under the previous plan")
    parts.append(f"<p><small>{esc('; '.join(notes))}.</small></p>")
    return "".join(parts)


def write_report(
    ledger: Ledger,
    out_path: Path,
    *,
    selection: ReportSelection | None = None,
    verification: VerifyResult | None = None,
    link_video: bool = False,
    inputs: Sequence[Path] = (),
) -> Path:
    """Render the report and write it to ``out_path`` (UTF-8)."""
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LedgerError(f"cannot create the report folder {out_path.parent}: {e}") from e
    page = build_report(
        ledger,
        out_path,
        selection=selection,
        verification=verification,
        link_video=link_video,
        inputs=inputs,
    )
    try:
        out_path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise LedgerError(f"cannot write report {out_path}: {e.strerror}") from e
    return out_path
