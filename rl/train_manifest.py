"""The manifest of a training run: what a resumable run is, and where it stands.

A run writes SB3 checkpoints (zip) into ``<out dir>/checkpoints/`` and, after
each one, ``<out stem>.run.json`` next to them: the run's arguments (every
option that shapes what is learnt: the environment, the digests of the network,
detector and route files, PPO's knobs, the seed, the digest of the initial
weights), the samples trained so far, the wall time spent, and the latest
checkpoint with its sha256. The manifest is written after the checkpoint, so it
only ever names a complete one. A resumed run must have the same arguments; the
target sample count and the wall-clock budget may change between invocations.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from configs.digests import sha256_file, strict_json_loads
from configs.errors import ConfigError

if TYPE_CHECKING:
    from rl.env import EnvConfig

__all__ = [
    "MANIFEST_SCHEMA",
    "RunArgs",
    "TrainManifest",
    "checkpoint_dir",
    "differences",
    "manifest_path",
    "read_manifest",
    "run_args",
    "write_manifest",
]

MANIFEST_SCHEMA = "signaltwin.train-run/v1"

_FILES = ("net_file", "detectors_file", "route_files")
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
EnvValue = str | int | float | bool | None | list[float]


class RunArgs(BaseModel):
    """Everything that shapes what a run learns; a resumed run must match it exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network_sha256: Sha256
    detectors_sha256: Sha256
    routes_sha256: tuple[Sha256, ...]
    environment: dict[str, EnvValue] = Field(
        description="rl.env.EnvConfig without its file paths (the files count by digest)."
    )
    n_sims: Annotated[int, Field(ge=1)]
    seed: int
    learning_rate: Annotated[float, Field(gt=0)]
    n_steps: Annotated[int, Field(ge=1)]
    value_warmup_rollouts: Annotated[int, Field(ge=0)]
    init_sha256: Sha256 | None = Field(description="Initial weights; None = from scratch.")


class TrainManifest(BaseModel):
    """Where a run stands: its arguments, samples trained, wall time, latest checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["signaltwin.train-run/v1"] = Field("signaltwin.train-run/v1", alias="schema")
    run: str = Field(description="The weights file's stem (one run per output file).")
    args: RunArgs
    samples: Annotated[int, Field(ge=0)] = Field(description="Samples trained so far.")
    total_samples: Annotated[int, Field(ge=0)] = Field(description="The latest target.")
    wall_s: Annotated[float, Field(ge=0)] = Field(description="Wall time over all invocations.")
    checkpoint: str = Field(description="File name of the latest SB3 zip in this directory.")
    checkpoint_sha256: Sha256
    updated_at: datetime


def run_args(
    config: EnvConfig,
    *,
    n_sims: int,
    seed: int,
    learning_rate: float,
    n_steps: int,
    value_warmup_rollouts: int,
    init_sha256: str | None,
) -> RunArgs:
    """The arguments of a run over ``config``.

    Raises:
        ConfigError: a network, detector or route file does not exist.
    """
    values = asdict(config)
    for name in (f.name for f in fields(config)):
        if name in _FILES:
            continue
        value = values[name]
        values[name] = list(value) if isinstance(value, tuple) else value
    routes: tuple[Path, ...] = tuple(values["route_files"])
    return RunArgs(
        network_sha256=_digest(values["net_file"], "--network"),
        detectors_sha256=_digest(values["detectors_file"], "--detectors"),
        routes_sha256=tuple(_digest(p, "--routes") for p in routes),
        environment={k: v for k, v in values.items() if k not in _FILES},
        n_sims=n_sims,
        seed=seed,
        learning_rate=learning_rate,
        n_steps=n_steps,
        value_warmup_rollouts=value_warmup_rollouts,
        init_sha256=init_sha256,
    )


def _digest(path: Path, option: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"file {p} does not exist (check {option})")
    return sha256_file(p)


def differences(recorded: RunArgs, now: RunArgs) -> list[str]:
    """One ``key: was X, now Y`` line per argument that differs (nested keys dotted)."""
    out: list[str] = []
    _diff("", recorded.model_dump(mode="json"), now.model_dump(mode="json"), out)
    return out


def _diff(prefix: str, was: Any, now: Any, out: list[str]) -> None:
    if isinstance(was, dict) and isinstance(now, dict):
        for key in sorted(set(was) | set(now)):
            _diff(f"{prefix}{key}.", was.get(key), now.get(key), out)
    elif was != now:
        out.append(f"{prefix[:-1]}: was {was!r}, now {now!r}")


def checkpoint_dir(out: Path) -> Path:
    """Where the run writing ``out`` keeps its checkpoints."""
    return out.parent / "checkpoints"


def manifest_path(out: Path) -> Path:
    """The manifest of the run writing ``out``."""
    return checkpoint_dir(out) / f"{out.stem}.run.json"


def read_manifest(out: Path) -> TrainManifest:
    """The manifest of the run writing ``out``, its checkpoint's digest checked.

    Raises:
        ConfigError: no manifest (nothing to resume), an unreadable or invalid one,
            or a checkpoint that is missing or not the one the manifest names.
    """
    path = manifest_path(out)
    if not path.is_file():
        raise ConfigError(
            f"nothing to resume: no {path} (run signaltwin train without --resume first, "
            "with the same --out)"
        )
    try:
        manifest = TrainManifest.model_validate(strict_json_loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError) as e:
        raise ConfigError(f"training manifest {path} is unreadable: {e}") from e
    zip_path = path.parent / manifest.checkpoint
    if Path(manifest.checkpoint).name != manifest.checkpoint or not zip_path.is_file():
        raise ConfigError(
            f"{path} names checkpoint {manifest.checkpoint}, which is not in {path.parent}"
        )
    if sha256_file(zip_path) != manifest.checkpoint_sha256:
        raise ConfigError(
            f"checkpoint {zip_path} does not match the sha256 in {path}: it was modified or "
            "replaced; start a new run (without --resume)"
        )
    return manifest


def write_manifest(out: Path, manifest: TrainManifest) -> Path:
    """Write the manifest atomically (a crash leaves the previous one)."""
    path = manifest_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
