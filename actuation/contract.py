"""The traffic-controller contract: the OPC UA address space both sides agree on.

A controller (real or emulated) is an OPC UA server. In the namespace
:data:`NAMESPACE_URI`, under ``Objects/TrafficController``, it exposes the
variables in :data:`VARIABLES` and the methods in :data:`METHODS`, all with the
stable string node ids defined here; methods answer with a status code from
:class:`PlanStatus` and a message. ``docs/controller-contract.md`` is the
vendor-facing description of the same contract.

The daemon resolves the namespace index from the server's NamespaceArray (it is
not assumed to be 2) and then addresses every node by its string id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

__all__ = [
    "ACTIVATE_PLAN",
    "ABORT_STAGED",
    "ACTIVE_DIGEST",
    "ACTIVE_FROM_FIELD_TIME",
    "ACTIVE_SEQUENCE",
    "CONTROLLER_ID",
    "CUMULATIVE_TOTALS",
    "DETECTORS",
    "DETECTOR_COUNTS",
    "DETECTOR_IDS",
    "DETECTOR_OCCUPANCY",
    "FIELD_TIME",
    "HALTING_TOTAL",
    "HEALTH",
    "INTERVAL_END",
    "MEAN_WAIT",
    "METHODS",
    "NAMESPACE_URI",
    "NOX",
    "NOX_TOTAL",
    "OBJECT",
    "OBJECT_BROWSE_NAME",
    "PLAN_STATUS_TEXT",
    "STAGED_DIGEST",
    "STAGED_EXPIRES_AT",
    "STAGED_SEQUENCE",
    "STAGE_PLAN",
    "VARIABLES",
    "Argument",
    "MethodSpec",
    "PlanStatus",
    "VariableSpec",
    "detector_count_node",
    "detector_node",
    "detector_occupancy_node",
]

#: Namespace of every node of the contract.
NAMESPACE_URI: Final = "urn:signaltwin:traffic-controller"

#: Browse name and string node id of the controller object (under Objects).
OBJECT_BROWSE_NAME: Final = "TrafficController"
OBJECT: Final = "TrafficController"

CONTROLLER_ID: Final = "TrafficController.ControllerId"
ACTIVE_SEQUENCE: Final = "TrafficController.ActiveSequence"
ACTIVE_DIGEST: Final = "TrafficController.ActiveDigest"
ACTIVE_FROM_FIELD_TIME: Final = "TrafficController.ActiveFromFieldTime"
STAGED_SEQUENCE: Final = "TrafficController.StagedSequence"
STAGED_DIGEST: Final = "TrafficController.StagedDigest"
STAGED_EXPIRES_AT: Final = "TrafficController.StagedExpiresAt"
FIELD_TIME: Final = "TrafficController.FieldTime"
HEALTH: Final = "TrafficController.Health"
DETECTOR_IDS: Final = "TrafficController.DetectorIds"
DETECTOR_COUNTS: Final = "TrafficController.DetectorCounts"
DETECTOR_OCCUPANCY: Final = "TrafficController.DetectorOccupancy"
MEAN_WAIT: Final = "TrafficController.Measurements.MeanWait"
NOX: Final = "TrafficController.Measurements.NOx"
INTERVAL_END: Final = "TrafficController.Measurements.IntervalEnd"
HALTING_TOTAL: Final = "TrafficController.Measurements.HaltingTotal"
NOX_TOTAL: Final = "TrafficController.Measurements.NOxTotal"
DETECTORS: Final = "TrafficController.Detectors"
MEASUREMENTS: Final = "TrafficController.Measurements"

STAGE_PLAN: Final = "TrafficController.StagePlan"
ACTIVATE_PLAN: Final = "TrafficController.ActivatePlan"
ABORT_STAGED: Final = "TrafficController.AbortStaged"

UaType = Literal[
    "String", "UInt64", "UInt32", "Double", "ByteString", "String[]", "UInt64[]", "Double[]"
]


def detector_node(detector_id: str) -> str:
    """String node id of one detector's object (under ``TrafficController.Detectors``)."""
    return f"{DETECTORS}.{detector_id}"


def detector_count_node(detector_id: str) -> str:
    """String node id of one detector's cumulative vehicle count (UInt64)."""
    return f"{DETECTORS}.{detector_id}.Count"


