"""Event days: a field day described in TOML, validated against its network, built once.

An event day file (schema ``signaltwin.event-day/v1``, see ``docs/field.md``)
names the field's network, its hidden demand and seed, and what happens that
day that nobody tells the twin: incidents that close lanes or edges, demand
pulses between zones, OD shifts and detector faults. :func:`load_event_day`
reads and validates it (pydantic, unknown keys refused, every error naming the
file, the key and the fix; edges, lanes, zones and detectors checked against
the network); :meth:`EventDay.field_config` writes the day's demand once into a
work directory and returns the :class:`~simulators.field.scenario.FieldConfig`
that plays it, with :class:`~simulators.field.events.DayEvents` as its events.

Every time in the file is field time in seconds (SUMO's clock), inside the day
``[field.begin_s, field.begin_s + field.duration_s]``.
"""

from __future__ import annotations

__all__ = [
    "EVENT_DAYS_DIR",
    "EVENT_DAY_SCHEMA",
    "EventDay",
    "OdShift",
    "Pulse",
    "RoadGraph",
    "load_event_day",
    "shipped_event_days",
]

import gzip
import math
import random
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from configs.errors import ConfigError
from simulators.field.event_schema import EVENT_DAY_SCHEMA, EventDayFile, format_errors
from simulators.field.events import Closure, DayEvents, DetectorFault
from simulators.field.scenario import Backend, FieldConfig
from simulators.netbuild import (
    DISTRICT_DIR,
    DemandProfile,
    district_paths,
    expand_demand,
    fleet_xml,
)
from simulators.network import ensure_detectors, load_network, write_detectors
from simulators.sumo import sumo_home

EVENT_DAYS_DIR: Path = DISTRICT_DIR.parent / "scenarios"
"""Where the shipped event days live (``configs/scenarios``)."""

_PULSE_VTYPE = "signaltwin_pulse"


def shipped_event_days() -> tuple[Path, ...]:
    """The shipped event day files, sorted by name."""
    return tuple(sorted(EVENT_DAYS_DIR.glob("*.toml")))


@dataclass(frozen=True)
class RoadGraph:
    """The network's edges as a graph: where trips can start and end, and each edge's opposite.

    Attributes:
        origins: fringe edges a trip can start on (nothing enters their start
            node except their opposite).
        destinations: fringe edges a trip can end on (nothing leaves their end
            node except their opposite).
        opposite: edge -> the edge between the same nodes the other way.
    """

    origins: frozenset[str]
    destinations: frozenset[str]
    opposite: dict[str, str]

    @classmethod
    def load(cls, net_path: Path) -> RoadGraph:
        """Read the normal (non-internal) edges of a ``.net.xml`` (or ``.net.xml.gz``)."""
        ends: dict[str, tuple[str, str]] = {}
        opener = gzip.open if net_path.name.endswith(".gz") else open
        try:
            with opener(net_path, "rb") as fh:
                for _, elem in ET.iterparse(fh, events=("end",)):
                    if elem.tag == "edge":
                        if elem.get("function") is None and elem.get("from") and elem.get("to"):
                            ends[elem.get("id", "")] = (elem.get("from", ""), elem.get("to", ""))
                        elem.clear()
        except (OSError, ET.ParseError) as e:
            raise ConfigError(f"network {net_path} is unreadable: {e}") from e
        by_nodes = {nodes: edge for edge, nodes in ends.items()}
        opposite = {e: by_nodes[(b, a)] for e, (a, b) in ends.items() if (b, a) in by_nodes}
        entering: dict[str, set[str]] = {}
        leaving: dict[str, set[str]] = {}
        for edge, (a, b) in ends.items():
            leaving.setdefault(a, set()).add(edge)
            entering.setdefault(b, set()).add(edge)
        origins = frozenset(
            e for e, (a, _) in ends.items() if entering.get(a, set()) <= {opposite.get(e)}
        )
        destinations = frozenset(
            e for e, (_, b) in ends.items() if leaving.get(b, set()) <= {opposite.get(e)}
        )
        return cls(origins, destinations, opposite)


@dataclass(frozen=True)
class Pulse:
    """Extra trips between two zones for ``[from_s, to_s)`` (Poisson arrivals).

    Each trip starts on an edge of ``origins`` and ends on one of
    ``destinations`` (uniformly drawn); SUMO routes it at insertion.
    """

    origins: tuple[str, ...]
    destinations: tuple[str, ...]
    veh_per_h: float
    from_s: float
    to_s: float


