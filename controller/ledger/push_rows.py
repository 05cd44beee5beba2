"""A deployment record's push, read back as one typed row per controller.

The ``push`` of a ``deployment`` record is plain JSON written by several hands:
the OPC UA pool's push report (``controllers`` a list of rows with ``stage``,
``activate``, ``abort`` and ``readback``), the lockstep evaluation
(``controllers`` a mapping by intersection id, no read-back), the start-up
recovery's read-back (rows with a ``state``), a push that raised (only an
``error``), and older records and test fakes (a list of rows, or a mapping by
intersection id). :func:`read_push` turns every one of them into a
:class:`RecordedPush` the report renders; nothing here judges what a controller
should have done beyond what its row says.

The values are untrusted: everything is converted to text here and escaped by
whoever renders it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PushStep", "RecordedPush", "RecordedPushRow", "StepState", "read_push", "text_of"]

StepState = Literal["ok", "failed", "skipped", "unrecorded"]
"""How one step went: done, refused (or went wrong), not attempted, not in the record."""

_STEPS = ("stage", "activate", "readback")
_RESULT_KEYS = frozenset(
    {"sequence", "digest", "outcome", "reason", "activate_at_field_time_s", "latency_s"}
    | {"controllers", "settled", "error"}
)


@dataclass(frozen=True)
class PushStep:
    """One step (stage, activate or read-back) of the push on one controller."""

    state: StepState
    text: str


_NOT_RECORDED = PushStep("unrecorded", "not recorded")


@dataclass(frozen=True)
class RecordedPushRow:
    """What the record says one controller did with the plan."""

    controller_id: str
    stage: PushStep = _NOT_RECORDED
    activate: PushStep = _NOT_RECORDED
    readback: PushStep = _NOT_RECORDED
    message: str = ""
    #: the row says something went wrong besides its steps (an error, a refused abort)
    error: bool = False

    @property
    def ok(self) -> bool:
        """No step failed or was left out, and no error: the controller took the plan."""
        steps = (self.stage, self.activate, self.readback)
        return not self.error and all(s.state in ("ok", "unrecorded") for s in steps)

    @property
    def recorded_steps(self) -> tuple[str, ...]:
        """The steps this row has a result for (``stage``, ``activate``, ``readback``)."""
        return tuple(n for n in _STEPS if getattr(self, n).state != "unrecorded")


@dataclass(frozen=True)
class RecordedPush:
    """A deployment record's push: overall result, timing, and one row per controller."""

    #: the push's own verdict (None: the record does not say)
    ok: bool | None = None
    message: str = ""
    outcome: str | None = None
    reason: str = ""
    error: str = ""
    activate_at_field_time_s: float | None = None
    #: step name -> seconds (``stage``, ``activate``, ``readback``, ``total``)
    latency_s: Mapping[str, float] | None = None
    #: rows sorted by controller id
    rows: tuple[RecordedPushRow, ...] = ()

    @property
    def failed_rows(self) -> tuple[RecordedPushRow, ...]:
        """The rows of controllers that did not take the plan, by controller id."""
        return tuple(r for r in self.rows if not r.ok)


def text_of(value: object) -> str:
    """Plain text of a JSON value, never a Python repr (mappings as ``key: value``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return ", ".join(f"{k}: {text_of(v)}" for k, v in items if v is not None)
    if isinstance(value, list | tuple):
        return ", ".join(text_of(v) for v in value)
    return str(value)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _status_step(entry: object) -> PushStep:
    """A stage/activate/abort answer: ``{status, name | status_name, message}``."""
    if not isinstance(entry, Mapping):
        return _NOT_RECORDED
    status = entry.get("status")
    if status is None:
        return PushStep("skipped", "not attempted")
    name = entry.get("name") or entry.get("status_name")
    if status == 0:
        return PushStep("ok", "OK")
    label = f"{text_of(name)} (status {text_of(status)})" if name else f"status {text_of(status)}"
    return PushStep("failed", label)


def _readback_step(
    readback: object, activate: PushStep, sequence: int | None, digest: str | None
) -> PushStep:
    if not isinstance(readback, Mapping):
        return _NOT_RECORDED
    seen = readback.get("sequence")
    if seen is None:
        if activate.state == "ok":
            return PushStep("failed", "not read back")
        return PushStep("skipped", "not read back")
    seen_digest = readback.get("digest")
    if sequence is None or seen == sequence:
        if digest and seen_digest and seen_digest != digest:
            return PushStep("failed", f"plan {text_of(seen)}, another digest")
        return PushStep("ok", f"plan {text_of(seen)}")
    return PushStep("failed", f"plan {text_of(seen)} (expected {sequence})")


def _messages(row: Mapping[str, Any]) -> list[str]:
    """The error and what the steps that did not answer OK said.

    When every step answered OK only the last message is kept (``plan 7 active
    from field time …``): the same "verified and staged" on every row says nothing.
    """
    parts = []
    if row.get("error"):
        parts.append(f"error: {text_of(row['error'])}")
    said = []
    for key in ("stage", "activate", "abort"):
        entry = row.get(key)
        if isinstance(entry, Mapping) and entry.get("message"):
            said.append((entry.get("status") == 0, f"{key}: {text_of(entry['message'])}"))
    refusals = [text for ok, text in said if not ok]
    if refusals or parts:
        return parts + refusals
    return [said[-1][1]] if said else []


def _abort_failed(row: Mapping[str, Any]) -> bool:
    abort = row.get("abort")
    return isinstance(abort, Mapping) and _status_step(abort).state == "failed"


def _step_row(
    tls: str, row: Mapping[str, Any], sequence: int | None, digest: str | None
) -> RecordedPushRow:
    """A row of the pool's push report or of the lockstep evaluation."""
    stage = _status_step(row.get("stage"))
    activate = _status_step(row.get("activate"))
    if activate is _NOT_RECORDED and stage.state != "unrecorded":
        activate = PushStep("skipped", "not attempted")
    if stage is _NOT_RECORDED and row.get("error"):
        stage = PushStep("failed", "not staged")
    readback = _readback_step(row.get("readback"), activate, sequence, digest)
    message = "; ".join(_messages(row))
    return RecordedPushRow(
        tls, stage, activate, readback, message, bool(row.get("error")) or _abort_failed(row)
    )


