"""How a field starts: its configuration (network, hidden demand, seed) and SUMO command line."""

from __future__ import annotations

__all__ = ["Backend", "FieldConfig", "FieldEvents", "check_config", "sumo_command"]

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from configs.errors import ConfigError
from simulators.netbuild import DemandProfile, district_paths, expand_demand
from simulators.sumo import sumo_binary

if TYPE_CHECKING:
    from simulators.field.records import DetectorSnapshot

Backend = Literal["libsumo", "traci"]
"""How the field runs SUMO: in this process (``libsumo``) or as a separate process (``traci``)."""


class FieldEvents(Protocol):
    """What happens in the field that nobody tells the twin (an event day's runtime part).

    Demand events (pulses, OD shifts) are baked into the field's routes before it
    starts; these hooks carry the rest: incidents that close lanes for a while,
    and detector faults in what the controllers report. Implemented by
    :mod:`simulators.field.events`; a fork of the field (a shadow started from a
    saved state) calls :meth:`start` at its own start time, so whatever is in
    force then is put back.
    """

    def start(self, api: Any, time_s: float) -> None:
        """SUMO has started (or a saved state was loaded) at ``time_s``: apply what is in force."""
        ...

    def step(self, api: Any, time_s: float) -> None:
        """The step ending at ``time_s`` was simulated: begin or end events due now."""
        ...

    def report(self, snapshot: DetectorSnapshot) -> DetectorSnapshot:
        """What the loops report, faults included (same answer for repeated reads)."""
        ...


# SUMO options the field sets itself (long and short names); SUMO refuses an option given twice.
_OWN_OPTIONS = {
    "--net-file": "net_path",
    "-n": "net_path",
    "--route-files": "routes_path / demand_profile_path",
    "-r": "routes_path / demand_profile_path",
    "--additional-files": "detectors_path",
    "-a": "detectors_path",
    "--begin": "begin_s",
    "-b": "begin_s",
    "--step-length": "step_length_s",
    "--seed": "seed",
    "--scale": "demand_scale",
    "--time-to-teleport": "teleport_s",
    "--tripinfo-output": "(the field's own tripinfo)",
    "--device.emissions.probability": "(the field's own emissions device)",
    "--save-state.rng": "(always on: forks continue the field's random stream)",
}


@dataclass(frozen=True)
class FieldConfig:
    """How to start a field emulator.

    Attributes:
        net_path: the ``.net.xml`` (any signalised SUMO network).
        detectors_path: E1 loops; ``None`` generates loops into the work directory.
        routes_path: a routes/trips file (hidden demand), or several as a tuple, or
        demand_profile_path: a demand profile expanded with ``seed`` (exactly one
            of the two, or neither for an empty city).
        demand_scale: multiplier on the demand: on the profile's rates when it is
            expanded, or SUMO's ``--scale`` for ``routes_path``.
        demand_repeat: how many times the profile runs back to back (4 x the
            district's 3-hour peak keeps a demo busy for 12 field hours).
        seed: SUMO's random seed (and the profile expansion's).
        begin_s: field time at start (e.g. the start of the morning peak).
        step_length_s: simulation step.
        interval_s: detector and measurement interval; intervals end at
            multiples of it in field time.
        teleport_s: SUMO ``--time-to-teleport``: ``-1`` (default) never teleports
            a stuck vehicle, as a city would not; training uses e.g. 300 so that
            a gridlocked episode still ends.
        backend: ``libsumo`` (in-process, one per process) or ``traci``.
        work_dir: where tripinfo and expanded demand go (default: a temp dir,
            removed on close).
        extra_args: further SUMO options (not one the field sets itself).
        events: an event day's incidents and detector faults (None: a plain day).
    """

    net_path: Path
    detectors_path: Path | None = None
    routes_path: Path | tuple[Path, ...] | None = None
    demand_profile_path: Path | None = None
    demand_scale: float = 1.0
    demand_repeat: int = 4
    seed: int = 0
    begin_s: int = 0
    step_length_s: float = 1.0
    interval_s: int = 60
    teleport_s: float = -1
    backend: Backend = "libsumo"
    work_dir: Path | None = None
    extra_args: tuple[str, ...] = ()
    events: FieldEvents | None = None

    @classmethod
    def for_district(
        cls,
        seed: int,
        *,
        directory: Path | None = None,
        begin_s: int | None = None,
        demand_scale: float = 1.0,
        **kwargs: Any,
    ) -> FieldConfig:
        """The demo district with its demand profile expanded with ``seed``.

        ``begin_s`` defaults to 15 minutes before the first peak bin.
        """
        paths = district_paths(directory)
        if begin_s is None:
            profile = DemandProfile.load(paths["demand"])
            begin_s = max(0, profile.peak_begin_s - 900)
        return cls(
            net_path=paths["net"],
            detectors_path=paths["det"],
            demand_profile_path=paths["demand"],
            demand_scale=demand_scale,
            seed=seed,
            begin_s=begin_s,
            **kwargs,
        )


