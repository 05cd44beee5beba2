"""The ledger's record kinds: one pydantic model per kind, used to write and to read.

A record body is written by building the model of its kind and handing it to
:meth:`controller.ledger.store.Ledger.append`; a stored body is parsed back
through the same model with :meth:`Record.model` (or :func:`parse_body`), as
the auditor's verification, report and replay do. Every model forbids unknown
fields, so a typo in a writer fails at the append, not years later in an audit.

Nested documents that other packages own (the timing configuration, a what-if
request and result, a signed envelope, the cycle report) are kept as plain JSON
mappings here: their own schemas live with their owners, and the ledger must
store their exact bytes. Only what the ledger itself relies on is typed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from configs.errors import LedgerError

__all__ = [
    "RECORD_KINDS",
    "CalibrationRecord",
    "CheckpointHead",
    "ConfigChangeRecord",
    "CycleRecord",
    "DeploymentRecord",
    "KeyEnrolmentRecord",
    "MeasuredDeltaRecord",
    "PolicyVersionRecord",
    "RawRecord",
    "Record",
    "RecordBody",
    "RecordRef",
    "RecordKind",
    "format_time",
    "kind_of",
    "model_for",
    "parse_body",
    "parse_time",
]

RecordKind = Literal[
    "cycle",
    "deployment",
    "measured_delta",
    "key_enrolment",
    "config_change",
    "policy_version",
    "calibration",
]
RECORD_KINDS: tuple[str, ...] = get_args(RecordKind)

Json = dict[str, Any]


def format_time(t: datetime) -> str:
    """Fixed-width UTC time, e.g. ``2026-11-23T20:15:00.000000Z`` (sorts as text)."""
    if t.tzinfo is None:
        raise LedgerError(f"time {t!r} has no time zone; pass an aware UTC datetime")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time (``Z`` or offset; a bare date is midnight UTC)."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise LedgerError(f"time {text!r} is not ISO 8601; write e.g. 2026-11-23T20:15:00Z") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class _Body(BaseModel):
    """Common configuration: unknown fields refused, values kept exactly as given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_body(self) -> Json:
        """The JSON body as stored: only the fields that were given (``None`` kept if given)."""
        # python mode: values stay as given, so a datetime or NaN is refused by the
        # canonical JSON encoder instead of being silently converted
        data: Json = self.model_dump(exclude_unset=True)
        return data


class CycleRecord(_Body):
    """One cycle: what was observed, proposed, predicted, decided and (maybe) signed."""

    cycle_id: StrictStr
    outcome: StrictStr = Field(description="a configs.outcomes.CycleOutcome value")
    reason: StrictStr | None = None
    slot_time: StrictStr | None = None
    mode: StrictStr | None = None
    network: Json | None = None
    gate_settings: Json | None = None
    observation: Json | None = None
    demand: Json | None = None
    policy_sha256: StrictStr | None = None
    proposed: list[Any] | None = None
    candidates: Any = None
    current: Json | None = None
    whatif: Json | None = None
    gate: Json | None = None
    video: Json | None = Field(default=None, description="{'path', 'sha256'} of the what-if video")
    configuration: Json | None = None
    configuration_sha256: StrictStr | None = None
    envelope: Json | None = None
    safety_violations: list[StrictStr] | None = None
    report: Json | None = None


class DeploymentRecord(_Body):
    """A signed timing configuration and what its push to the controllers did."""

    sequence: StrictInt
    config_digest: StrictStr
    envelope: Json
    cycle_id: StrictStr | None = None
    configuration: Json | None = None
    cycle_index: StrictInt | None = None
    result: StrictStr | None = Field(default=None, description="a DeploymentResult value")
    recovered: StrictBool | None = None
    predicted: Json | None = None
    push: Any = None


_Number = StrictFloat | StrictInt


class MeasuredDeltaRecord(_Body):
    """The field's measured change after a deployment, against the prediction.

    Records written before windowed measurement carry only ``deployment``,
    ``measured`` (a before/after interval comparison), ``sequence``,
    ``predicted`` and ``wait_error``; they still read and verify. Changes are
    fractions (negative = better); ``errors`` are in percentage points.
    """

    deployment: StrictInt = Field(description="index of the deployment record")
    measured: Json = Field(
        description="status, reason, the field's before/after totals of the compared "
        "intersections, and wait_change/nox_change (the estimate) when measured"
    )
    sequence: StrictInt | None = None
    predicted: Json | None = Field(
        default=None,
        description="{quantity, wait_change, wait_ci, nox_change, nox_ci} of the what-if",
    )
    wait_error: _Number | None = Field(
        default=None, description="estimated (older records: measured) minus predicted wait change"
    )
    window: Json | None = Field(default=None, description="{begin_s, end_s} of the after window")
    quantity: StrictStr | None = Field(
        default=None, description="what is compared: 'approach halting vehicle-seconds'"
    )
    status: Literal["measured", "superseded", "not_measurable"] | None = None
    plan_in_force: StrictInt | None = Field(
        default=None, description="sequence of the plan in force over the window"
    )
    superseded_by: StrictInt | None = Field(
        default=None, description="sequence of the plan that cut the window short"
    )
    estimated: Json | None = Field(
        default=None,
        description="{wait_change, wait_ci, nox_change, nox_ci, method, gap_before, "
        "model_change, detail}: the counterfactual estimate",
    )
    true: Json | None = Field(
        default=None, description="evaluation only: the forked field's true change"
    )
    errors: Json | None = Field(
        default=None,
        description="estimated_minus_predicted_pp, true_minus_predicted_pp, "
        "true_minus_estimated_pp (wait, percentage points)",
    )


