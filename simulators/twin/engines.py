"""The settings' choice of what-if engine: local worker processes or a Ray cluster."""

from __future__ import annotations

__all__ = ["whatif_engine"]

from configs.settings import Settings
from simulators.twin.pool import LibsumoWhatIfEngine
from simulators.twin.ray_engine import RayWhatIfEngine


def whatif_engine(settings: Settings) -> LibsumoWhatIfEngine | RayWhatIfEngine:
    """The engine ``[compute] backend`` names, with ``simulation.workers`` workers.

    A Ray engine is returned unconnected; call its ``connect()`` where an
    unreachable cluster should stop the start-up.
    """
    compute = settings.compute
    if compute.backend == "ray":
        return RayWhatIfEngine(compute, settings.simulation.workers)
    return LibsumoWhatIfEngine(settings.simulation.workers, timeout_s=compute.timeout_s)
