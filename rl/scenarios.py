"""Named training and evaluation scenarios: real-city networks with seeded demand.

A scenario is a network (the demo district, or one of the real-city networks
shipped in the eclipse-sumo wheel under ``sumo/tools/game/``), a role
(``train``: the policy learns on it; ``eval``: held out, only benchmarked) and
demand made by SUMO's own tools. :func:`build_scenario` writes the network's
detectors (:func:`simulators.network.ensure_detectors`) and a routes file from
``randomTrips.py`` (run as a subprocess with this interpreter; ``--validate``
routes every trip with duarouter and drops the unroutable ones), cached by a
content key, so that the same name, level, seed and window give byte-identical
files on any machine with the same SUMO.

A level means a similar load on any network: it is a target degree of
saturation of the lights' approaches (:data:`LEVEL_SATURATION`, measured by
:func:`demand_saturation` on the routes). A calibration pass per network
(:func:`calibrate`: a reference rate scaled by vehicle lane length, on a fixed
seed) measures the saturation of a known randomTrips ``--period``; a level's
period is scaled from it, so every seed of a level gets the same period. (A
density per lane-km alone loads networks very unequally: 0.04 to 1.45 at one
density across these networks.)

Wheel paths are resolved at run time (:func:`simulators.sumo.sumo_home`), never
stored. The game networks are made for a player who switches the lights: some
hold a green "forever" (thousands of seconds) until the player acts, and one
(``bs3d``) keeps each green in its own program. :func:`playable_network` turns
these into ordinary fixed-time programs (every held phase gets
:data:`HELD_PHASE_S`; single-phase programs of one light are joined in file
order into one cycle, whose transitions already chain) and writes the result
next to the scenario; networks without such programs are used as shipped.

Networks checked (libsumo runs them, :func:`simulators.network.load_network`
and :func:`rl.features.layouts_from_network` accept them; lights with their
green phases; vehicle lane length):

==========  =====  ======================================  ======  =====
scenario    role   lights (green phases)                   lanes   notes
==========  =====  ======================================  ======  =====
district    train  47 (2-4)                                53 km   demo
grid6       train  6 (2 each)                              5.4 km
square      train  12 (4 with 2; 8 entry meters with 1)    3.8 km
bs3d        train  1 (4, joined from 4 programs)           23 km   [1]
ingolstadt  eval   2 (4 and 3)                             2.6 km  [2]
kuehne      eval   12 (4 with 2; 8 entry meters with 1)    2.2 km
corridor    eval   3 (2 each, held greens -> 30 s)         3.3 km  [1]
cross       eval   1 (4)                                   2.2 km
==========  =====  ======================================  ======  =====

[1] refused as shipped (a phase longer than 3600 s, or one green per
program); used through :func:`playable_network`.
[2] ``fkk_in``: the net has 18 programs but 2 signalised junctions. Its
program for ``gneJ21`` has 10 green phases (short transitional greens), more
than the policy's :data:`rl.features.MAX_GREENS`; the game's own program for
that light (``fkk_in.tls.add.xml``, 3 greens, held) replaces it.

Dropped (:data:`DROPPED` says why): ``DRT`` (a light with 10 green phases, more
than the policy supports, and no other program for it) and ``A10KW``
(vehicles deadlock at unsignalised motorway merges already at the low level
without teleporting, so no signal control changes its delay).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from configs.digests import canonical_json, sha256_file, sha256_hex
from configs.errors import ConfigError, SimulationError
from simulators.network import NetworkModel, ensure_detectors, load_network
from simulators.sumo import SUMO_VERSION, sumo_home

__all__ = [
    "FRINGE_FACTOR",
    "HELD_PHASE_S",
    "LEVEL_SATURATION",
    "SATURATION_FLOW_VPH",
    "SCENARIOS",
    "DROPPED",
    "BuiltScenario",
    "DemandLevel",
    "ScenarioRole",
    "ScenarioSpec",
    "build_scenario",
    "calibrate",
    "demand_saturation",
    "insertion_period_s",
    "playable_network",
    "scenario",
    "scenarios",
    "vehicle_lane_km",
]

logger = logging.getLogger(__name__)

ScenarioRole = Literal["train", "eval"]
DemandLevel = Literal["low", "mid", "high"]

LEVEL_SATURATION: Mapping[DemandLevel, float] = {"low": 0.15, "mid": 0.25, "high": 0.35}
"""Target :func:`demand_saturation` (flow-weighted degree of saturation) per demand level."""

SATURATION_FLOW_VPH = 1800.0
"""Vehicles per hour one lane discharges in green (the usual planning value)."""

_LOST_SHARE = 0.15
"""Share of the cycle lost to yellow, clearance and start-up."""

_CALIBRATION_SEED = 0
"""randomTrips seed of the calibration pass: every seed of a level gets the same period."""

_REFERENCE_DENSITY = 100.0
"""Vehicles per hour per km of vehicle lane of the calibration pass."""

FRINGE_FACTOR = 5.0
"""randomTrips ``--fringe-factor``: trips start and end at the network's edge 5x as often."""

