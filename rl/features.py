"""Per-intersection observations and actions of the shared policy (pure numpy).

One policy serves every intersection (parameter sharing): each intersection is
one sample. Its observation is built only from what field controllers report
(detector counts and occupancy on its approaches) and its current timing, so
the same features exist in training, in the twin and in the field.

Layout of one observation vector (``OBS_DIM`` floats, all roughly in [0, 1]):

* for each of ``MAX_GREENS`` green-phase slots (base program order; slots past
  the light's green count are zero and masked):
  ``flow_ratio`` (critical lane flow / saturation flow), ``occupancy`` (mean over
  the phase's detectors), ``queue`` (max occupancy of the phase's detectors, a
  stop-line queue proxy), ``green_share`` (green / cycle), ``green_norm``
  (green / 100 s);
* the mask (1 for a real green phase);
* ``cycle / 150``, ``sin``/``cos`` of the offset's position in the cycle, the
  sum of critical flow ratios ``Y`` and the intersection's mean occupancy.

An action (``ACT_DIM`` floats in [-1, 1]) is a bounded adjustment **of the
engineer-approved base program** (action scheme 2): one value per green slot
(each base green multiplied by ``2 ** (SPLIT_GAIN * a)``), one for the cycle
(base cycle ``+ CYCLE_GAIN_S * a``) and one for the offset (base offset
``+ OFFSET_GAIN_S * a``). The zero action proposes the base program's own
timings, and the same observation always gives the same proposal, whatever the
history: plans cannot drift by accumulating small changes interval after
interval (scheme 1, adjustments of the plan in force, did; its weights are
refused by :meth:`rl.policy.TorchPolicy.load`). How fast a plan may move per
deployment stays the projection's business (cycle and split change limits
against the plan in force). :func:`action_to_proposal` turns an action into a
:class:`configs.safety.Proposal`; only :func:`configs.safety.project` makes it
a plan.

For a light whose base runs ``adaptive`` (the controller's real-time logic), the
same action reads: each green slot's value ``a`` scales that green's nominal and
maximum green as above and weighs its pressure by ``2 ** (WEIGHT_GAIN a)``; the
cycle slot scales the switch margin (``ADAPTIVE_MARGIN_VEH * 2 ** a``) and the
offset slot sets the downstream weight (``ADAPTIVE_DOWNSTREAM (1 + a)``). The
zero action is the adaptive defaults that :func:`rl.baselines.adaptive_plans`
deploys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from configs.errors import ConfigError
from configs.safety import Proposal
from configs.timing import AdaptiveLogic, BaseProgram, IntersectionTiming
from simulators.network import NetworkModel

__all__ = [
    "ACTION_SCHEME",
    "ACT_DIM",
    "CYCLE_GAIN_S",
    "MAX_GREENS",
    "OBS_DIM",
    "OFFSET_GAIN_S",
    "SATURATION_VPH_PER_LANE",
    "SPLIT_GAIN",
    "IntersectionLayout",
    "IntersectionObservation",
    "action_to_proposal",
    "build_observations",
    "critical_flow_ratios",
    "encode",
    "encode_batch",
    "layouts_from_network",
    "plan_to_action",
]

MAX_GREENS = 8
"""Green slots of an observation: a light with more greens is seen by its first eight,
and its further greens keep the base program's timing (zero action)."""
PER_GREEN = 5
OBS_DIM = MAX_GREENS * PER_GREEN + MAX_GREENS + 5
ACT_DIM = MAX_GREENS + 2
SATURATION_VPH_PER_LANE = 1800.0
"""Saturation flow of one lane (veh/h of green), the textbook default."""
ACTION_SCHEME = 2
"""How actions are read: 2 = adjustments of the base program (see the module docstring)."""
SPLIT_GAIN = 0.5
CYCLE_GAIN_S = 20.0
OFFSET_GAIN_S = 10.0
WEIGHT_GAIN = 1.0
"""Adaptive plans: a green slot's action ``a`` weighs its pressure by ``2 ** a``."""
ADAPTIVE_MARGIN_VEH: float = AdaptiveLogic.model_fields["switch_margin_veh"].default
"""Adaptive plans: the switch margin at the zero action (the cycle slot's ``a`` scales it by
``2 ** a``)."""
ADAPTIVE_DOWNSTREAM: float = AdaptiveLogic.model_fields["downstream_weight"].default
"""Adaptive plans: the downstream weight at the zero action (the offset slot's ``a`` moves it
to ``0.5 (1 + a)``)."""

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class IntersectionLayout:
    """What the features need to know about a light: its base and its detectors."""

    tls_id: str
    base: BaseProgram
    green_detectors: tuple[tuple[str, ...], ...]
    """For each green phase (base order): detectors on the lanes it gives green."""

    @property
    def detectors(self) -> tuple[str, ...]:
        """Every detector of the light, sorted."""
        return tuple(sorted({d for group in self.green_detectors for d in group}))


