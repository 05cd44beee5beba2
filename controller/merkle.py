"""Old import path of :mod:`controller.ledger.merkle` (kept for importers not yet moved)."""

from __future__ import annotations

from controller.ledger.merkle import *  # noqa: F403
from controller.ledger.merkle import __all__ as __all__
