"""Projection onto the safe set for many candidate plans at once, as tensor operations.

:func:`configs.safety.project` projects one proposal of one intersection: the
cycle is clamped into its safe range, the greens are the least-squares nearest
split of the green time within their bounds (water-filling) and are rounded to
whole seconds without leaving them. Screening projects thousands of candidates
per cycle; doing that one pydantic model at a time costs more than the
surrogate that scores them. :class:`BatchProjector` does the same arithmetic
on ``[N, I, G]`` tensors (``N`` candidates, ``I`` intersections, ``G`` greens)
in float64 on any device, step for step as :func:`~configs.safety.project` does
it (same breakpoints, same interpolation, sums in the same order, the same
largest-remainder rounding), so the whole numbers it gives are the ones the
scalar projection gives; ``tests/unit/test_batch_projection.py`` checks that
property. Only the candidates kept become :class:`~configs.timing.IntersectionTiming`
models (:meth:`BatchProjector.plans`), built and checked by
:func:`configs.safety.build_plan` like every other plan.

The daemon's screening pool (:class:`edge_accel.screening.PerturbationPool`)
projects its perturbations with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from configs.safety import SafeBounds, build_plan, safe_bounds
from configs.timing import (
    AdaptiveLogic,
    BaseProgram,
    IntersectionTiming,
    LimitsSource,
    SafetyLimits,
    intersection_limits,
)

__all__ = ["BatchProjector", "ProjectedBatch"]


@dataclass(frozen=True)
class ProjectedBatch:
    """Projected candidates: ``green_s [N, I, G]`` and ``cycle_s [N, I]`` whole seconds (int64).

    Greens past an intersection's own count are zero.
    """

    green_s: torch.Tensor
    cycle_s: torch.Tensor


class BatchProjector:
    """The safe sets of a district's intersections, bounded by the plans in force.

    Args:
        bases: intersection -> its approved base program (in the mode projected onto).
        limits: the safety limits (the settings' section applies per-intersection overrides).
        current: the plans in force (each bounds its intersection's change), or None.
        order: the intersections, in the order of the tensors' ``I`` axis.
        device: where the tensors live (default CPU).

    Raises:
        SafetyViolation: an intersection's limits admit no plan at all.
    """

    def __init__(
        self,
        bases: Mapping[str, BaseProgram],
        limits: SafetyLimits | LimitsSource,
        current: Mapping[str, IntersectionTiming] | None,
        order: Sequence[str],
        device: torch.device | None = None,
    ) -> None:
        self.order = tuple(order)
        self.device = device or torch.device("cpu")
        previous = current or {}
        self._bases = {t: bases[t] for t in self.order}
        self._limits = {t: intersection_limits(limits, t) for t in self.order}
        self._bounds: dict[str, SafeBounds] = {
            t: safe_bounds(t, self._bases[t], self._limits[t], previous.get(t)) for t in self.order
        }
        self.greens = tuple(len(self._bounds[t].lo) for t in self.order)
        g = max(self.greens, default=0)
        i = len(self.order)
        lo = torch.zeros((i, g), dtype=torch.float64)
        hi = torch.zeros((i, g), dtype=torch.float64)
        for k, t in enumerate(self.order):
            b = self._bounds[t]
            lo[k, : len(b.lo)] = torch.tensor(b.lo, dtype=torch.float64)
            hi[k, : len(b.hi)] = torch.tensor(b.hi, dtype=torch.float64)
        counts = torch.tensor(self.greens, dtype=torch.int64)
        self._mask = (torch.arange(g).unsqueeze(0) < counts.unsqueeze(1)).to(self.device)
        self._lo = lo.to(self.device)
        self._hi = hi.to(self.device)
        self._fixed = torch.tensor(
            [self._bounds[t].fixed_total for t in self.order], dtype=torch.float64
        ).to(self.device)
        self._cycle_lo = torch.tensor(
            [self._bounds[t].cycle_lo for t in self.order], dtype=torch.float64
        ).to(self.device)
        self._cycle_hi = torch.tensor(
            [self._bounds[t].cycle_hi for t in self.order], dtype=torch.float64
        ).to(self.device)

    def project(self, green_s: torch.Tensor, cycle_s: torch.Tensor) -> ProjectedBatch:
        """Project wanted greens ``[N, I, G]`` and cycles ``[N, I]`` (finite reals).

        Entries past an intersection's own greens are ignored.
        """
        mask = self._mask.unsqueeze(0)
        want = torch.where(mask, green_s.to(self.device, torch.float64).clamp(min=0.0), 0.0)
        cycle = torch.round(cycle_s.to(self.device, torch.float64))
        cycle = torch.minimum(torch.maximum(cycle, self._cycle_lo), self._cycle_hi)
        total = cycle - self._fixed  # [N, I]
        split = self._water_fill(want, total)
        return ProjectedBatch(self._round_preserving_sum(split, total), cycle.to(torch.int64))

    def _filled(self, want: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``min(max(want + shift, lo), hi)`` with ``shift [N, I]``; zero past the greens."""
        x = torch.minimum(torch.maximum(want + shift.unsqueeze(-1), self._lo), self._hi)
        return torch.where(self._mask, x, 0.0)

    @staticmethod
    def _sum(x: torch.Tensor) -> torch.Tensor:
        """Sum over the last axis from left to right (the order Python's ``sum`` adds in)."""
        acc = x[..., 0] if x.shape[-1] else torch.zeros(x.shape[:-1], dtype=x.dtype)
        for k in range(1, x.shape[-1]):
            acc = acc + x[..., k]
        return acc

    def _water_fill(self, want: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Batched :func:`configs.safety._water_fill` (same breakpoints and interpolation)."""
        g = want.shape[-1]
        if g == 0:
            return want
        inf = torch.tensor(float("inf"), dtype=torch.float64, device=self.device)
        valid = torch.cat((self._mask, self._mask), dim=-1).unsqueeze(0)  # [1, I, 2G]
        points = torch.cat((self._lo - want, self._hi - want), dim=-1)
        points = torch.where(valid, points, inf)
        points, _ = torch.sort(points, dim=-1)  # invalid ones (inf) last
        count = 2 * torch.tensor(self.greens, device=self.device).unsqueeze(0)  # [1, I]
        reached = torch.stack(
            [self._sum(self._filled(want, points[..., j])) for j in range(2 * g)], dim=-1
        )  # [N, I, 2G]
        index = torch.arange(2 * g, device=self.device)
        ok = (reached >= total.unsqueeze(-1)) & (index < count.unsqueeze(-1))
        found = ok.any(dim=-1)
        first = torch.where(found, ok.to(torch.int8).argmax(dim=-1), count - 1)  # [N, I]
        before = (first - 1).clamp(min=0)
        p1 = points.gather(-1, first.unsqueeze(-1)).squeeze(-1)
        r1 = reached.gather(-1, first.unsqueeze(-1)).squeeze(-1)
        p0 = points.gather(-1, before.unsqueeze(-1)).squeeze(-1)
        r0 = reached.gather(-1, before.unsqueeze(-1)).squeeze(-1)
        at_point = ~found | (first == 0) | (r1 == r0)
        denominator = torch.where(at_point, 1.0, r1 - r0)
        shift = torch.where(at_point, p1, p0 + (total - r0) * (p1 - p0) / denominator)
        return self._filled(want, shift)

    def _round_preserving_sum(self, x: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Batched :func:`configs.safety._round_preserving_sum` (largest remainder)."""
        lo = self._lo.to(torch.int64).expand_as(x)
        hi = self._hi.to(torch.int64).expand_as(x)
        floor = torch.floor(x)
        out = torch.minimum(torch.maximum(floor.to(torch.int64), lo), hi)
        remainder = total.to(torch.int64) - self._sum(out)
        # Python's sorted(..., reverse=True) is stable: ties keep their index order
        order = torch.sort(x - floor, dim=-1, descending=True, stable=True).indices
        g = x.shape[-1]
        while True:
            moved = torch.zeros_like(remainder, dtype=torch.bool)
            for r in range(g):
                idx = order[..., r : r + 1]
                value = out.gather(-1, idx).squeeze(-1)
                up = (remainder > 0) & (value < hi.gather(-1, idx).squeeze(-1))
                down = (remainder < 0) & (value > lo.gather(-1, idx).squeeze(-1))
                step = up.to(torch.int64) - down.to(torch.int64)
                out = out.scatter_add(-1, idx, step.unsqueeze(-1))
                remainder = remainder - step
                moved |= step != 0
            if not bool(moved.any()):
                return out

    def plans(
        self,
        batch: ProjectedBatch,
        index: int,
        offset_s: Mapping[str, float | None] | None = None,
        adaptive: Mapping[str, AdaptiveLogic | None] | None = None,
    ) -> dict[str, IntersectionTiming]:
        """Candidate ``index`` as checked plans (:func:`configs.safety.build_plan`).

        Args:
            batch: what :meth:`project` returned.
            index: the candidate.
            offset_s: intersection -> wanted offset (None or absent keeps the plan in force's).
            adaptive: intersection -> the real-time logic of an adaptive plan
                (absent: the base's defaults, for an adaptive base).

        Raises:
            SafetyViolation: a plan breaks an invariant (a bug in the projection).
        """
        greens = batch.green_s[index].cpu().tolist()
        cycles = batch.cycle_s[index].cpu().tolist()
        offsets = offset_s or {}
        logic = adaptive or {}
        out: dict[str, IntersectionTiming] = {}
        for k, t in enumerate(self.order):
            out[t] = build_plan(
                t,
                self._bases[t],
                self._limits[t],
                self._bounds[t],
                int(cycles[k]),
                [int(v) for v in greens[k][: self.greens[k]]],
                offsets.get(t),
                logic.get(t),
            )
        return out
