"""The outcome vocabularies: one enum per question, shared by every stage.

A push, a cycle record, a deployment record and the cycles metric each
answer a different question, so each has its own closed set of answers. They
are ``StrEnum`` so that the value written to the ledger or a metric label is
the plain string an auditor reads.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CycleOutcome", "DeploymentResult", "PushOutcome"]


class PushOutcome(StrEnum):
    """What one push of a plan to every controller did."""

    ACTIVATED = "activated"
    """Every controller staged, activated and read back the plan."""
    ABORTED = "aborted"
    """Staging failed somewhere; the plan was dropped everywhere (nothing changed)."""
    PARTIAL = "partial"
    """Every controller staged, but activation or read-back failed on some."""
    UNKNOWN = "unknown"
    """The push itself raised: the field's state is not known."""


class CycleOutcome(StrEnum):
    """The ``outcome`` of a cycle record in the ledger."""

    PUSHING = "pushing"
    """Signed and about to be pushed (written before the push, so a crash is seen)."""
    REFUSED = "refused"
    """The gate refused every candidate; nothing was signed or pushed."""
    SHADOW = "shadow"
    """Shadow mode: the passing plan was signed and recorded, not pushed."""
    FAILED = "failed"
    """A stage failed; nothing was deployed."""
    SKIPPED = "skipped"
    """The slot was skipped (overrun, missed, busy)."""


class DeploymentResult(StrEnum):
    """What a cycle did to the field, as ``signaltwin_cycles_total{result}`` counts.

    ``deployed`` and ``shadow`` cycles signed a plan: they are also counted in
    ``signaltwin_deployments_total{result}``.
    """

    DEPLOYED = "deployed"
    SHADOW = "shadow"
    REFUSED = "refused"
    FAILED = "failed"
    ABORTED = "aborted"
