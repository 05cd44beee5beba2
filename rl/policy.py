"""The policy seam and the shipped torch policy.

The daemon asks a :class:`Policy` for one :class:`configs.safety.Proposal` per
intersection; it never receives a plan from here. Plans are made only by
:func:`configs.safety.project` (in the daemon, the environment and the
evaluation), so safety is never in RL code.

Weights are a plain torch ``state_dict`` of :class:`ActorNet` plus a few
metadata tensors, saved with :func:`torch.save` next to a ``<file>.sha256``
file; :meth:`TorchPolicy.load` checks the digest first and then loads with
``torch.load(..., weights_only=True)``, which never unpickles arbitrary objects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from configs.digests import sha256_file
from configs.errors import ConfigError
from configs.safety import Proposal
from rl.features import (
    ACT_DIM,
    ACTION_SCHEME,
    OBS_DIM,
    IntersectionObservation,
    action_to_proposal,
    encode_batch,
)

__all__ = [
    "HIDDEN",
    "SHIPPED_POLICY",
    "ActorNet",
    "Policy",
    "TorchPolicy",
    "save_weights",
    "zero_actor",
]

logger = logging.getLogger(__name__)

HIDDEN = 64
SHIPPED_POLICY = Path(__file__).parent / "policies" / "adaptive.pt"
"""The policy shipped with signaltwin: adaptive plans, trained on the scenario mix."""
PlanMode = Literal["fixed", "actuated", "adaptive"]
_MODES: tuple[PlanMode, ...] = ("fixed", "actuated", "adaptive")


@runtime_checkable
class Policy(Protocol):
    """Proposes timings; the caller projects them onto the safe set and decides."""

    @property
    def version(self) -> str:
        """Human-readable version (e.g. the file name and short digest)."""
        ...

    @property
    def sha256(self) -> str:
        """sha256 hex of the weights file (recorded as evidence)."""
        ...

    @property
    def mode(self) -> PlanMode:
        """Whether proposals are meant as fixed or actuated plans."""
        ...

    def propose(self, observations: Mapping[str, IntersectionObservation]) -> dict[str, Proposal]:
        """One proposal per intersection (deterministic)."""
        ...


class ActorNet(nn.Module):
    """The deterministic actor: observation -> mean action in [-1, 1]."""

    def __init__(
        self, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, hidden: int = HIDDEN
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, act_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean action, clipped to the action box."""
        out: torch.Tensor = torch.clamp(self.head(self.body(obs)), -1.0, 1.0)
        return out


def zero_actor(hidden: int = HIDDEN, seed: int = 0) -> ActorNet:
    """An actor whose every action is zero.

    That is the base program's timings or, for adaptive plans, the adaptive
    mode's default parameters; training from it starts at those defaults. Its
    body is initialised from ``seed`` so that learning can move it.
    """
    torch.manual_seed(seed)
    net = ActorNet(hidden=hidden)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
    return net


def save_weights(net: ActorNet, path: Path, mode: PlanMode = "fixed") -> str:
    """Save ``net`` as a weights-only file plus ``<path>.sha256``; return the digest."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    state["meta.obs_dim"] = torch.tensor(OBS_DIM)
    state["meta.act_dim"] = torch.tensor(ACT_DIM)
    state["meta.hidden"] = torch.tensor(net.head.in_features)
    state["meta.mode"] = torch.tensor(_MODES.index(mode))
    state["meta.action_scheme"] = torch.tensor(ACTION_SCHEME)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    digest = sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n", encoding="ascii")
    return digest


class TorchPolicy:
    """The shared actor, batched over intersections, on CPU, deterministic."""

    def __init__(self, net: ActorNet, sha256: str, name: str, mode: PlanMode = "fixed") -> None:
        self.net = net.eval()
        self._sha256 = sha256
        self._name = name
        self._mode: PlanMode = mode

    @property
    def version(self) -> str:
        """File name and short digest."""
        return f"{self._name}@{self._sha256[:12]}"

    @property
    def sha256(self) -> str:
        """sha256 hex of the weights file."""
        return self._sha256

    @property
    def mode(self) -> PlanMode:
        """Whether proposals are meant as fixed or actuated plans."""
        return self._mode

    @classmethod
    def load(cls, path: Path | str, expected_sha256: str | None = None) -> TorchPolicy:
        """Load weights after checking their sha256 (``<path>.sha256`` or ``expected_sha256``).

        Raises:
            ConfigError: the file or its digest file is missing, the digest does not
                match (a tampered or swapped file), or the weights do not fit the actor.
        """
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"policy weights {p} do not exist (rl.policy_path in the settings)")
        if expected_sha256 is None:
            sidecar = p.with_name(p.name + ".sha256")
            try:
                expected_sha256 = sidecar.read_text(encoding="ascii").split()[0].lower()
            except (OSError, IndexError, UnicodeDecodeError) as e:
                raise ConfigError(
                    f"policy digest file {sidecar} is missing or unreadable; "
                    "ship it next to the weights (signaltwin train writes it)"
                ) from e
        actual = sha256_file(p)
        if actual != expected_sha256:
            raise ConfigError(
                f"policy weights {p} have sha256 {actual} but {expected_sha256} was expected: "
                "the file was modified or replaced; refusing to load it"
            )
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError / RuntimeError
            raise ConfigError(f"policy weights {p} cannot be loaded as weights: {e}") from e
        if not isinstance(state, dict):
            raise ConfigError(f"policy weights {p} are not a state dict")
        try:
            obs_dim = int(state.pop("meta.obs_dim"))
            act_dim = int(state.pop("meta.act_dim"))
            hidden = int(state.pop("meta.hidden"))
            mode = _MODES[int(state.pop("meta.mode"))]
            scheme = int(state.pop("meta.action_scheme", torch.tensor(1)))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ConfigError(f"policy weights {p} lack their metadata: {e}") from e
        if scheme != ACTION_SCHEME:
            raise ConfigError(
                f"policy weights {p} were trained with action scheme {scheme} (1: adjustments "
                f"of the plan in force); this version reads actions as scheme {ACTION_SCHEME} "
                "(adjustments of the base program): retrain with signaltwin train"
            )
        if (obs_dim, act_dim) != (OBS_DIM, ACT_DIM):
            raise ConfigError(
                f"policy weights {p} are for observations/actions {obs_dim}/{act_dim}; "
                f"this version uses {OBS_DIM}/{ACT_DIM} (retrain with signaltwin train)"
            )
        net = ActorNet(obs_dim, act_dim, hidden)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"policy weights {p} do not fit the actor network: {e}") from e
        logger.info("loaded policy %s (%s)", p, actual[:12])
        return cls(net, actual, p.name, mode)

    def act(self, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Deterministic actions for a batch of encoded observations."""
        with torch.no_grad():
            out = self.net(torch.as_tensor(np.clip(obs, -2.0, 4.0), dtype=torch.float32))
        result: npt.NDArray[np.float32] = out.numpy()
        return result

    def propose(self, observations: Mapping[str, IntersectionObservation]) -> dict[str, Proposal]:
        """One proposal per intersection, batched through the actor."""
        ids = sorted(observations)
        if not ids:
            return {}
        actions = self.act(encode_batch([observations[t] for t in ids]))
        return {t: action_to_proposal(actions[i], observations[t]) for i, t in enumerate(ids)}