HELD_PHASE_S = 30.0
"""Duration given to a game network's held phase (one the player ends by hand)."""

_HOLD_S = 300.0
"""A phase at least this long waits for a player: no fixed-time program holds a green 5 min."""

_FORMAT = 1
"""Bumped whenever the files a build writes change for the same inputs."""

_GENERATED = re.compile(rb"<!-- generated on .*?-->\s*", re.DOTALL)


@dataclass(frozen=True)
class ScenarioSpec:
    """A named network with its role."""

    name: str
    network: Callable[[], Path]
    """Resolves the network file at run time (wheel paths differ between machines)."""
    role: ScenarioRole
    description: str
    programs: Callable[[], Path] | None = None
    """An additional file whose programs replace the net's for the lights it names."""


@dataclass(frozen=True)
class BuiltScenario:
    """The files of one built scenario (all inside the build's ``out_dir``)."""

    name: str
    level: DemandLevel
    seed: int
    net: Path
    """The network the scenario runs on (the shipped one, or its playable copy)."""
    routes: Path
    detectors: Path
    begin_s: float
    end_s: float
    vehicles: int
    """Vehicles in ``routes`` (every one departs in ``[begin_s, end_s)``)."""
    saturation: float
    """:func:`demand_saturation` of ``routes``: near the level's target."""
    key: str
    """The content key the files are cached under."""

    def load(self) -> NetworkModel:
        """The network model with the scenario's detectors."""
        return load_network(self.net, self.detectors)


def _wheel(relative: str) -> Callable[[], Path]:
    def resolve() -> Path:
        return sumo_home() / "tools" / "game" / relative

    return resolve


def _district() -> Path:
    import configs

    return Path(configs.__file__).resolve().parent / "district" / "district.net.xml"


SCENARIOS: Mapping[str, ScenarioSpec] = {
    s.name: s
    for s in (
        ScenarioSpec("district", _district, "train", "the demo district (47 lights)"),
        ScenarioSpec("grid6", _wheel("grid6/grid6.net.xml"), "train", "6-light grid"),
        ScenarioSpec("square", _wheel("square/square.net.xml"), "train", "4 crossings, 8 meters"),
        ScenarioSpec("bs3d", _wheel("bs3d/bs.net.xml"), "train", "Braunschweig, one crossing"),
        ScenarioSpec(
            "ingolstadt",
            _wheel("fkk_in/ingolstadt.net.xml.gz"),
            "eval",
            "Ingolstadt, 2 lights",
            programs=_wheel("fkk_in/fkk_in.tls.add.xml"),
        ),
        ScenarioSpec("kuehne", _wheel("kuehne/kuehne.net.xml"), "eval", "4 crossings, 8 meters"),
        ScenarioSpec("corridor", _wheel("corridor/corridor.net.xml"), "eval", "3-light corridor"),
        ScenarioSpec("cross", _wheel("cross/cross.net.xml"), "eval", "one 4-arm crossing"),
    )
}
"""Every scenario by name."""

DROPPED: Mapping[str, str] = {
    "DRT/osm.net.xml": "a light has 10 green phases (the policy supports "
    "rl.features.MAX_GREENS) and the wheel has no other program for it",
    "A10KW/osm.net.xml": "vehicles deadlock at unsignalised motorway merges at the low level "
    "without teleporting: signal control cannot change its delay",
}
"""Wheel networks checked and left out, with the reason."""


