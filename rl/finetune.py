"""Fine-tuning the policy from measured deltas (reward-weighted regression).

What it is, plainly: the feedback store holds, per deployed intersection, the
observation, the deployed plan expressed as an action, and a reward computed
from the field's measured delta. The fine-tune regresses the actor's output
towards the logged actions, each weighted by ``exp((r - mean r) / std r)``
(reward-weighted regression, Peters & Schaal 2007), with a proximal term that
keeps the new actor close to its parent on the same observations. Deployments
that measured better than average pull the policy towards what was deployed;
worse ones barely count. It is an offline, one-step improvement, not PPO: it
cannot find actions that were never deployed, and it needs deployments from
more than one proposer (the gate also deploys Webster or keeps the plan) to
have anything to prefer.

Every run writes a new weights file with its sha256 and returns a
:class:`PolicyVersion` for the ledger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from configs.errors import ConfigError
from rl.feedback import Samples
from rl.policy import TorchPolicy, save_weights

__all__ = ["PolicyVersion", "finetune"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyVersion:
    """A policy version the daemon records in the ledger."""

    path: Path
    sha256: str
    parent_sha256: str | None
    samples: int
    created_at: datetime


def finetune(
    parent: Path,
    samples: Samples,
    out: Path,
    *,
    min_samples: int = 8,
    steps: int = 200,
    learning_rate: float = 1e-3,
    proximal_weight: float = 1.0,
    seed: int = 0,
) -> PolicyVersion:
    """Fine-tune the policy at ``parent`` on logged samples; write it to ``out``.

    Args:
        parent: the current weights (verified against their sha256 when loaded).
        samples: measured samples from :meth:`rl.feedback.FeedbackStore.samples`.
        out: where to write the new weights (and ``out.sha256``).
        min_samples: refuse to train on fewer samples.
        steps: gradient steps (full batch).
        learning_rate: Adam learning rate.
        proximal_weight: weight of staying close to the parent's outputs.
        seed: torch seed (the update is deterministic on CPU).

    Raises:
        ConfigError: too few samples, or the parent cannot be loaded.
    """
    if len(samples) < min_samples:
        raise ConfigError(
            f"fine-tune needs at least {min_samples} measured samples, the store has "
            f"{len(samples)} (rl.fine_tune_min_samples)"
        )
    policy = TorchPolicy.load(parent)
    torch.manual_seed(seed)
    net = policy.net
    obs = torch.as_tensor(np.clip(samples.obs, -2.0, 4.0), dtype=torch.float32)
    target = torch.as_tensor(samples.actions, dtype=torch.float32)
    rewards = samples.rewards.astype(np.float64)
    spread = float(rewards.std()) or 1.0
    weights = np.exp(np.clip((rewards - rewards.mean()) / spread, -5.0, 5.0))
    w = torch.as_tensor(weights / weights.sum(), dtype=torch.float32)
    with torch.no_grad():
        anchor = net(obs).clone()
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    for _ in range(steps):
        optimiser.zero_grad()
        out_actions = net(obs)
        fit = (w * ((out_actions - target) ** 2).sum(dim=1)).sum()
        stay = ((out_actions - anchor) ** 2).sum(dim=1).mean()
        loss = fit + proximal_weight * stay
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    net.eval()
    digest = save_weights(net, out, policy.mode)
    logger.info("fine-tuned %s on %d samples -> %s (%s)", parent, len(samples), out, digest[:12])
    return PolicyVersion(
        path=out,
        sha256=digest,
        parent_sha256=policy.sha256,
        samples=len(samples),
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