@dataclass(frozen=True)
class IntersectionObservation:
    """One intersection at the end of an interval: what the policy sees."""

    layout: IntersectionLayout
    interval_s: float
    counts_veh: Mapping[str, float]
    """Detector id -> vehicles counted in the interval."""
    timing: IntersectionTiming
    """The plan that ran during the interval."""
    occupancy: Mapping[str, float] | None = None
    """Detector id -> mean occupancy (fraction 0..1); None when not reported."""

    @property
    def tls_id(self) -> str:
        """The light's id."""
        return self.layout.tls_id


def layouts_from_network(network: NetworkModel) -> dict[str, IntersectionLayout]:
    """Build every light's layout from a network model with detectors.

    A detector serves a green phase when its lane has a link that is green
    (``G``/``g``) in that phase's state.

    A light with more than :data:`MAX_GREENS` greens is observed through its
    first ones (see :data:`MAX_GREENS`).
    """
    by_tls = network.detectors_by_intersection()
    out: dict[str, IntersectionLayout] = {}
    for tls_id, inter in sorted(network.intersections.items()):
        base = inter.base
        lane_dets: dict[str, list[str]] = {}
        for det in by_tls.get(tls_id, ()):
            lane_dets.setdefault(det.lane_id, []).append(det.id)
        groups: list[tuple[str, ...]] = []
        for index in base.green_indices:
            state = base.phases[index].state
            served = {
                link.from_lane
                for link in inter.links
                if not link.pedestrian and link.index < len(state) and state[link.index] in "Gg"
            }
            groups.append(tuple(sorted(d for lane in served for d in lane_dets.get(lane, ()))))
        out[tls_id] = IntersectionLayout(tls_id, base, tuple(groups))
    return out


def build_observations(
    layouts: Mapping[str, IntersectionLayout],
    counts_veh: Mapping[str, float],
    interval_s: float,
    timings: Mapping[str, IntersectionTiming],
    occupancy: Mapping[str, float] | None = None,
) -> dict[str, IntersectionObservation]:
    """One observation per light that has a current timing."""
    return {
        tls_id: IntersectionObservation(layout, interval_s, counts_veh, timings[tls_id], occupancy)
        for tls_id, layout in layouts.items()
        if tls_id in timings
    }


def critical_flow_ratios(
    obs: IntersectionObservation,
    saturation_vph_per_lane: float = SATURATION_VPH_PER_LANE,
) -> list[float]:
    """Critical flow ratio ``y`` of each green phase: its busiest lane's flow / saturation.

    One detector is one lane, so the busiest detector of a phase is its critical lane.
    """
    hours = max(obs.interval_s, 1.0) / 3600.0
    out: list[float] = []
    for group in obs.layout.green_detectors:
        flows = [max(0.0, float(obs.counts_veh.get(d, 0.0))) / hours for d in group]
        out.append(max(flows, default=0.0) / saturation_vph_per_lane)
    return out


def encode(obs: IntersectionObservation) -> FloatArray:
    """The observation vector of one intersection (see the module docstring)."""
    base = obs.layout.base
    greens = obs.timing.green_durations(base)
    cycle = float(obs.timing.cycle_s)
    ratios = critical_flow_ratios(obs)
    occ = obs.occupancy or {}
    vec = np.zeros(OBS_DIM, dtype=np.float32)
    all_occ: list[float] = []
    for slot, group in enumerate(obs.layout.green_detectors[:MAX_GREENS]):
        values = [min(1.0, max(0.0, float(occ.get(d, 0.0)))) for d in group]
        all_occ.extend(values)
        row = slot * PER_GREEN
        vec[row + 0] = min(ratios[slot], 2.0)
        vec[row + 1] = float(np.mean(values)) if values else 0.0
        vec[row + 2] = max(values, default=0.0)
        green = float(greens[slot]) if slot < len(greens) else 0.0
        vec[row + 3] = green / cycle
        vec[row + 4] = green / 100.0
        vec[MAX_GREENS * PER_GREEN + slot] = 1.0
    tail = MAX_GREENS * PER_GREEN + MAX_GREENS
    angle = 2.0 * math.pi * obs.timing.offset_s / cycle
    vec[tail + 0] = cycle / 150.0
    vec[tail + 1] = math.sin(angle)
    vec[tail + 2] = math.cos(angle)
    vec[tail + 3] = min(sum(ratios), 3.0)
    vec[tail + 4] = float(np.mean(all_occ)) if all_occ else 0.0
    return vec


def encode_batch(observations: Sequence[IntersectionObservation]) -> FloatArray:
    """Stack :func:`encode` over intersections: shape ``(n, OBS_DIM)``."""
    if not observations:
        return np.zeros((0, OBS_DIM), dtype=np.float32)
    return np.stack([encode(o) for o in observations])