@dataclass(frozen=True)
class OdShift:
    """A shift of the profile's OD pattern, phased in linearly over ``[at_s, at_s + over_s]``.

    ``reverse``: a trip from O to D becomes the trip from D's opposite edge to
    O's opposite edge (the PM return of the AM commute). ``reweight``: origins
    and destinations are drawn again with their weights multiplied by
    ``origins`` / ``destinations`` (edges not named keep factor 1). At a time
    with phase-in fraction ``f`` a trip is shifted with probability ``f``, so the
    pattern is the mixture ``(1 - f) * before + f * after``.
    """

    kind: Literal["reverse", "reweight"]
    at_s: float
    over_s: float
    origins: tuple[tuple[str, float], ...] = ()
    destinations: tuple[tuple[str, float], ...] = ()

    def fraction(self, time_s: float) -> float:
        """Share of trips departing at ``time_s`` that the shift applies to (0..1)."""
        if time_s < self.at_s:
            return 0.0
        if self.over_s <= 0:
            return 1.0
        return min(1.0, (time_s - self.at_s) / self.over_s)


@dataclass(frozen=True)
class EventDay:
    """One validated event day (paths absolute; times in field seconds).

    Attributes:
        source: the TOML file it was read from.
        name: the day's name.
        description: what the day is for.
        net_path: the field's network.
        detectors_path: its loops (None: generated next to the demand).
        profile_path: a demand profile expanded with the seed (or None), or
        routes_paths: routes files played as they are.
        seed: SUMO's seed and the demand expansion's.
        begin_s: field time at start.
        duration_s: the day's length.
        demand_scale: multiplier on the demand.
        closures: incidents.
        pulses: special-event demand.
        od_shifts: OD pattern shifts (profile demand only), in time order.
        faults: detector faults (detectors resolved).
    """

    source: Path
    name: str
    description: str
    net_path: Path
    detectors_path: Path | None
    profile_path: Path | None
    routes_paths: tuple[Path, ...]
    seed: int
    begin_s: int
    duration_s: int
    demand_scale: float
    closures: tuple[Closure, ...]
    pulses: tuple[Pulse, ...]
    od_shifts: tuple[OdShift, ...]
    faults: tuple[DetectorFault, ...]

    @property
    def end_s(self) -> int:
        """Field time the day ends."""
        return self.begin_s + self.duration_s

    def events(self, interval_s: int = 60, seed: int | None = None) -> DayEvents | None:
        """The runtime part (closures and faults), or None for a day with neither."""
        if not self.closures and not self.faults:
            return None
        return DayEvents(
            closures=self.closures,
            faults=self.faults,
            interval_s=interval_s,
            seed=self.seed if seed is None else seed,
        )

    def write_demand(self, work_dir: Path, seed: int | None = None) -> tuple[Path, ...]:
        """Write the day's routes into ``work_dir`` (base demand, shifts, pulses).

        The same day and seed write byte-identical files.
        """
        seed = self.seed if seed is None else int(seed)
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        graph = RoadGraph.load(self.net_path)
        pulse_trips = [
            trip
            for index, pulse in enumerate(self.pulses)
            for trip in _pulse_trips(pulse, index, seed, graph)
        ]
        if self.profile_path is None:
            if not pulse_trips:
                return self.routes_paths
            out = work_dir / f"{self.name}-s{seed}-pulses.rou.xml"
            header = f'    <vType id="{_PULSE_VTYPE}" vClass="passenger" speedDev="0.1"/>'
            _write_trips(out, header, pulse_trips, _PULSE_VTYPE, f"{self.name} seed {seed}")
            return (*self.routes_paths, out)
        profile = DemandProfile.load(self.profile_path)
        base = work_dir / f"{self.name}-s{seed}-base.rou.xml"
        repeat = max(1, math.ceil(self.end_s / profile.duration_s))
        expand_demand(
            profile,
            seed,
            base,
            scale=self.demand_scale,
            begin_s=self.begin_s,
            end_s=self.end_s,
            repeat=repeat,
        )
        trips = _read_trips(base)
        trips = _apply_shifts(trips, self.od_shifts, profile, seed, graph)
        trips = sorted(trips + pulse_trips, key=lambda t: (t[1], t[0]))
        out = work_dir / f"{self.name}-s{seed}.rou.xml"
        _write_trips(out, fleet_xml(profile.fleet), trips, "fleet", f"{self.name} seed {seed}")
        base.unlink()
        return (out,)

    def field_config(
        self,
        work_dir: Path,
        *,
        backend: Backend = "libsumo",
        interval_s: int = 60,
        teleport_s: float = -1,
        seed: int | None = None,
    ) -> FieldConfig:
        """The field that plays this day, its demand written once into ``work_dir``.

        ``routes_path`` names the written files, so a fork loads the same
        demand; ``events`` is the day's :class:`DayEvents` (picklable).

        Args:
            work_dir: where the demand (and the field's own outputs) go.
            backend: ``libsumo`` or ``traci``.
            interval_s: the detectors' interval (the faults count on it).
            teleport_s: SUMO ``--time-to-teleport`` (-1: never, as a city).
            seed: another seed for the same day (default: the file's).
        """
        work_dir = Path(work_dir)
        routes = self.write_demand(work_dir, seed)
        detectors = self.detectors_path or ensure_detectors(
            self.net_path, work_dir / f"{self.name}.det.add.xml"
        )
        scale = 1.0 if self.profile_path is not None else self.demand_scale
        return FieldConfig(
            net_path=self.net_path,
            detectors_path=detectors,
            routes_path=routes if routes else None,
            demand_scale=scale,
            seed=self.seed if seed is None else int(seed),
            begin_s=self.begin_s,
            interval_s=interval_s,
            teleport_s=teleport_s,
            backend=backend,
            work_dir=work_dir,
            extra_args=("--ignore-route-errors", "true"),
            events=self.events(interval_s, seed),
        )


