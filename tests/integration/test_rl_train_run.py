"""Training runs on a real SUMO grid: budget stop, checkpoints, resume (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from configs.errors import ConfigError
from rl.policy import ActorNet, TorchPolicy, save_weights
from rl.train import TrainProgress, train
from rl.train_manifest import manifest_path
from tests.support.twin_scenarios import GridScenario, build_grid, training_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    return build_grid(tmp_path_factory.mktemp("traingrid"), size=2, end_s=1500.0, period_s=3.0)


def test_a_tiny_budget_stops_cleanly_and_saves_the_initial_actor(
    grid: GridScenario, tmp_path: Path
) -> None:
    torch.manual_seed(4)
    init = tmp_path / "init.pt"
    save_weights(ActorNet(), init, "fixed")
    out = tmp_path / "run" / "tuned.pt"
    result = train(
        training_config(grid),
        out,
        timesteps=10_000,
        seed=1,
        progress_bar=False,
        init_from=init,
        budget_s=1e-3,
    )
    assert result.stopped_by_budget and result.timesteps == 0
    assert result.init_sha256 == TorchPolicy.load(init).sha256
    # nothing was learnt, so the saved actor is the initial one, digest-checked
    tuned = TorchPolicy.load(out)
    assert tuned.sha256 == result.sha256 and tuned.mode == "fixed"
    for key, value in TorchPolicy.load(init).net.state_dict().items():
        assert torch.equal(tuned.net.state_dict()[key], value), key
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["samples"] == 0 and manifest["args"]["init_sha256"] == result.init_sha256
    assert (out.parent / "checkpoints" / manifest["checkpoint"]).is_file()


def test_resume_continues_the_sample_count_and_refuses_other_arguments(
    grid: GridScenario, tmp_path: Path
) -> None:
    out = tmp_path / "p.pt"
    lines: list[TrainProgress] = []
    # 4 lights x 4 steps: 16 samples per rollout
    first = train(
        training_config(grid),
        out,
        timesteps=32,
        seed=2,
        progress_bar=False,
        checkpoint_every=16,
        on_progress=lines.append,
    )
    assert first.timesteps == 32 and not first.stopped_by_budget and first.resumed_from == 0
    assert [p.samples for p in lines] == [16, 32] and lines[-1].total == 32
    assert "32/32 (100.0 %)" in lines[-1].line()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.zip"))
    assert checkpoints == ["p-000000016.zip", "p-000000032.zip"]

    with pytest.raises(ConfigError, match=r"arguments differ.*seed: was 2, now 3"):
        train(training_config(grid), out, timesteps=48, seed=3, progress_bar=False, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(training_config(grid), tmp_path / "other.pt", timesteps=48, seed=2, resume=True)

    lines.clear()
    second = train(
        training_config(grid),
        out,
        timesteps=48,
        seed=2,
        progress_bar=False,
        resume=True,
        on_progress=lines.append,
    )
    assert second.resumed_from == 32 and second.timesteps == 48
    assert [p.samples for p in lines] == [48]
    assert second.run_wall_s > second.wall_s
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["samples"] == 48 and manifest["checkpoint"] == "p-000000048.zip"
    assert TorchPolicy.load(out).sha256 == second.sha256 != first.sha256


def test_the_cli_fine_tunes_and_prints_the_before_and_after_commands(
    grid: GridScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import run
    from controller.exit_codes import ExitCode

    init = tmp_path / "fixed.pt"
    save_weights(ActorNet(), init, "fixed")
    out = tmp_path / "tuned" / "policy.pt"
    argv = [
        "train",
        "--network",
        str(grid.net),
        "--detectors",
        str(grid.detectors),
        "--routes",
        str(grid.routes),
        "--from",
        str(init),
        "--timesteps",
        "16",
        "--episode-steps",
        "2",
        "--envs",
        "1",
        "--out",
        str(out),
    ]
    assert run(argv) == ExitCode.OK
    captured = capsys.readouterr()
    # the mode comes from the initial weights; one progress line per rollout
    assert "(fixed plans)" in captured.err and "budget 30 min" in captured.err
    assert "train: samples 16/16 (100.0 %)" in captured.err
    digest = TorchPolicy.load(out).sha256
    assert f"sha256:  {digest}" in captured.out and "samples: 16 of 16" in captured.out
    commands = [line.strip() for line in captured.out.splitlines() if "signaltwin evaluate" in line]
    assert len(commands) == 1
    assert commands[0].endswith(f"--policy {init} --policy-b {out}")
    # resuming a finished run with the same options trains nothing more
    assert run([*argv, "--resume"]) == ExitCode.OK
    assert "samples: 16 of 16 (resumed at 16)" in capsys.readouterr().out
    assert TorchPolicy.load(out).sha256 == digest
    # another seed is another run
    assert run([*argv, "--resume", "--seed", "5"]) == ExitCode.USAGE
    assert "seed: was" in capsys.readouterr().err


def test_ctrl_c_leaves_a_resumable_checkpoint_of_what_was_trained(
    grid: GridScenario, tmp_path: Path
) -> None:
    out = tmp_path / "p.pt"
    seen: list[int] = []

    def interrupt_on_the_second_rollout(progress: TrainProgress) -> None:
        seen.append(progress.samples)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            training_config(grid),
            out,
            timesteps=64,
            seed=2,
            progress_bar=False,
            on_progress=interrupt_on_the_second_rollout,
        )
    # the second rollout was collected but never trained on: 16 samples count
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["samples"] == 16 and manifest["checkpoint"] == "p-000000016.zip"
    resumed = train(
        training_config(grid), out, timesteps=32, seed=2, progress_bar=False, resume=True
    )
    assert resumed.resumed_from == 16 and resumed.timesteps == 32


def test_evaluate_reports_a_second_policy_on_the_same_seeds(
    grid: GridScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import run
    from controller.exit_codes import ExitCode

    before, after = tmp_path / "before.pt", tmp_path / "after.pt"
    torch.manual_seed(1)
    save_weights(ActorNet(), before, "fixed")
    save_weights(ActorNet(), after, "fixed")
    argv = [
        "evaluate",
        "--network",
        str(grid.net),
        "--detectors",
        str(grid.detectors),
        "--routes",
        str(grid.routes),
        "--compare",
        "policy",
        "--policy",
        str(before),
        "--policy-b",
        str(after),
        "--seeds",
        "1",
        "--hours",
        "0.1",
        "--begin-s",
        "0",
        "--no-gate",
        "--json",
    ]
    assert run(argv) == ExitCode.OK
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["controller"] for r in rows] == ["policy", "policy-b"]
    assert rows[0]["seeds"] == rows[1]["seeds"] == [1]
    # two different actors: their closed loops differ
    assert rows[0]["per_seed"] != rows[1]["per_seed"]
