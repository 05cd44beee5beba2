"""The project's error hierarchy: one root, narrow subclasses.

Every package raises these (translating third-party exceptions at its edge with
``raise ... from e``) so that the CLI and the daemon can report a failure with
the stage it belongs to and a message that says what to do.
"""

from __future__ import annotations

__all__ = [
    "ActuationError",
    "ConfigError",
    "LedgerError",
    "SafetyViolation",
    "SignaltwinError",
    "SigningError",
    "SimulationError",
    "Violation",
    "WhatIfCancelled",
]

from dataclasses import dataclass


class SignaltwinError(Exception):
    """Root of every error signaltwin raises on purpose."""


class ConfigError(SignaltwinError):
    """A configuration file or value is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Violation:
    """One broken safety invariant: which, where, and by how much."""

    invariant: str
    intersection: str
    message: str
    phase: int | None = None

    def __str__(self) -> str:
        where = (
            self.intersection if self.phase is None else f"{self.intersection} phase {self.phase}"
        )
        return f"[{self.invariant}] {where}: {self.message}"


class SafetyViolation(SignaltwinError):
    """A timing plan breaks one or more safety invariants (each one named)."""

    def __init__(self, violations: list[Violation] | tuple[Violation, ...]) -> None:
        self.violations: tuple[Violation, ...] = tuple(violations)
        lines = "; ".join(str(v) for v in self.violations[:8])
        more = len(self.violations) - 8
        suffix = f" (+{more} more)" if more > 0 else ""
        super().__init__(f"unsafe timing plan: {lines}{suffix}")

    @property
    def invariants(self) -> set[str]:
        """Names of the invariants that were broken."""
        return {v.invariant for v in self.violations}


class SigningError(SignaltwinError):
    """The HSM could not sign, or a signature/envelope does not verify."""


class ActuationError(SignaltwinError):
    """A controller could not be reached, refused a plan, or read back wrong."""


class SimulationError(SignaltwinError):
    """A SUMO run failed, gridlocked, or its inputs are unusable."""


class WhatIfCancelled(SimulationError):
    """A what-if was cancelled (its cancel event was set) before it finished."""


class LedgerError(SignaltwinError):
    """The ledger could not be written, or does not verify."""