def scenario(name: str) -> ScenarioSpec:
    """The scenario called ``name``.

    Raises:
        ConfigError: no scenario has that name (the message lists them).
    """
    spec = SCENARIOS.get(name)
    if spec is None:
        raise ConfigError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    return spec


def scenarios(role: ScenarioRole | None = None) -> tuple[ScenarioSpec, ...]:
    """Every scenario with ``role`` (all when None), in registry order."""
    return tuple(s for s in SCENARIOS.values() if role is None or s.role == role)


# ------------------------------------------------------------------ networks


def _read_xml(path: Path) -> ET.ElementTree[ET.Element]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return ET.parse(f)
        return ET.parse(path)
    except (OSError, ET.ParseError) as e:
        raise ConfigError(f"network file {path} cannot be read as SUMO XML: {e}") from e


def _is_green(state: str) -> bool:
    return ("G" in state or "g" in state) and "y" not in state


def _make_playable(root: ET.Element) -> bool:
    """Rewrite held and one-green-per-program lights in place; True when anything changed."""
    programs: dict[str, list[ET.Element]] = {}
    for logic in root.findall("tlLogic"):
        programs.setdefault(logic.get("id", ""), []).append(logic)
    changed = False
    for logics in programs.values():
        first = logics[0]
        greens = [p for p in first.findall("phase") if _is_green(p.get("state", ""))]
        if len(greens) < 2 and len(logics) > 1 and all(lg.get("type") == "static" for lg in logics):
            # bs3d: one green per program; their leading transitions chain into one cycle
            for other in logics[1:]:
                for phase in other.findall("phase"):
                    first.append(phase)
                root.remove(other)
            changed = True
        for phase in first.findall("phase"):
            if float(phase.get("duration", "0")) >= _HOLD_S:
                phase.set("duration", f"{HELD_PHASE_S:g}")
                for bound in ("minDur", "maxDur"):
                    phase.attrib.pop(bound, None)
                changed = True
    return changed


def _override_programs(root: ET.Element, programs: Path) -> bool:
    """Replace every program of each light that ``programs`` names by the file's ones."""
    replacements: dict[str, list[ET.Element]] = {}
    for logic in _read_xml(programs).getroot().iter("tlLogic"):
        replacements.setdefault(logic.get("id", ""), []).append(logic)
    children = list(root)
    for tls_id, logics in replacements.items():
        old = [c for c in children if c.tag == "tlLogic" and c.get("id") == tls_id]
        if not old:
            raise ConfigError(f"{programs}: light {tls_id!r} is not in the network")
        at = list(root).index(old[0])
        for element in old:
            root.remove(element)
        for offset, logic in enumerate(logics):
            logic.set("programID", logic.get("programID", "0"))
            root.insert(at + offset, logic)
    return bool(replacements)


def playable_network(net: Path, out_dir: Path, programs: Path | None = None) -> Path:
    """The network itself, or a copy in ``out_dir`` whose programs a fixed-time controller runs.

    ``programs`` (an additional file of ``tlLogic``) replaces the programs of the
    lights it names first. See the module docstring for what is rewritten. The
    copy is named by the sources' digest and written once.
    """
    digest = sha256_file(net) + (sha256_file(programs) if programs is not None else "")
    target = out_dir / f"{_stem(net)}-{sha256_hex(digest.encode())[:12]}.net.xml"
    if target.is_file():
        return target
    tree = _read_xml(net)
    overridden = programs is not None and _override_programs(tree.getroot(), programs)
    if not _make_playable(tree.getroot()) and not overridden:
        return net
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tree.write(tmp, encoding="UTF-8", xml_declaration=True)
    os.replace(tmp, target)
    logger.info("%s: programs made fixed-time in %s", net.name, target)
    return target


def _stem(net: Path) -> str:
    name = net.name
    for suffix in (".gz", ".xml", ".net"):
        name = name.removesuffix(suffix)
    return name


def vehicle_lane_km(model: NetworkModel) -> float:
    """Total length of the lanes motor vehicles may use (km)."""
    return sum(lane.length_m for lane in model.lanes.values() if lane.vehicles) / 1000.0


def _edge_counts(routes: Path) -> Counter[str]:
    """Edge id -> vehicles whose route uses it."""
    counts: Counter[str] = Counter()
    try:
        for _, elem in ET.iterparse(routes, events=("end",)):
            if elem.tag == "route":
                counts.update(elem.get("edges", "").split())
            elif elem.tag == "vehicle":
                elem.clear()
    except (OSError, ET.ParseError) as e:
        raise SimulationError(f"routes file {routes} cannot be read: {e}") from e
    return counts