def check_config(config: FieldConfig) -> None:
    """Refuse a configuration SUMO would choke on, naming the field to fix.

    Raises:
        ConfigError: both kinds of demand, a non-positive interval, step or scale,
            or an ``extra_args`` option the field sets itself.
    """
    if config.routes_path is not None and config.demand_profile_path is not None:
        raise ConfigError("field: give routes_path or demand_profile_path, not both")
    if config.interval_s <= 0 or config.step_length_s <= 0:
        raise ConfigError("field: interval_s and step_length_s must be positive")
    if not (config.demand_scale > 0 and math.isfinite(config.demand_scale)):
        raise ConfigError(f"field: demand_scale must be positive, got {config.demand_scale}")
    for arg in config.extra_args:
        option = arg.split("=", 1)[0]
        if option in _OWN_OPTIONS:
            raise ConfigError(
                f"field: extra_args gives SUMO option {option}, which the field sets "
                f"itself (FieldConfig {_OWN_OPTIONS[option]}); SUMO refuses an option twice"
            )


def _demand_args(cfg: FieldConfig, work_dir: Path) -> list[str]:
    if cfg.routes_path is not None:
        files = (cfg.routes_path,) if isinstance(cfg.routes_path, Path) else cfg.routes_path
        if not files:
            raise ConfigError("field: routes_path is an empty tuple of route files")
        for route_file in files:
            if not Path(route_file).is_file():
                raise ConfigError(f"field routes file {route_file} does not exist")
        args = ["-r", ",".join(str(f) for f in files)]
        if cfg.demand_scale != 1.0:
            args += ["--scale", f"{cfg.demand_scale:g}"]
        return args
    if cfg.demand_profile_path is not None:
        profile = DemandProfile.load(Path(cfg.demand_profile_path))
        routes = expand_demand(
            profile,
            cfg.seed,
            work_dir / f"field-demand-{cfg.seed}.rou.xml",
            scale=cfg.demand_scale,
            begin_s=cfg.begin_s,
            repeat=cfg.demand_repeat,
        )
        return ["-r", str(routes)]
    return []


def sumo_command(cfg: FieldConfig, work_dir: Path, detectors: Path, tripinfo: Path) -> list[str]:
    """The field's SUMO command line (expanding a demand profile into ``work_dir``).

    Raises:
        ConfigError: a routes file is missing.
    """
    return [
        str(sumo_binary()),
        "-n",
        str(cfg.net_path),
        *_demand_args(cfg, work_dir),
        "-a",
        str(detectors),
        "--begin",
        str(cfg.begin_s),
        "--step-length",
        f"{cfg.step_length_s:g}",
        "--seed",
        str(int(cfg.seed)),
        "--time-to-teleport",
        f"{cfg.teleport_s:g}",
        "--no-step-log",
        "true",
        "--no-warnings",
        "true",
        "--xml-validation",
        "never",
        "--duration-log.disable",
        "true",
        "--device.emissions.probability",
        "1",
        "--tripinfo-output",
        str(tripinfo),
        "--tripinfo-output.write-unfinished",
        "true",
        "--tripinfo-output.write-undeparted",
        "true",
        # a saved state (FieldEmulator.save_state) carries the random number
        # generators, so a fork continues on the same random stream
        "--save-state.rng",
        "true",
        *cfg.extra_args,
    ]
