"""The daemon's side of the contract, by its former path (kept for existing importers).

The code lives in :mod:`actuation.types` (plain data and the :class:`Actuator`
seam), :mod:`actuation.session` (one controller's session), :mod:`actuation.pool`
(reads and the two-phase push) and :mod:`actuation.sync` (the threaded facade).
Import from :mod:`actuation` instead.
"""

from __future__ import annotations

from actuation.pool import ControllerPool, aligned_activation_time, pool_from_settings
from actuation.sync import ThreadedActuator
from actuation.types import (
    Actuator,
    ClientCredentials,
    ControllerPushResult,
    ControllerSnapshot,
    ControllerTarget,
    PushReport,
    SecurityPolicyName,
)

__all__ = [
    "Actuator",
    "ClientCredentials",
    "ControllerPool",
    "ControllerPushResult",
    "ControllerSnapshot",
    "ControllerTarget",
    "PushReport",
    "SecurityPolicyName",
    "ThreadedActuator",
    "aligned_activation_time",
    "pool_from_settings",
]
