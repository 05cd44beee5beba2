"""The screening search: the pool of candidate plans the surrogate ranks.

Around the proposals of a cycle (the RL policy's, Webster's) this draws seeded
random perturbations (every green and the cycle scaled a little), projects
them onto the safe set as tensors (:mod:`edge_accel.projection`) and hands
the surrogate their arrays, building plans only for the few that are kept;
it also pools the district's demand into the features every candidate
shares. :mod:`edge_accel.surrogate` scores the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt
import torch

from configs.errors import ConfigError
from configs.timing import (
    AdaptiveLogic,
    BaseProgram,
    IntersectionTiming,
    LimitsSource,
    SafetyLimits,
)
from edge_accel.projection import BatchProjector, ProjectedBatch
from edge_accel.surrogate import PlanArrays, plan_arrays

__all__ = ["PerturbationPool", "demand_features", "flow_ratio_array"]

Plans = Mapping[str, IntersectionTiming]
Entry = tuple[str, dict[str, IntersectionTiming]]


def demand_features(flow_ratios: Sequence[float]) -> npt.NDArray[np.float32]:
    """Demand features shared by every candidate: the district's flow ratios pooled.

    Args:
        flow_ratios: per intersection, the sum of its critical flow ratios.

    Returns:
        ``[mean, min, max]`` of the ratios (zeros without intersections).
    """
    if not flow_ratios:
        return np.zeros(3, dtype=np.float32)
    arr = np.asarray(flow_ratios, dtype=np.float32)
    return np.asarray([arr.mean(), arr.min(), arr.max()], dtype=np.float32)


def flow_ratio_array(
    flow_ratios: Mapping[str, Sequence[float]], tls_order: Sequence[str], max_greens: int = 4
) -> npt.NDArray[np.float32]:
    """``[I, max_greens]`` critical flow ratios in ``tls_order`` (zero past a light's greens).

    Raises:
        ConfigError: an intersection of ``tls_order`` has no flow ratios.
    """
    out = np.zeros((len(tls_order), max_greens), dtype=np.float32)
    for i, tls_id in enumerate(tls_order):
        ratios = flow_ratios.get(tls_id)
        if ratios is None:
            raise ConfigError(f"surrogate features: no flow ratios for {tls_id!r}")
        width = min(max_greens, len(ratios))
        out[i, :width] = np.asarray(ratios[:width], dtype=np.float32)
    return out


class PerturbationPool(Sequence[Entry]):
    """The proposals and ``n`` seeded perturbations of them, projected onto the safe set.

    Each perturbation scales its origin's cycle by one factor drawn from
    U(0.85, 1.15) and every green of every intersection by its own factor from
    U(0.8, 1.2); origins take turns (perturbation ``k`` perturbs proposal
    ``k mod len(proposals)``, by name). The draws are taken from one
    ``numpy.random.default_rng(seed)`` stream in the order a loop over
    ``k``, then the origin's intersections, then their greens would take them,
    so the pool is reproducible from the seed.

    The perturbations are projected as tensors
    (:class:`edge_accel.projection.BatchProjector`: the same whole-second
    plans as :func:`configs.safety.project_plans`), and their arrays go to the
    surrogate as they are (:meth:`arrays`); a perturbation becomes
    :class:`~configs.timing.IntersectionTiming` models only when asked for
    (indexing the pool), which screening does only for the few it keeps.

    A perturbation keeps its origin's mode: an actuated proposal's perturbations
    are actuated plans (min and max greens from the perturbed greens), an
    adaptive one's are adaptive plans with the origin's real-time logic
    (weights, margin, coordination) unchanged; only the greens and the cycle move.

    Args:
        candidates: candidate name -> its plans (the cycle's proposals).
        current: the plans running now (bound each change).
        bases: each intersection's approved base program.
        limits: the safety limits (per intersection when the settings' section).
        seed: the random seed (the simulation's base seed).
        n: how many perturbations to draw.
        device: where the projection runs (default CPU).
        mode_base: ``(base, mode) -> base`` the plans of ``mode`` are projected
            onto (:func:`rl.baselines.as_mode`), for proposals in another mode
            than their base program.

    Raises:
        ConfigError: a proposal names an intersection without a base program,
            or runs in another mode than its base program and no ``mode_base``
            gives one in its mode.
        SafetyViolation: an intersection's limits admit no plan at all.
    """

    def __init__(
        self,
        candidates: Mapping[str, Plans],
        current: Plans,
        bases: Mapping[str, BaseProgram],
        limits: SafetyLimits | LimitsSource,
        *,
        seed: int,
        n: int,
        device: torch.device | None = None,
        mode_base: Callable[[BaseProgram, str], BaseProgram] | None = None,
    ) -> None:
        self._names = sorted(candidates)
        self._proposals = [(name, dict(candidates[name])) for name in self._names]
        self.n = max(0, int(n))
        self._origins: list[_Origin] = []
        if not self._names or self.n == 0:
            return
        origin_bases = {
            name: _origin_bases(name, candidates[name], bases, mode_base) for name in self._names
        }
        # draws per perturbation of each origin: its cycle factor, then every green
        widths = [
            1 + sum(len(bases[t].green_indices) for t in candidates[name]) for name in self._names
        ]
        starts = np.concatenate(([0], np.cumsum(widths)))
        block = int(starts[-1])
        k = np.arange(self.n)
        ks = k // len(self._names)
        last = self.n - 1
        total = (last // len(self._names)) * block + int(starts[last % len(self._names) + 1])
        u = np.random.default_rng(seed).random(total)
        for o, name in enumerate(self._names):
            rows = k[o :: len(self._names)]
            plans = candidates[name]
            order = tuple(plans)
            projector = BatchProjector(origin_bases[name], limits, current, order, device)
            draws = u[(ks[rows] * block + int(starts[o]))[:, None] + np.arange(widths[o])]
            g = max(projector.greens, default=0)
            green = np.zeros((len(rows), len(order), g))
            column = 1
            for i, tls_id in enumerate(order):
                phases = plans[tls_id].phases
                durations = [phases[j].duration_s for j in bases[tls_id].green_indices]
                width = len(durations)
                factor = 0.8 + (1.2 - 0.8) * draws[:, column : column + width]
                green[:, i, :width] = np.asarray(durations, dtype=np.float64) * factor
                column += width
            scale = 0.85 + (1.15 - 0.85) * draws[:, 0]
            cycle = np.asarray([plans[t].cycle_s for t in order], dtype=np.float64)[None, :]
            batch = projector.project(
                torch.from_numpy(green), torch.from_numpy(cycle * scale[:, None])
            )
            logic = {
                t: plans[t].adaptive if origin_bases[name][t].mode == "adaptive" else None
                for t in order
            }
            self._origins.append(
                _Origin(name, rows, projector, batch, {t: plans[t].offset_s for t in order}, logic)
            )

    def __len__(self) -> int:
        return len(self._proposals) + self.n

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | list[Entry]:
        """``(name, plans)`` of entry ``index``: the proposals first, then ``"<origin>~<k>"``."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError(f"pool entry {index} of {len(self)}")
        if i < len(self._proposals):
            name, plans = self._proposals[i]
            return name, dict(plans)
        k = i - len(self._proposals)
        origin = self._origins[k % len(self._names)]
        row = k // len(self._names)
        plans = origin.projector.plans(origin.batch, row, origin.offsets, origin.adaptive)
        return f"{origin.name}~{k}", plans

    def arrays(self, tls_order: Sequence[str], max_greens: int = 4) -> PlanArrays:
        """The whole pool as :class:`~edge_accel.surrogate.PlanArrays` in ``tls_order``.

        The same arrays :func:`~edge_accel.surrogate.plan_arrays` makes from the
        pool's plans, without building them.

        Raises:
            ConfigError: an entry lacks an intersection of ``tls_order``.
        """
        for name, plans in self._proposals:
            missing = [t for t in tls_order if t not in plans]
            if missing:
                raise ConfigError(
                    f"surrogate features: candidate {name!r} has no timing for {missing[0]!r}"
                )
        head = plan_arrays([plans for _, plans in self._proposals], tls_order, max_greens)
        n, i_count = len(self), len(tls_order)
        green = np.zeros((n, i_count, max_greens), dtype=np.float32)
        cycle = np.zeros((n, i_count), dtype=np.float32)
        offset = np.zeros((n, i_count), dtype=np.float32)
        p = len(self._proposals)
        green[:p], cycle[:p], offset[:p] = head.green_s, head.cycle_s, head.offset_s
        for origin in self._origins:
            position = {t: i for i, t in enumerate(origin.projector.order)}
            columns = [position[t] for t in tls_order]
            greens = origin.batch.green_s[:, columns].cpu().numpy()
            cycles = origin.batch.cycle_s[:, columns].cpu().numpy()
            wanted = np.asarray([origin.offsets[t] for t in tls_order], dtype=np.float64)
            offs = np.round(wanted)[None, :] % cycles  # as build_plan places the offset
            rows = p + origin.rows
            width = min(max_greens, greens.shape[-1])
            green[rows, :, :width] = greens[..., :width]
            cycle[rows] = cycles
            offset[rows] = offs
        return PlanArrays(green, cycle, offset)


@dataclass(frozen=True)
class _Origin:
    """One proposal's perturbations: pool rows, projector, projected batch, wanted offsets.

    ``adaptive``: the origin's real-time logic per intersection (None where not adaptive).
    """

    name: str
    rows: npt.NDArray[np.int64]
    projector: BatchProjector
    batch: ProjectedBatch
    offsets: Mapping[str, float]
    adaptive: Mapping[str, AdaptiveLogic | None]


def _origin_bases(
    name: str,
    plans: Plans,
    bases: Mapping[str, BaseProgram],
    mode_base: Callable[[BaseProgram, str], BaseProgram] | None,
) -> dict[str, BaseProgram]:
    """The base programs a proposal's perturbations are projected onto: in its plans' modes."""
    out: dict[str, BaseProgram] = {}
    for tls_id, plan in plans.items():
        base = bases.get(tls_id)
        if base is None:
            raise ConfigError(f"{tls_id}: proposal for an intersection without a base program")
        if plan.mode != base.mode and mode_base is not None:
            base = mode_base(base, plan.mode)
        if plan.mode != base.mode:
            raise ConfigError(
                f"candidate {name!r}, {tls_id}: the plan runs {plan.mode} but its base program "
                f"is {base.mode}; its perturbations would lose the mode (pass mode_base)"
            )
        out[tls_id] = base
    return out