def detector_occupancy_node(detector_id: str) -> str:
    """String node id of one detector's occupancy over the last field second (Double, %)."""
    return f"{DETECTORS}.{detector_id}.Occupancy"


@dataclass(frozen=True)
class VariableSpec:
    """One read-only variable of the controller object."""

    node_id: str
    browse_name: str
    ua_type: UaType
    description: str


@dataclass(frozen=True)
class Argument:
    """One method argument or result."""

    name: str
    ua_type: UaType
    description: str


@dataclass(frozen=True)
class MethodSpec:
    """One method of the controller object."""

    node_id: str
    browse_name: str
    inputs: tuple[Argument, ...]
    outputs: tuple[Argument, ...]
    description: str


VARIABLES: Final[tuple[VariableSpec, ...]] = (
    VariableSpec(
        CONTROLLER_ID, "ControllerId", "String", "Traffic-light id this controller drives."
    ),
    VariableSpec(
        ACTIVE_SEQUENCE,
        "ActiveSequence",
        "UInt64",
        "Sequence of the active plan (0: base program).",
    ),
    VariableSpec(
        ACTIVE_DIGEST,
        "ActiveDigest",
        "String",
        "sha256 hex of the active timing document ('' for the base program).",
    ),
    VariableSpec(
        ACTIVE_FROM_FIELD_TIME,
        "ActiveFromFieldTime",
        "Double",
        "Field time (s) from which the active plan runs.",
    ),
    VariableSpec(
        STAGED_SEQUENCE,
        "StagedSequence",
        "UInt64",
        "Sequence of the staged plan (0: nothing staged).",
    ),
    VariableSpec(
        STAGED_DIGEST,
        "StagedDigest",
        "String",
        "sha256 hex of the staged timing document ('' if none).",
    ),
    VariableSpec(
        STAGED_EXPIRES_AT,
        "StagedExpiresAt",
        "Double",
        "Field time (s) at which the staged plan expires (0 if none).",
    ),
    VariableSpec(FIELD_TIME, "FieldTime", "Double", "The controller's field clock (s)."),
    VariableSpec(HEALTH, "Health", "String", "'ok', or 'fault: <reason>'."),
    VariableSpec(
        DETECTOR_IDS,
        "DetectorIds",
        "String[]",
        "Detector ids, in the order of the two arrays below.",
    ),
    VariableSpec(
        DETECTOR_COUNTS, "DetectorCounts", "UInt64[]", "Cumulative vehicle count per detector."
    ),
    VariableSpec(
        DETECTOR_OCCUPANCY,
        "DetectorOccupancy",
        "Double[]",
        "Occupancy (%) per detector over the last field second.",
    ),
    VariableSpec(
        MEAN_WAIT,
        "MeanWait",
        "Double",
        "Mean waiting time (s) of vehicles in the last measurement interval.",
    ),
    VariableSpec(
        NOX,
        "NOx",
        "Double",
        "NOx emitted (mg) around the intersection in the last measurement interval.",
    ),
    VariableSpec(
        INTERVAL_END,
        "IntervalEnd",
        "Double",
        "Field time (s) at which the last measurement interval ended.",
    ),
    VariableSpec(
        HALTING_TOTAL,
        "HaltingTotal",
        "Double",
        "Halting vehicle-seconds (speed < 0.1 m/s) on the intersection's approach lanes "
        "since the controller started (cumulative, never decreases while it runs).",
    ),
    VariableSpec(
        NOX_TOTAL,
        "NOxTotal",
        "Double",
        "NOx emitted (mg) on the intersection's approach lanes since the controller "
        "started (cumulative).",
    ),
)

#: The cumulative totals (:data:`HALTING_TOTAL`, :data:`NOX_TOTAL`). A controller that
#: predates them does not expose these nodes; the daemon then reads the others alone
#: and treats the intersection's measured deltas as not measurable.
CUMULATIVE_TOTALS: Final = (HALTING_TOTAL, NOX_TOTAL)

_STATUS = Argument("status", "UInt32", "A PlanStatus code (0 = OK).")
_MESSAGE = Argument("message", "String", "What happened, in words (names the failed check).")

