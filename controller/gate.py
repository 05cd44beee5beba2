"""The deployment gate: which candidate, if any, may be deployed.

Pure logic (no I/O). A candidate passes when the twin shows, against the current
plan on paired seeds,

* a reduction of mean waiting time of at least ``min_wait_reduction``, and
* an increase of total NOx strictly below ``max_nox_increase``,

decided on the point estimate or, with ``decide_on = "confidence_bound"``, on the
pessimistic end of each confidence interval (the upper bound of the wait change,
the upper bound of the NOx change). A candidate whose simulation failed
(gridlock, crash) never passes. Every candidate gets its reasons recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from configs.settings import GateSettings

__all__ = ["CandidateOutcome", "GateDecision", "GateVerdict", "decide"]

Verdict = Literal["pass", "refuse_wait", "refuse_nox", "refuse_failed"]


@dataclass(frozen=True)
class CandidateOutcome:
    """What the twin predicts for one candidate against the current plan.

    Changes are relative fractions (negative = lower than the current plan).
    """

    name: str
    wait_change: float
    wait_change_ci: tuple[float, float]
    nox_change: float
    nox_change_ci: tuple[float, float]
    failed: str | None = None
    #: why the twin ran it on the first seeds only (sequential elimination), else None
    eliminated: str | None = None


@dataclass(frozen=True)
class GateVerdict:
    """The gate's finding for one candidate."""

    candidate: str
    verdict: Verdict
    reasons: tuple[str, ...]
    wait_reduction_used: float
    nox_increase_used: float

    @property
    def passed(self) -> bool:
        """Whether the candidate cleared both thresholds."""
        return self.verdict == "pass"


@dataclass(frozen=True)
class GateDecision:
    """The gate's decision for one cycle: the chosen candidate (or none) and why."""

    chosen: str | None
    decision: Verdict
    verdicts: tuple[GateVerdict, ...] = field(default_factory=tuple)
    basis: str = "point"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        return {
            "chosen": self.chosen,
            "decision": self.decision,
            "basis": self.basis,
            "verdicts": [asdict(v) | {"reasons": list(v.reasons)} for v in self.verdicts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateDecision:
        """Inverse of :meth:`to_dict` (a recorded decision; extra keys such as ``held`` ignored).

        Raises:
            ValueError: not a recorded gate decision.
        """
        try:
            verdicts = tuple(
                GateVerdict(
                    candidate=str(v["candidate"]),
                    verdict=_verdict(v["verdict"]),
                    reasons=tuple(str(r) for r in v["reasons"]),
                    wait_reduction_used=float(v["wait_reduction_used"]),
                    nox_increase_used=float(v["nox_increase_used"]),
                )
                for v in data.get("verdicts", ())
            )
            chosen = data.get("chosen")
            return cls(
                chosen=None if chosen is None else str(chosen),
                decision=_verdict(data["decision"]),
                verdicts=verdicts,
                basis=str(data.get("basis", "point")),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a recorded gate decision: {type(e).__name__}: {e}") from e


_VERDICTS: tuple[Verdict, ...] = ("pass", "refuse_wait", "refuse_nox", "refuse_failed")


def _verdict(value: object) -> Verdict:
    for verdict in _VERDICTS:
        if value == verdict:
            return verdict
    raise ValueError(f"unknown gate verdict {value!r}; expected one of {', '.join(_VERDICTS)}")


def _judge(outcome: CandidateOutcome, gate: GateSettings) -> GateVerdict:
    on_bound = gate.decide_on == "confidence_bound"
    # the pessimistic ends: the least wait reduction, the largest NOx increase
    wait_change = outcome.wait_change_ci[1] if on_bound else outcome.wait_change
    nox_change = outcome.nox_change_ci[1] if on_bound else outcome.nox_change
    basis = f"{gate.confidence_level:.0%} confidence bound" if on_bound else "point estimate"
    reduction = -wait_change
    if outcome.failed:
        return GateVerdict(
            outcome.name,
            "refuse_failed",
            (f"simulation failed: {outcome.failed}",),
            reduction,
            nox_change,
        )
    if outcome.eliminated:
        # judged on fewer seeds than the gate requires: never deployed
        return GateVerdict(
            outcome.name,
            "refuse_wait",
            (f"{outcome.eliminated}; wait reduction {reduction:.1%} ({basis} on those seeds)",),
            reduction,
            nox_change,
        )
    reasons: list[str] = []
    verdict: Verdict = "pass"
    if reduction >= gate.min_wait_reduction:
        reasons.append(f"wait reduction {reduction:.1%} >= {gate.min_wait_reduction:.1%} ({basis})")
    else:
        verdict = "refuse_wait"
        reasons.append(f"wait reduction {reduction:.1%} < {gate.min_wait_reduction:.1%} ({basis})")
    if nox_change < gate.max_nox_increase:
        reasons.append(f"NOx change {nox_change:+.2%} < +{gate.max_nox_increase:.2%} ({basis})")
    else:
        verdict = "refuse_nox" if verdict == "pass" else verdict
        reasons.append(f"NOx change {nox_change:+.2%} >= +{gate.max_nox_increase:.2%} ({basis})")
    return GateVerdict(outcome.name, verdict, tuple(reasons), reduction, nox_change)


def decide(outcomes: Sequence[CandidateOutcome], gate: GateSettings) -> GateDecision:
    """Judge every candidate; choose the passing one with the largest wait reduction.

    Ties are broken by the lower NOx change, then by name, so the decision is a
    pure function of its inputs (auditors replay it).
    """
    verdicts = tuple(_judge(o, gate) for o in outcomes)
    basis = gate.decide_on
    passing = [v for v in verdicts if v.passed]
    if passing:
        best = min(
            passing, key=lambda v: (-v.wait_reduction_used, v.nox_increase_used, v.candidate)
        )
        return GateDecision(best.candidate, "pass", verdicts, basis)
    if not verdicts:
        return GateDecision(None, "refuse_failed", verdicts, basis)
    # report the most informative refusal: wait before NOx before failed
    order: dict[Verdict, int] = {"refuse_wait": 0, "refuse_nox": 1, "refuse_failed": 2, "pass": 3}
    worst = min((v.verdict for v in verdicts), key=order.__getitem__)
    return GateDecision(None, worst, verdicts, basis)
