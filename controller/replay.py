"""The SUMO twin as the auditor's :class:`~controller.audit.Replayer`.

``signaltwin audit replay N`` rebuilds cycle N's what-if request from the ledger
(:meth:`simulators.twin.WhatIfRequest.from_dict`, which re-checks the network and
demand files' sha256), runs it on :class:`simulators.twin.LibsumoWhatIfEngine`
with the recorded seeds, and hands back :meth:`WhatIfResult.to_dict` for the
comparison with the recorded numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from configs.errors import ConfigError, LedgerError
from simulators.twin import LibsumoWhatIfEngine, WhatIfRequest

__all__ = ["TwinReplayer", "twin_replayer"]


class TwinReplayer:
    """Replays what-if requests on libsumo with ``workers`` processes."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)

    def __call__(self, request: Mapping[str, Any], base_dir: Path) -> Mapping[str, Any]:
        """Run the recorded request (input paths already located) and return the result."""
        try:
            parsed = WhatIfRequest.from_dict(request)
        except (KeyError, TypeError, ValueError) as e:
            raise LedgerError(f"the recorded what-if request is incomplete: {e!r}") from e
        except ConfigError as e:
            raise LedgerError(f"cannot replay: {e}") from e
        with LibsumoWhatIfEngine(workers=self.workers) as engine:
            result = engine.evaluate(parsed)
        data: Mapping[str, Any] = result.to_dict()
        return data


#: The default replayer (as many workers as cores, at most 4).
twin_replayer = TwinReplayer()