METHODS: Final[tuple[MethodSpec, ...]] = (
    MethodSpec(
        STAGE_PLAN,
        "StagePlan",
        (
            Argument(
                "envelope",
                "ByteString",
                "A DSSE JSON envelope holding a signed timing configuration.",
            ),
        ),
        (_STATUS, _MESSAGE),
        "Verify the envelope and the plan it carries and keep it staged (not yet running).",
    ),
    MethodSpec(
        ACTIVATE_PLAN,
        "ActivatePlan",
        (
            Argument("sequence", "UInt64", "Sequence of the staged plan to activate."),
            Argument("at_field_time", "Double", "Field time (s) at which the plan takes over."),
        ),
        (_STATUS, _MESSAGE),
        "Schedule the staged plan to take over at the given field time; "
        "it becomes the active plan.",
    ),
    MethodSpec(
        ABORT_STAGED,
        "AbortStaged",
        (
            Argument(
                "sequence", "UInt64", "Sequence of the staged plan to drop (0: whatever is staged)."
            ),
        ),
        (_STATUS, _MESSAGE),
        "Drop the staged plan; the active plan keeps running.",
    ),
)


class PlanStatus(IntEnum):
    """Status codes returned by StagePlan, ActivatePlan and AbortStaged."""

    OK = 0
    MALFORMED_ENVELOPE = 1
    BAD_SIGNATURE = 2
    UNKNOWN_KEY = 3
    WRONG_PAYLOAD_TYPE = 4
    SCHEMA_INVALID = 5
    OTHER_NETWORK = 6
    INTERSECTION_MISSING = 7
    SEQUENCE_NOT_ABOVE_ACTIVE = 8
    VALIDITY_PASSED = 9
    VALIDITY_NOT_YET = 10
    UNSAFE_TIMING = 11
    NOTHING_STAGED = 12
    SEQUENCE_MISMATCH = 13
    ACTIVATION_IN_PAST = 14
    STAGED_EXPIRED = 15
    SHADOW_PLAN = 16
    VALIDITY_TOO_LONG = 17
    ACTIVATION_TOO_FAR = 18
    BAD_ARGUMENTS = 19
    INTERNAL_ERROR = 99


#: Meaning of each status code (the table in docs/controller-contract.md).
PLAN_STATUS_TEXT: Final[dict[PlanStatus, str]] = {
    PlanStatus.OK: "done",
    PlanStatus.MALFORMED_ENVELOPE: "the bytes are not a well-formed DSSE JSON envelope "
    "(or too large)",
    PlanStatus.BAD_SIGNATURE: "a signature by a provisioned key does not verify over "
    "payloadType and payload",
    PlanStatus.UNKNOWN_KEY: "no signature is by a key provisioned on this controller",
    PlanStatus.WRONG_PAYLOAD_TYPE: "payloadType is not application/vnd.signaltwin.timing+json",
    PlanStatus.SCHEMA_INVALID: "the payload is not a valid signaltwin.timing/v1 document "
    "(strict: no duplicate keys, canonical bytes, exact JSON types)",
    PlanStatus.OTHER_NETWORK: "the document names another network (id or sha256)",
    PlanStatus.INTERSECTION_MISSING: "the document has no timing for this controller's "
    "intersection",
    PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE: "sequence is not above the active plan's "
    "(replay or stale)",
    PlanStatus.VALIDITY_PASSED: "valid_until has passed",
    PlanStatus.VALIDITY_NOT_YET: "valid_from is still in the future (beyond the clock-skew "
    "tolerance)",
    PlanStatus.UNSAFE_TIMING: "the timing breaks safety invariants (named in the message)",
    PlanStatus.NOTHING_STAGED: "ActivatePlan/AbortStaged while nothing is staged",
    PlanStatus.SEQUENCE_MISMATCH: "the sequence given is not the staged plan's",
    PlanStatus.ACTIVATION_IN_PAST: "at_field_time is not after the controller's field time",
    PlanStatus.STAGED_EXPIRED: "the staged plan was not activated in time and was dropped",
    PlanStatus.SHADOW_PLAN: "the document was signed with intent 'shadow' (not deployable)",
    PlanStatus.VALIDITY_TOO_LONG: "valid_until - valid_from exceeds the controller's cap",
    PlanStatus.ACTIVATION_TOO_FAR: "at_field_time is beyond field time + max_activation_lead_s",
    PlanStatus.BAD_ARGUMENTS: "arguments missing, extra or of the wrong OPC UA type "
    "(e.g. UInt32 for UInt64, Float for Double)",
    PlanStatus.INTERNAL_ERROR: "the controller failed; nothing changed",
}