class CalibrationRecord(_Body):
    """The twin's calibration changed after a measured deployment."""

    demand_scale: _Number = Field(description="factor on the twin's estimated demand now")
    deployment: StrictInt | None = Field(
        default=None, description="index of the deployment record it learnt from"
    )
    sequence: StrictInt | None = None
    previous_demand_scale: _Number | None = None
    field_before_veh_s: _Number | None = None
    twin_before_veh_s: _Number | None = None
    gap_before: _Number | None = None
    calibration: Json | None = Field(
        default=None, description="the calibration's state now (its last update)"
    )


class KeyEnrolmentRecord(_Body):
    """A signing key's public half (and, from the HSM, its attestation record)."""

    keyid: StrictStr
    public_key_pem: StrictStr
    enrolment: Json | None = None


class ConfigChangeRecord(_Body):
    """Settings that now apply (digest of their canonical JSON, and the settings)."""

    sha256: StrictStr
    settings: Json | None = None
    summary: StrictStr | None = None


class PolicyVersionRecord(_Body):
    """A policy weights file in use (loaded or fine-tuned)."""

    sha256: StrictStr
    parent_sha256: StrictStr | None = None
    path: StrictStr | None = None
    samples: StrictInt | None = None
    created_at: StrictStr | None = None
    method: StrictStr | None = None


class CheckpointHead(BaseModel):
    """A signed tree head as exported for an auditor (``audit checkpoints --export``).

    Kept by the auditor and handed back with ``audit verify --trusted-head``:
    the ledger must still be an extension of it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: StrictInt = Field(description="checkpoint sequence number (from 1)")
    origin: StrictStr
    size: StrictInt = Field(ge=0, description="number of records the head covers")
    root_hash: StrictStr = Field(pattern=r"^[0-9a-f]{64}$", description="hex RFC 9162 root")
    time: StrictStr
    keyid: StrictStr
    note: StrictStr
    signature: StrictStr = Field(description="base64 DER ECDSA P-256 over SHA-256(note)")


RecordBody = (
    CycleRecord
    | DeploymentRecord
    | MeasuredDeltaRecord
    | KeyEnrolmentRecord
    | ConfigChangeRecord
    | PolicyVersionRecord
    | CalibrationRecord
)

_MODELS: dict[str, type[_Body]] = {
    "cycle": CycleRecord,
    "deployment": DeploymentRecord,
    "measured_delta": MeasuredDeltaRecord,
    "key_enrolment": KeyEnrolmentRecord,
    "config_change": ConfigChangeRecord,
    "policy_version": PolicyVersionRecord,
    "calibration": CalibrationRecord,
}
_KINDS: dict[type[_Body], str] = {model: kind for kind, model in _MODELS.items()}


def model_for(kind: str) -> type[_Body]:
    """The model of record ``kind``.

    Raises:
        LedgerError: ``kind`` is not a record kind.
    """
    try:
        return _MODELS[kind]
    except KeyError:
        raise LedgerError(
            f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_KINDS)}"
        ) from None


def kind_of(body: RecordBody) -> str:
    """The record kind of a body model."""
    return _KINDS[type(body)]


def parse_body(kind: str, body: object) -> RecordBody:
    """Parse a record body (a stored or a written mapping) through its kind's model.

    Raises:
        LedgerError: unknown kind, not a mapping, a missing or mistyped field,
            or a field the kind does not have.
    """
    model = model_for(kind)
    if not isinstance(body, dict):
        raise LedgerError(f"{kind} record body must be a mapping, got {type(body).__name__}")
    try:
        parsed = model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "missing":
            message = f"{kind} record body needs field {where!r}"
        elif first["type"] == "extra_forbidden":
            fields = ", ".join(model.model_fields)
            message = f"{kind} record body has no field {where!r} (its fields: {fields})"
        else:
            message = (
                f"{kind} record body needs field {where!r} ({first['msg']}), "
                f"got {first.get('input')!r}"
            )
        raise LedgerError(message) from e
    result: RecordBody = parsed  # type: ignore[assignment]
    return result


@dataclass(frozen=True)
class RecordRef:
    """Where a record landed: its index (from 1) and its hash (hex leaf hash)."""

    index: int
    hash: str


@dataclass(frozen=True)
class Record:
    """One parsed ledger record."""

    index: int
    kind: str
    time: datetime
    prev: str
    dedupe_key: str | None
    body: Mapping[str, Any]
    hash: str
    raw: bytes

    def document(self) -> dict[str, Any]:
        """The full record document as stored (parsed)."""
        doc: dict[str, Any] = json.loads(self.raw)
        return doc

    def model(self) -> RecordBody:
        """The body parsed through its kind's model.

        Raises:
            LedgerError: the stored body does not fit its kind's model.
        """
        try:
            return parse_body(self.kind, dict(self.body))
        except LedgerError as e:
            raise LedgerError(f"record {self.index}: {e}") from e


@dataclass(frozen=True)
class RawRecord:
    """A stored row, unparsed and untrusted (what the auditor checks)."""

    index: int
    kind: str
    time: str
    dedupe_key: str | None
    stored_hash: bytes
    body: bytes