# ------------------------------------------------------------------ loading


def load_event_day(path: Path | str) -> EventDay:
    """Read and validate an event day file (paths relative to the file).

    Raises:
        ConfigError: naming the file, the key, the bad value and the fix.
    """
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{file}: no such event day file") from e
    except OSError as e:
        raise ConfigError(f"{file}: cannot read event day file: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not UTF-8 text: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from e
    try:
        day = EventDayFile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{file}: {format_errors(e, raw)}") from e
    return _resolve(day, file)


def _fail(file: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{file}: invalid event day:\n  {key}: {message}")


def _path(base: Path, value: str) -> Path:
    if value.startswith("sumo:"):
        return sumo_home() / "tools" / value.removeprefix("sumo:")
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _resolve(day: EventDayFile, file: Path) -> EventDay:
    base = file.resolve().parent
    fld = day.field
    district = district_paths()
    net = district["net"] if fld.network == "district" else _path(base, fld.network)
    if not net.is_file():
        raise _fail(
            file,
            "field.network",
            f"{net} does not exist (give a .net.xml, "
            "'district' or 'sumo:game/<dir>/<file>.net.xml')",
        )
    detectors: Path | None
    if fld.detectors is not None:
        detectors = _path(base, fld.detectors)
        if not detectors.is_file():
            raise _fail(file, "field.detectors", f"{detectors} does not exist")
    else:
        detectors = district["det"] if fld.network == "district" else None
    try:
        if detectors is not None:
            model = load_network(net, detectors)
        else:  # the loops the field will generate (deterministic), to check fault ids
            with tempfile.TemporaryDirectory(prefix="signaltwin-day-") as tmp:
                model = load_network(net, write_detectors(net, Path(tmp) / "loops.add.xml"))
    except ConfigError as e:
        raise _fail(file, "field.network", str(e)) from e
    graph = RoadGraph.load(net)
    demands = [fld.demand] if isinstance(fld.demand, str) else list(fld.demand)
    profile: Path | None = None
    routes: list[Path] = []
    for k, item in enumerate(demands):
        key = "field.demand" if isinstance(fld.demand, str) else f"field.demand[{k}]"
        p = district["demand"] if item == "district" else _path(base, item)
        if not p.is_file():
            raise _fail(
                file,
                key,
                f"{p} does not exist ('district', a .demand.json profile or .rou.xml files)",
            )
        if p.name.endswith(".json"):
            if len(demands) != 1:
                raise _fail(file, key, "a demand profile is the whole demand: give it alone")
            profile = p
        else:
            routes.append(p)
    if profile is not None:
        prof = DemandProfile.load(profile)
        for kind, edges in (("origin", prof.origins), ("destination", prof.destinations)):
            bad = sorted(set(edges) - set(model.edges))
            if bad:
                raise _fail(
                    file,
                    "field.demand",
                    f"profile {profile.name} names {kind} edges {bad[:5]} that {net.name} lacks",
                )
    begin, end = fld.begin_s, fld.begin_s + fld.duration_s

    def within(key: str, *times: float) -> None:
        for t in times:
            if not begin <= t <= end:
                raise _fail(
                    file,
                    key,
                    f"{t:g} s is outside the day [{begin}, {end}] "
                    "(field.begin_s .. field.begin_s + field.duration_s)",
                )

    closures: list[Closure] = []
    for i, inc in enumerate(day.incident):
        key = f"incident[{i}]"
        within(f"{key}.from_s/to_s", inc.from_s, inc.to_s)
        lanes = model.edges.get(inc.edge)
        if lanes is None:
            raise _fail(file, f"{key}.edge", f"{inc.edge!r} is not an edge of {net.name}")
        # vehicle lanes only: a sidewalk stays open
        by_index = {model.lanes[lane].index: lane for lane in lanes if model.lanes[lane].vehicles}
        if not by_index:
            raise _fail(file, f"{key}.edge", f"edge {inc.edge!r} has no vehicle lane to close")
        if inc.lanes is None:
            chosen = tuple(by_index[n] for n in sorted(by_index))
        else:
            missing = [n for n in inc.lanes if n not in by_index]
            if missing:
                raise _fail(
                    file,
                    f"{key}.lanes",
                    f"edge {inc.edge!r} has vehicle lanes with indices {sorted(by_index)}, "
                    f"not {missing}",
                )
            chosen = tuple(by_index[n] for n in sorted(set(inc.lanes)))
        whole = len(chosen) == len(by_index)
        closures.append(Closure(inc.edge, chosen, whole, inc.from_s, inc.to_s))
    pulses: list[Pulse] = []
    for i, pul in enumerate(day.pulse):
        key = f"pulse[{i}]"
        within(f"{key}.from_s/to_s", pul.from_s, pul.to_s)
        for name, zone, ok, what in (
            ("origins", pul.origins, graph.origins, "an origin (a fringe edge entering)"),
            (
                "destinations",
                pul.destinations,
                graph.destinations,
                "a destination (a fringe edge leaving)",
            ),
        ):
            for edge in zone:
                if edge not in ok:
                    raise _fail(
                        file,
                        f"{key}.{name}",
                        f"{edge!r} is not {what} of {net.name}; choose from {sorted(ok)[:8]}",
                    )
        pulses.append(
            Pulse(tuple(pul.origins), tuple(pul.destinations), pul.veh_per_h, pul.from_s, pul.to_s)
        )
    shifts: list[OdShift] = []
    for i, sh in enumerate(day.od_shift):
        key = f"od_shift[{i}]"
        within(f"{key}.at_s", sh.at_s, sh.at_s + sh.over_s)
        if profile is None:
            raise _fail(
                file,
                key,
                "an OD shift redraws a profile's trips; field.demand must "
                "be a .demand.json profile ('district'); a routes file's OD is fixed",
            )
        prof = DemandProfile.load(profile)
        for name, factors, edges in (
            ("origins", sh.origins, prof.origins),
            ("destinations", sh.destinations, prof.destinations),
        ):
            bad = sorted(set(factors) - set(edges))
            if bad:
                raise _fail(
                    file, f"{key}.{name}", f"{bad[:5]} are not {name} of the profile {profile.name}"
                )
        shifts.append(
            OdShift(
                sh.kind,
                sh.at_s,
                sh.over_s,
                tuple(sorted(sh.origins.items())),
                tuple(sorted(sh.destinations.items())),
            )
        )
    shifts.sort(key=lambda s: s.at_s)
    det_ids = sorted(d.id for d in model.detectors)
    faults: list[DetectorFault] = []
    for i, fault in enumerate(day.detector_fault):
        key = f"detector_fault[{i}]"
        within(f"{key}.from_s/to_s", fault.from_s, fault.to_s)
        if fault.detectors is not None:
            unknown = [d for d in fault.detectors if d not in det_ids]
            if unknown:
                raise _fail(
                    file,
                    f"{key}.detectors",
                    f"{unknown[:5]} are not loops of {net.name} (see {model.detectors_path})",
                )
            chosen_ids = tuple(dict.fromkeys(fault.detectors))
        else:
            if not det_ids:
                raise _fail(file, f"{key}.share", f"{net.name} has no loops to pick from")
            share = fault.share if fault.share is not None else 0.0
            n = max(1, round(share * len(det_ids)))
            chosen_ids = tuple(sorted(random.Random(f"{fld.seed}:fault:{i}").sample(det_ids, n)))
        noise = fault.noise if fault.noise is not None else 0.0
        faults.append(DetectorFault(chosen_ids, fault.kind, fault.from_s, fault.to_s, noise))
    return EventDay(
        source=file.resolve(),
        name=day.name,
        description=day.description,
        net_path=net,
        detectors_path=detectors,
        profile_path=profile,
        routes_paths=tuple(routes),
        seed=fld.seed,
        begin_s=fld.begin_s,
        duration_s=fld.duration_s,
        demand_scale=fld.demand_scale,
        closures=tuple(closures),
        pulses=tuple(pulses),
        od_shifts=tuple(shifts),
        faults=tuple(faults),
    )


# ------------------------------------------------------------------- demand

_Trip = tuple[str, float, str, str]
"""``(id, depart_s, from_edge, to_edge)``."""


def _read_trips(path: Path) -> list[_Trip]:
    trips: list[_Trip] = []
    for _, elem in ET.iterparse(path, events=("end",)):
        if elem.tag == "trip":
            trips.append(
                (
                    elem.get("id", ""),
                    float(elem.get("depart", "0")),
                    elem.get("from", ""),
                    elem.get("to", ""),
                )
            )
            elem.clear()
    return trips


def _apply_shifts(
    trips: list[_Trip],
    shifts: tuple[OdShift, ...],
    profile: DemandProfile,
    seed: int,
    graph: RoadGraph,
) -> list[_Trip]:
    if not shifts:
        return trips
    out: list[_Trip] = []
    for trip_id, depart, origin, dest in trips:
        for index, shift in enumerate(shifts):
            share = shift.fraction(depart)
            if share <= 0:
                continue
            rng = random.Random(f"{seed}:shift:{index}:{trip_id}")
            if rng.random() >= share:
                continue
            if shift.kind == "reverse":
                new_o, new_d = graph.opposite.get(dest), graph.opposite.get(origin)
                if new_o in profile.origins and new_d in profile.destinations:
                    origin, dest = new_o, new_d
                continue
            o_factor, d_factor = dict(shift.origins), dict(shift.destinations)
            origins = list(profile.origins)
            o_weights = [profile.origins[o] * o_factor.get(o, 1.0) for o in origins]
            dests = list(profile.destinations)
            d_weights = [profile.destinations[d] * d_factor.get(d, 1.0) for d in dests]
            origin = rng.choices(origins, o_weights)[0]
            for _attempt in range(20):
                dest = rng.choices(dests, d_weights)[0]
                if graph.opposite.get(origin) != dest:
                    break
        out.append((trip_id, depart, origin, dest))
    return out


def _pulse_trips(pulse: Pulse, index: int, seed: int, graph: RoadGraph) -> list[_Trip]:
    rng = random.Random(f"{seed}:pulse:{index}")
    rate = pulse.veh_per_h / 3600.0
    trips: list[_Trip] = []
    t = pulse.from_s
    while True:
        t += rng.expovariate(rate)
        if t >= pulse.to_s:
            return trips
        origin = rng.choice(pulse.origins)
        dest = rng.choice(pulse.destinations)
        for _attempt in range(20):
            if graph.opposite.get(origin) != dest or len(pulse.destinations) == 1:
                break
            dest = rng.choice(pulse.destinations)
        trips.append((f"pulse{index}.{len(trips)}", t, origin, dest))


def _write_trips(path: Path, header: str, trips: list[_Trip], vtype: str, what: str) -> None:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f"<!-- signaltwin event day: {what} -->",
        "<routes>",
        header,
    ]
    for trip_id, depart, origin, dest in trips:
        lines.append(
            f'    <trip id="{trip_id}" type="{vtype}" depart="{depart:.2f}" from="{origin}" '
            f'to="{dest}" departLane="best" departSpeed="max"/>'
        )
    lines.append("</routes>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
