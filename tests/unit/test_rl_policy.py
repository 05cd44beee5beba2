from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.digests import sha256_file
from configs.errors import ConfigError
from configs.safety import Proposal, check_intersection, project
from configs.timing import IntersectionTiming, SafetyLimits
from rl.features import OBS_DIM, build_observations, layouts_from_network
from rl.feedback import FeedbackStore
from rl.finetune import PolicyVersion, finetune
from rl.policy import ActorNet, Policy, TorchPolicy, save_weights
from tests.support.rl_fakes import fake_network, three_phase_light, two_phase_light

POLICIES = Path(__file__).resolve().parents[2] / "rl" / "policies"


def _weights(tmp_path: Path, seed: int = 0) -> tuple[Path, str]:
    torch.manual_seed(seed)
    path = tmp_path / "p.pt"
    return path, save_weights(ActorNet(), path, "fixed")


def _obs():
    net = fake_network(two_phase_light("J1"), three_phase_light("J2"))
    layouts = layouts_from_network(net)
    timings = {t: IntersectionTiming.from_base(lay.base) for t, lay in layouts.items()}
    counts = {"e1_n_J1_0": 40, "e1_e_J1_0": 10, "e1_n_J2_0": 25}
    return layouts, build_observations(layouts, counts, 240.0, timings)


def test_weights_round_trip_and_propose_batched_deterministically(tmp_path: Path) -> None:
    path, digest = _weights(tmp_path)
    assert (tmp_path / "p.pt.sha256").read_text().split()[0] == digest == sha256_file(path)
    policy = TorchPolicy.load(path)
    assert isinstance(policy, Policy)
    assert policy.sha256 == digest and digest[:12] in policy.version
    layouts, obs = _obs()
    first = policy.propose(obs)
    assert set(first) == {"J1", "J2"}
    assert all(isinstance(p, Proposal) for p in first.values())
    assert first == policy.propose(obs)  # deterministic
    for tls_id, proposal in first.items():
        plan = project(tls_id, proposal, layouts[tls_id].base, SafetyLimits(), obs[tls_id].timing)
        assert check_intersection(tls_id, plan, layouts[tls_id].base, SafetyLimits()) == []


def test_weights_of_the_old_action_scheme_are_refused(tmp_path: Path) -> None:
    # scheme-1 files (actions adjusted the plan in force) carry no action_scheme
    path, _ = _weights(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["meta.action_scheme"]
    torch.save(state, path)
    digest = sha256_file(path)
    with pytest.raises(ConfigError, match="action scheme 1.*retrain"):
        TorchPolicy.load(path, expected_sha256=digest)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path, _ = _weights(tmp_path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="refusing to load"):
        TorchPolicy.load(path)


def test_swapped_weights_with_matching_digest_file_must_still_be_weights_only(
    tmp_path: Path,
) -> None:
    # An attacker who also rewrites the digest file still cannot make us unpickle objects.
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "evil.pt.sha256").write_text(f"{digest}  evil.pt\n")
    with pytest.raises(ConfigError, match="cannot be loaded as weights"):
        TorchPolicy.load(path)


def test_missing_digest_file_and_wrong_expected_digest_are_refused(tmp_path: Path) -> None:
    path, digest = _weights(tmp_path)
    with pytest.raises(ConfigError, match="sha256"):
        TorchPolicy.load(path, expected_sha256="0" * 64)
    assert TorchPolicy.load(path, expected_sha256=digest).sha256 == digest
    (tmp_path / "p.pt.sha256").unlink()
    with pytest.raises(ConfigError, match="digest file"):
        TorchPolicy.load(path)
    with pytest.raises(ConfigError, match="do not exist"):
        TorchPolicy.load(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("name", "mode"),
    [("adaptive.pt", "adaptive"), ("district.pt", "actuated"), ("district-fixed.pt", "fixed")],
)
def test_shipped_policy_loads_and_matches_its_digest(name: str, mode: str) -> None:
    shipped = POLICIES / name
    policy = TorchPolicy.load(shipped)
    assert policy.sha256 == sha256_file(shipped)
    assert policy.mode == mode
    assert shipped.stat().st_size < 5 * 1024 * 1024
    out = policy.act(np.zeros((3, OBS_DIM), dtype=np.float32))
    assert out.shape[0] == 3 and np.all(np.abs(out) <= 1.0)


@pytest.mark.slow
def test_feedback_measured_delta_becomes_reward_and_finetune_versions_the_policy(
    tmp_path: Path,
) -> None:
    parent, parent_digest = _weights(tmp_path)
    policy = TorchPolicy.load(parent)
    layouts, obs = _obs()
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    for k in range(6):
        proposals = policy.propose(obs)
        deployed = {
            t: project(t, p, layouts[t].base, SafetyLimits(), obs[t].timing)
            for t, p in proposals.items()
        }
        if k % 2:  # the gate sometimes deploys another proposer's plan
            deployed["J1"] = project(
                "J1", Proposal(green_s=(40.0, 20.0)), layouts["J1"].base, SafetyLimits()
            )
        n = store.record_deployment(
            f"d{k}", obs, deployed, policy_sha256=policy.sha256, predicted_wait_change=-0.15
        )
        assert n == 2
        after_j1 = 8.0 if k % 2 else 12.0
        delta = store.record_measurement(
            f"d{k}",
            before={"J1": (10.0, 1000.0), "J2": (10.0, 1000.0)},
            after={"J1": (after_j1, 990.0), "J2": (10.0, 1000.0)},
        )
        assert delta.intersections == 2
        assert delta.predicted_wait_change == -0.15
        assert delta.wait_error == pytest.approx(delta.wait_change + 0.15)
    samples = store.samples()
    assert len(samples) == 12 and store.count() == 12
    assert samples.rewards.max() == pytest.approx(0.2 + 0.01)  # -(-0.2) - 1.0 * (-0.01)
    with pytest.raises(ConfigError, match="never recorded"):
        store.record_measurement("nope", {}, {})
    store.close()

    version = finetune(parent, samples, tmp_path / "v2.pt", min_samples=8, steps=50)
    assert isinstance(version, PolicyVersion)
    assert version.parent_sha256 == parent_digest
    assert version.sha256 == sha256_file(tmp_path / "v2.pt") != parent_digest
    assert version.samples == 12
    assert TorchPolicy.load(version.path).sha256 == version.sha256
    with pytest.raises(ConfigError, match="at least"):
        finetune(parent, samples, tmp_path / "v3.pt", min_samples=100)


def test_the_daemon_uses_the_adaptive_policy_by_default() -> None:
    from configs.settings_file import load_settings
    from controller.demo import default_demo_config
    from controller.wiring import policy_path
    from rl.policy import SHIPPED_POLICY

    assert SHIPPED_POLICY == POLICIES / "adaptive.pt"
    settings = load_settings(default_demo_config())
    if settings.rl.policy_path is None:
        assert policy_path(settings) == SHIPPED_POLICY
    assert TorchPolicy.load(SHIPPED_POLICY).mode == "adaptive"