def action_to_proposal(action: npt.ArrayLike, obs: IntersectionObservation) -> Proposal:
    """Turn one action vector into a proposal: an adjustment of the light's base program.

    Values are clipped to [-1, 1]; padded green slots are ignored.

    Raises:
        ConfigError: the action does not have ``ACT_DIM`` entries.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape[0] != ACT_DIM:
        raise ConfigError(f"policy action has {a.shape[0]} values; expected {ACT_DIM}")
    a = np.clip(np.nan_to_num(a, nan=0.0), -1.0, 1.0)
    base = obs.layout.base
    greens = [float(base.phases[i].duration_s) for i in base.green_indices]
    slot = [float(a[i]) if i < MAX_GREENS else 0.0 for i in range(len(greens))]
    green_s = [g * 2.0 ** (SPLIT_GAIN * slot[i]) for i, g in enumerate(greens)]
    base_cycle = float(sum(p.duration_s for p in base.phases))
    fixed = base_cycle - sum(greens)
    # the split adjustment defines shares; the cycle adjustment scales them
    cycle_s = base_cycle + CYCLE_GAIN_S * a[MAX_GREENS]
    total = sum(green_s)
    if total > 0:
        green_s = [g * max(cycle_s - fixed, 1.0) / total for g in green_s]
    offset_s = (base.offset_s + OFFSET_GAIN_S * a[MAX_GREENS + 1]) % max(cycle_s, 1.0)
    if base.mode == "adaptive":
        return _adaptive_proposal(a, slot, greens, base_cycle)
    return Proposal(green_s=tuple(green_s), cycle_s=float(cycle_s), offset_s=float(offset_s))


def _adaptive_proposal(
    a: npt.NDArray[np.float64], slot: Sequence[float], greens: Sequence[float], base_cycle: float
) -> Proposal:
    """An adaptive plan's parameters from an action (see the module docstring)."""
    green_s = [g * 2.0 ** (SPLIT_GAIN * v) for g, v in zip(greens, slot, strict=True)]
    logic = AdaptiveLogic(
        green_weights=tuple(min(4.0, max(0.25, 2.0 ** (WEIGHT_GAIN * v))) for v in slot),
        switch_margin_veh=ADAPTIVE_MARGIN_VEH * 2.0 ** float(a[MAX_GREENS]),
        downstream_weight=min(
            1.0, max(0.0, ADAPTIVE_DOWNSTREAM * (1.0 + float(a[MAX_GREENS + 1])))
        ),
    )
    return Proposal(green_s=tuple(green_s), cycle_s=None, offset_s=None, adaptive=logic)


def plan_to_action(plan: IntersectionTiming, obs: IntersectionObservation) -> FloatArray:
    """The action that would propose ``plan`` for the observation's light.

    The inverse of :func:`action_to_proposal` (an adjustment of the base program)
    up to what projection changed, so a deployed plan from any proposer (the
    policy, Webster, the current plan) can be logged as an action for
    fine-tuning. Split values are centred (only their differences matter) and
    everything is clipped to [-1, 1].
    """
    base = obs.layout.base
    a = np.zeros(ACT_DIM, dtype=np.float32)
    if plan.adaptive is not None:  # the adaptive reading of the action (module docstring)
        logic = plan.adaptive
        for i, weight in enumerate(logic.green_weights[:MAX_GREENS]):
            a[i] = math.log2(weight) / WEIGHT_GAIN
        a[MAX_GREENS] = math.log2(max(logic.switch_margin_veh, 1e-3) / ADAPTIVE_MARGIN_VEH)
        a[MAX_GREENS + 1] = logic.downstream_weight / ADAPTIVE_DOWNSTREAM - 1.0
        adaptive: FloatArray = np.clip(a, -1.0, 1.0).astype(np.float32)
        return adaptive
    old = tuple(base.phases[i].duration_s for i in base.green_indices)
    new = plan.green_durations(base)
    if old and len(old) == len(new):
        logs = [
            math.log2(max(n, 1) / max(o, 1)) / SPLIT_GAIN for o, n in zip(old, new, strict=True)
        ]
        centre = sum(logs) / len(logs)
        for i, value in enumerate(logs[:MAX_GREENS]):
            a[i] = value - centre
    a[MAX_GREENS] = (plan.cycle_s - sum(p.duration_s for p in base.phases)) / CYCLE_GAIN_S
    shift = (plan.offset_s - base.offset_s) % max(plan.cycle_s, 1)
    if shift > plan.cycle_s / 2:
        shift -= plan.cycle_s
    a[MAX_GREENS + 1] = shift / OFFSET_GAIN_S
    clipped: FloatArray = np.clip(a, -1.0, 1.0).astype(np.float32)
    return clipped