def demand_saturation(model: NetworkModel, routes: Path, hours: float) -> float:
    """The flow-weighted mean degree of saturation of the lights' approaches.

    Each approach edge's flow (vehicles whose route uses it, per hour) over its
    capacity: :data:`SATURATION_FLOW_VPH` per controlled lane times an equal
    share of the light's green time (one over its number of green phases,
    less :data:`_LOST_SHARE`). Weighted by flow, so the busy approaches that
    queue first dominate.
    """
    counts = _edge_counts(routes)
    flow_sum = weighted = 0.0
    for light in model.intersections.values():
        share = (1.0 - _LOST_SHARE) / max(1, len(light.base.green_indices))
        lanes = Counter(model.lanes[lane].edge_id for lane in light.incoming_lanes)
        for edge in light.approaches:
            flow = counts.get(edge, 0) / hours
            capacity = lanes[edge] * SATURATION_FLOW_VPH * share
            if capacity > 0:
                flow_sum += flow
                weighted += flow * flow / capacity
    return weighted / flow_sum if flow_sum > 0 else 0.0


# ------------------------------------------------------------------ demand


def _random_trips(
    net: Path, routes: Path, *, name: str, begin_s: float, end_s: float, period_s: float, seed: int
) -> None:
    tool = sumo_home() / "tools" / "randomTrips.py"
    work = routes.parent
    cmd = [
        sys.executable, str(tool), "-n", str(net),
        "-o", str(work / "trips.xml"), "-r", str(routes),
        "-b", f"{begin_s:g}", "-e", f"{end_s:g}", "-p", f"{period_s:.6f}",
        "--fringe-factor", f"{FRINGE_FACTOR:g}", "--seed", str(seed),
        "--vehicle-class", "passenger", "--validate", "--prefix", f"{name}.",
        "--trip-attributes", 'departLane="best" departSpeed="max"',
    ]  # fmt: skip
    env = {**os.environ, "SUMO_HOME": str(sumo_home())}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SimulationError(f"randomTrips.py on {net.name} did not finish: {e}") from e
    if done.returncode != 0 or not routes.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SimulationError(
            f"randomTrips.py on {net.name} failed (exit {done.returncode}): {' | '.join(tail)}"
        )
    # the tools' headers carry the date and absolute paths: drop them so builds are identical
    routes.write_bytes(_GENERATED.sub(b"", routes.read_bytes()))
    (work / "trips.xml").unlink(missing_ok=True)


def _departures(routes: Path) -> list[float]:
    out: list[float] = []
    for _, elem in ET.iterparse(routes, events=("end",)):
        if elem.tag in ("vehicle", "trip"):
            out.append(float(elem.get("depart", "0")))
            elem.clear()
    return out


def _tool_key() -> str:
    return sha256_file(sumo_home() / "tools" / "randomTrips.py")[:16]


def _reference_period_s(model: NetworkModel) -> float:
    lane_km = vehicle_lane_km(model)
    if lane_km <= 0:
        raise ConfigError(f"network {model.path.name} has no vehicle lanes to insert trips on")
    return 3600.0 / (_REFERENCE_DENSITY * lane_km)


def calibrate(net: Path, model: NetworkModel, cache: Path) -> tuple[float, float]:
    """The calibration pass of a network: (randomTrips period, :func:`demand_saturation`).

    One hour of trips at :data:`_REFERENCE_DENSITY` on :data:`_CALIBRATION_SEED`;
    the saturation scales with the insertion rate, so a level's period is
    ``period * saturation / target``. Cached in ``cache`` per network and tool.

    Raises:
        ConfigError: no trip of the pass crosses a traffic light.
        SimulationError: randomTrips failed.
    """
    target = cache / f"calibration-{model.sha256[:12]}-{_tool_key()}.json"
    if target.is_file():
        found = json.loads(target.read_text(encoding="utf-8"))
        return float(found["period_s"]), float(found["saturation"])
    period = _reference_period_s(model)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".calibration-", dir=cache))
    try:
        routes = work / "calibration.rou.xml"
        _random_trips(net, routes, name="calibration", begin_s=0.0, end_s=3600.0,
                      period_s=period, seed=_CALIBRATION_SEED)  # fmt: skip
        saturation = demand_saturation(model, routes, 1.0)
        if saturation <= 0:
            raise ConfigError(
                f"network {net.name}: no random trip crosses a traffic light, so no demand level "
                "can load them; choose another network"
            )
        tmp = work / "calibration.json"
        tmp.write_text(json.dumps({"period_s": period, "saturation": saturation}) + "\n")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return period, saturation


