"""Reinforcement-learning policy for signal timing: features, policy, baselines, feedback.

The policy proposes, the controller decides: everything here returns
:class:`configs.safety.Proposal` objects or plans made by
:func:`configs.safety.project`; the gate and the safety invariants live elsewhere.

The environment and trainer (:mod:`rl.env`, :mod:`rl.train`) pull in
gymnasium and stable-baselines3, so they are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rl.baselines import (
    MaxPressureController,
    actuated_plan,
    as_mode,
    fixed_plans,
    lost_time_s,
    webster,
    webster_proposal,
)
from rl.features import (
    ACT_DIM,
    MAX_GREENS,
    OBS_DIM,
    IntersectionLayout,
    IntersectionObservation,
    action_to_proposal,
    build_observations,
    critical_flow_ratios,
    encode,
    encode_batch,
    layouts_from_network,
    plan_to_action,
)
from rl.feedback import FeedbackStore, MeasuredDelta, Samples
from rl.finetune import PolicyVersion, finetune
from rl.policy import ActorNet, Policy, TorchPolicy, save_weights

if TYPE_CHECKING:
    from rl.env import EnvConfig, IntersectionVecEnv, SignalSimulation, SignalTimingEnv
    from rl.train import TrainResult, train

__all__ = [
    "ACT_DIM",
    "MAX_GREENS",
    "OBS_DIM",
    "ActorNet",
    "EnvConfig",
    "FeedbackStore",
    "IntersectionLayout",
    "IntersectionObservation",
    "IntersectionVecEnv",
    "MaxPressureController",
    "MeasuredDelta",
    "Policy",
    "PolicyVersion",
    "Samples",
    "SignalSimulation",
    "SignalTimingEnv",
    "TorchPolicy",
    "TrainResult",
    "action_to_proposal",
    "actuated_plan",
    "as_mode",
    "build_observations",
    "critical_flow_ratios",
    "encode",
    "encode_batch",
    "finetune",
    "fixed_plans",
    "layouts_from_network",
    "lost_time_s",
    "plan_to_action",
    "save_weights",
    "train",
    "webster",
    "webster_proposal",
]

_LAZY = {
    "EnvConfig": "rl.env",
    "IntersectionVecEnv": "rl.env",
    "SignalSimulation": "rl.env",
    "SignalTimingEnv": "rl.env",
    "TrainResult": "rl.train",
    "train": "rl.train",
}


def __getattr__(name: str) -> Any:
    """Import the gymnasium/SB3 parts on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