def _recovered_row(
    tls: str, row: Mapping[str, Any], sequence: int | None, digest: str | None
) -> RecordedPushRow:
    """A row of the start-up read-back of an interrupted push (it has a ``state``)."""
    state = text_of(row.get("state"))
    if state == "unreachable":
        readback = PushStep("failed", "unreachable")
    elif state == "activated":
        readback = _readback_step(row.get("readback"), PushStep("ok", ""), sequence, digest)
    else:
        seen = _readback_step(row.get("readback"), PushStep("ok", ""), sequence, digest)
        readback = PushStep("failed", seen.text if seen.state != "ok" else state)
    parts = [f"read back at start-up: {state.replace('-', ' ')}", *_messages(row)]
    return RecordedPushRow(
        tls,
        PushStep("unrecorded", "not recorded (interrupted)"),
        PushStep("unrecorded", "not recorded (interrupted)"),
        readback,
        "; ".join(parts),
        bool(row.get("error")) or _abort_failed(row),
    )


def _plain_row(tls: str, row: Mapping[str, Any]) -> RecordedPushRow:
    """An older or foreign row: only an ``ok`` flag or a status, and a message."""
    ok = row.get("ok")
    status = row.get("status")
    good = ok is True or (ok is None and status in (0, "Good", "OK"))
    rest = {k: v for k, v in row.items() if k not in ("intersection", "tls_id", "ok", "message")}
    message = "; ".join(
        p for p in (text_of(row.get("message")), text_of(rest)) if p and p != "status: 0"
    )
    return RecordedPushRow(tls, message=message, error=not good)


def _row(tls: str, row: object, sequence: int | None, digest: str | None) -> RecordedPushRow | None:
    if not isinstance(row, Mapping):
        if row is None:
            return None
        return RecordedPushRow(tls, message=text_of(row), error=True)
    if "state" in row:
        return _recovered_row(tls, row, sequence, digest)
    if any(k in row for k in ("stage", "activate", "readback")):
        return _step_row(tls, row, sequence, digest)
    if "error" in row and len(row) == 1:
        return _step_row(tls, row, sequence, digest)
    return _plain_row(tls, row)


def _rows(controllers: object, sequence: int | None, digest: str | None) -> list[RecordedPushRow]:
    found: list[RecordedPushRow | None] = []
    if isinstance(controllers, Mapping):
        found = [_row(str(t), r, sequence, digest) for t, r in controllers.items()]
    elif isinstance(controllers, list):
        for r in controllers:
            tls = r.get("tls_id", r.get("intersection")) if isinstance(r, Mapping) else None
            found.append(_row(text_of(tls) or "(no id)", r, sequence, digest))
    return sorted((r for r in found if r is not None), key=lambda r: r.controller_id)


def read_push(body: Mapping[str, Any]) -> RecordedPush:
    """The push of a ``deployment`` record body, whatever shape it was written in."""
    push = body.get("push")
    sequence = body.get("sequence") if isinstance(body.get("sequence"), int) else None
    digest = body.get("config_digest") if isinstance(body.get("config_digest"), str) else None
    if isinstance(push, list):
        return RecordedPush(rows=tuple(_rows(push, sequence, digest)))
    if not isinstance(push, Mapping):
        return RecordedPush()
    results = push.get("results")
    results = results if isinstance(results, Mapping) else {}
    if isinstance(results.get("sequence"), int):
        sequence = results["sequence"]
    if isinstance(results.get("digest"), str) and results["digest"]:
        digest = results["digest"]
    if "controllers" in results:
        rows = _rows(results["controllers"], sequence, digest)
    else:
        # a mapping by intersection id, beside (or instead of) the known keys
        rows = _rows({k: v for k, v in results.items() if k not in _RESULT_KEYS}, sequence, digest)
    latency = results.get("latency_s")
    latency_s = (
        {str(k): x for k, v in latency.items() if (x := _number(v)) is not None}
        if isinstance(latency, Mapping)
        else None
    )
    ok = push.get("ok")
    outcome = results.get("outcome")
    return RecordedPush(
        ok=ok if isinstance(ok, bool) else None,
        message=text_of(push.get("message")),
        outcome=text_of(outcome) if outcome is not None else None,
        reason=text_of(results.get("reason")),
        error=text_of(results.get("error")),
        activate_at_field_time_s=_number(results.get("activate_at_field_time_s")),
        latency_s=latency_s or None,
        rows=tuple(rows),
    )