def insertion_period_s(net: Path, model: NetworkModel, level: DemandLevel, cache: Path) -> float:
    """The randomTrips ``--period`` that gives ``level``'s saturation on the network (6 digits).

    Raises:
        ConfigError: an unknown level, or see :func:`calibrate`.
    """
    if level not in LEVEL_SATURATION:
        raise ConfigError(f"demand level {level!r}: choose from {', '.join(get_args(DemandLevel))}")
    period, saturation = calibrate(net, model, cache)
    return float(f"{period * saturation / LEVEL_SATURATION[level]:.6g}")


def build_scenario(
    name: str,
    out_dir: Path,
    *,
    level: DemandLevel,
    seed: int,
    begin_s: float = 0.0,
    hours: float = 1.0,
) -> BuiltScenario:
    """Build (or find in the cache) scenario ``name`` with demand ``level`` on ``seed``.

    Args:
        name: a key of :data:`SCENARIOS`.
        out_dir: the cache; the build's files are under ``out_dir/<name>/``.
        level: the demand level (:data:`LEVEL_SATURATION`).
        seed: randomTrips' seed (the demand differs per seed, its level does not).
        begin_s: the first departure time (whole seconds).
        hours: the departure window's length.

    Raises:
        ConfigError: unknown name or level, a window that is not positive, or a
            network the project's loader refuses.
        SimulationError: SUMO or randomTrips is missing or failed.
    """
    spec = scenario(name)
    if hours <= 0 or begin_s < 0 or begin_s != int(begin_s):
        raise ConfigError(f"scenario window: need whole begin_s >= 0 and hours > 0, got "
                          f"begin_s={begin_s} hours={hours}")  # fmt: skip
    source = spec.network()
    if not source.is_file():
        raise SimulationError(f"scenario {name}: network {source} is not installed")
    base = Path(out_dir) / name
    net = playable_network(source, base, spec.programs() if spec.programs else None)
    model = load_network(net)
    end_s = begin_s + hours * 3600.0
    period = insertion_period_s(net, model, level, base)
    key = sha256_hex(
        canonical_json(
            {
                "format": _FORMAT,
                "net": model.sha256,
                "period_s": period,
                "fringe": FRINGE_FACTOR,
                "seed": int(seed),
                "begin_s": begin_s,
                "end_s": end_s,
                "sumo": SUMO_VERSION,
                "tool": _tool_key(),
            }
        )
    )
    detectors = ensure_detectors(net, base / f"{_stem(net)}-{model.sha256[:12]}.det.add.xml")
    folder = base / f"{level}-s{seed}-{key[:16]}"
    meta = folder / "scenario.json"
    if not meta.is_file():
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{level}-s{seed}-", dir=base))
        try:
            routes = work / "routes.rou.xml"
            _random_trips(net, routes, name=name, begin_s=begin_s, end_s=end_s,
                          period_s=period, seed=seed)  # fmt: skip
            record = {
                "scenario": name, "level": level, "seed": seed, "key": key,
                "begin_s": begin_s, "end_s": end_s, "period_s": period,
                "vehicles": len(_departures(routes)),
                "saturation": round(demand_saturation(model, routes, hours), 4),
            }  # fmt: skip
            (work / "scenario.json").write_text(json.dumps(record, sort_keys=True) + "\n")
            try:
                os.replace(work, folder)
            except OSError:
                if not meta.is_file():  # not a concurrent build that got there first
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    record = json.loads(meta.read_text(encoding="utf-8"))
    return BuiltScenario(
        name=name,
        level=level,
        seed=int(seed),
        net=net,
        routes=folder / "routes.rou.xml",
        detectors=detectors,
        begin_s=begin_s,
        end_s=end_s,
        vehicles=int(record["vehicles"]),
        saturation=float(record["saturation"]),
        key=key,
    )
