"""The network model: intersections, base programs, detectors and geometry of a SUMO net.

:func:`load_network` reads any SUMO ``.net.xml`` (or ``.net.xml.gz``) that has
traffic lights, whether the project built it or not. For each traffic light it
records the controlled incoming lanes and approach edges, the link indices
(marking pedestrian-crossing links), the base program (the light's first
program, as a :class:`configs.timing.BaseProgram`, with phases that give a
crossing green marked as pedestrian phases) and a position. Lane shapes are kept
for rendering.

Detectors come from an additional file of E1 induction loops. A network without
one gets loops generated on every incoming vehicle lane of every traffic light
(:func:`ensure_detectors`), so a foreign network works unchanged.

The file is parsed with :mod:`xml.etree.ElementTree` (streaming), which is much
faster than :func:`sumolib.net.readNet` on large networks; models are cached per
path and sha256, so an edited file is re-read.
"""

from __future__ import annotations

__all__ = [
    "Detector",
    "Intersection",
    "Lane",
    "Link",
    "NetworkModel",
    "ensure_detectors",
    "load_network",
    "read_detectors",
    "read_loops",
    "write_detectors",
]

import gzip
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import quoteattr

from pydantic import ValidationError

from configs.digests import sha256_hex
from configs.errors import ConfigError
from configs.timing import BaseProgram, NetworkRef

logger = logging.getLogger(__name__)

Point = tuple[float, float]

# Vehicle classes that make a lane a "vehicle lane" (detectors, approaches).
_MOTOR_CLASSES = frozenset(
    {
        "passenger",
        "private",
        "taxi",
        "bus",
        "coach",
        "delivery",
        "truck",
        "trailer",
        "motorcycle",
        "moped",
        "evehicle",
        "emergency",
        "authority",
        "army",
        "vip",
        "hov",
        "custom1",
        "custom2",
    }
)


@dataclass(frozen=True)
class Lane:
    """A lane of a normal (non-internal) edge."""

    id: str
    edge_id: str
    index: int
    length_m: float
    speed_mps: float
    width_m: float
    shape: tuple[Point, ...]
    vehicles: bool
    """True when motor vehicles may use the lane (False for sidewalks, bike lanes)."""


@dataclass(frozen=True)
class Link:
    """One signal-controlled connection: its index in the signal state string."""

    index: int
    from_lane: str
    to_lane: str
    pedestrian: bool
    """True for a pedestrian crossing link."""


@dataclass(frozen=True)
class Intersection:
    """A traffic light and what it controls."""

    tls_id: str
    position: Point
    junctions: tuple[str, ...]
    incoming_lanes: tuple[str, ...]
    """Controlled incoming vehicle lanes, sorted."""
    approaches: tuple[str, ...]
    """Edges of the incoming vehicle lanes, sorted."""
    links: tuple[Link, ...]
    base: BaseProgram
    programs: tuple[str, ...]
    """Every program id the net defines for this light (the base is the first)."""

    @property
    def pedestrian_links(self) -> tuple[int, ...]:
        """Link indices of pedestrian crossings."""
        return tuple(link.index for link in self.links if link.pedestrian)


@dataclass(frozen=True)
class Detector:
    """An E1 induction loop."""

    id: str
    lane_id: str
    pos_m: float
    tls_id: str | None
    """The traffic light whose incoming lane it sits on (None if none)."""


@dataclass(frozen=True)
class NetworkModel:
    """A loaded SUMO network with its traffic lights and detectors."""

    id: str
    """The file name without ``.net.xml`` (e.g. ``district``)."""
    path: Path
    sha256: str
    """sha256 hex of the ``.net.xml`` file's bytes."""
    intersections: Mapping[str, Intersection]
    lanes: Mapping[str, Lane]
    edges: Mapping[str, tuple[str, ...]]
    """Normal edge id -> its lane ids (index order)."""
    junction_shapes: Mapping[str, tuple[Point, ...]]
    bounds: tuple[float, float, float, float]
    """``(xmin, ymin, xmax, ymax)`` of the network (convBoundary)."""
    detectors: tuple[Detector, ...] = ()
    detectors_path: Path | None = None
    unsupported: Mapping[str, str] = field(default_factory=dict)
    """Traffic lights left out (e.g. ramp meters, rail signals): id -> why."""
    _by_tls: dict[str, tuple[Detector, ...]] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> NetworkRef:
        """The network reference a timing configuration carries."""
        return NetworkRef(id=self.id, sha256=self.sha256)

    @property
    def tls_ids(self) -> tuple[str, ...]:
        """Traffic-light ids, sorted."""
        return tuple(sorted(self.intersections))

    def base_programs(self) -> dict[str, BaseProgram]:
        """Traffic-light id -> base program."""
        return {t: i.base for t, i in self.intersections.items()}

    def geometry(self) -> dict[str, list[Point]]:
        """Lane id -> lane centre-line shape (every normal edge's lanes).

        Use :attr:`bounds` for the extent, :attr:`junction_shapes` for junction
        polygons and :attr:`lanes` for widths and the edge of each lane.
        """
        return {lane_id: list(lane.shape) for lane_id, lane in self.lanes.items()}

    def edge_geometry(self) -> dict[str, list[Point]]:
        """Edge id -> the shape of its middle lane (a simple edge centre line)."""
        out: dict[str, list[Point]] = {}
        for edge_id, lane_ids in self.edges.items():
            if lane_ids:
                out[edge_id] = list(self.lanes[lane_ids[len(lane_ids) // 2]].shape)
        return out

    def detectors_by_intersection(self) -> dict[str, tuple[Detector, ...]]:
        """Traffic-light id -> its detectors (every light present, maybe empty)."""
        return {t: self._by_tls.get(t, ()) for t in self.intersections}

    def with_detectors(self, detectors_path: Path) -> NetworkModel:
        """Return a copy of this model with detectors read from ``detectors_path``."""
        dets = read_detectors(detectors_path, self)
        by_tls: dict[str, list[Detector]] = {}
        for d in dets:
            if d.tls_id is not None:
                by_tls.setdefault(d.tls_id, []).append(d)
        return NetworkModel(
            id=self.id,
            path=self.path,
            sha256=self.sha256,
            intersections=self.intersections,
            lanes=self.lanes,
            edges=self.edges,
            junction_shapes=self.junction_shapes,
            bounds=self.bounds,
            detectors=dets,
            detectors_path=Path(detectors_path),
            unsupported=self.unsupported,
            _by_tls={t: tuple(v) for t, v in by_tls.items()},
        )


# ----------------------------------------------------------------------- parsing


def _open_xml(path: Path) -> Iterator[tuple[str, ET.Element]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        yield from ET.iterparse(fh, events=("start", "end"))


def _shape(text: str | None) -> tuple[Point, ...]:
    if not text:
        return ()
    pts: list[Point] = []
    for pair in text.split():
        xy = pair.split(",")
        pts.append((float(xy[0]), float(xy[1])))
    return tuple(pts)


def _allows_vehicles(allow: str | None, disallow: str | None) -> bool:
    if allow is not None:
        classes = set(allow.split())
        return "all" in classes or bool(classes & _MOTOR_CLASSES)
    if disallow is not None:
        classes = set(disallow.split())
        return "all" not in classes and bool(_MOTOR_CLASSES - classes)
    return True


def _network_id(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".xml", ".net"):
        name = name.removesuffix(suffix)
    return name or path.stem


@dataclass
class _Raw:
    lanes: dict[str, Lane] = field(default_factory=dict)
    edges: dict[str, list[str]] = field(default_factory=dict)
    edge_function: dict[str, str] = field(default_factory=dict)
    tl_logics: dict[str, list[ET.Element]] = field(default_factory=dict)
    links: dict[str, list[Link]] = field(default_factory=dict)
    junctions: dict[str, tuple[Point, tuple[Point, ...], str]] = field(default_factory=dict)
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    seen_net: bool = False


def _parse(path: Path) -> _Raw:
    raw = _Raw()
    edge_stack: list[str | None] = []
    crossing_edges: set[str] = set()
    conns: list[dict[str, str]] = []
    for event, elem in _open_xml(path):
        tag = elem.tag
        if event == "start":
            if tag == "net":
                raw.seen_net = True
            elif tag == "edge":
                eid = elem.get("id", "")
                func = elem.get("function", "normal")
                raw.edge_function[eid] = func
                if func == "crossing":
                    crossing_edges.add(eid)
                edge_stack.append(eid if func == "normal" else None)
                if func == "normal":
                    raw.edges[eid] = []
            continue
        # end events
        if tag == "location":
            conv = elem.get("convBoundary")
            if conv:
                xs = [float(v) for v in conv.split(",")]
                raw.bounds = (xs[0], xs[1], xs[2], xs[3])
        elif tag == "lane":
            owner = edge_stack[-1] if edge_stack else None
            if owner is not None:
                lid = elem.get("id", "")
                raw.lanes[lid] = Lane(
                    id=lid,
                    edge_id=owner,
                    index=int(elem.get("index", "0")),
                    length_m=float(elem.get("length", "0")),
                    speed_mps=float(elem.get("speed", "13.89")),
                    width_m=float(elem.get("width", "3.2")),
                    shape=_shape(elem.get("shape")),
                    vehicles=_allows_vehicles(elem.get("allow"), elem.get("disallow")),
                )
                raw.edges[owner].append(lid)
        elif tag == "edge":
            if edge_stack:
                edge_stack.pop()
            elem.clear()
        elif tag == "tlLogic":
            raw.tl_logics.setdefault(elem.get("id", ""), []).append(elem)
        elif tag == "junction":
            jid = elem.get("id", "")
            if elem.get("type") != "internal":
                raw.junctions[jid] = (
                    (float(elem.get("x", "0")), float(elem.get("y", "0"))),
                    _shape(elem.get("shape")),
                    elem.get("type", ""),
                )
            elem.clear()
        elif tag == "connection":
            if elem.get("tl") is not None and elem.get("linkIndex") is not None:
                conns.append(dict(elem.attrib))
            elem.clear()
    for c in conns:
        frm, to = c.get("from", ""), c.get("to", "")
        from_lane = f"{frm}_{c.get('fromLane', '0')}"
        to_lane = f"{to}_{c.get('toLane', '0')}"
        lane = raw.lanes.get(from_lane)
        # A crossing's signal sits on the link walkingarea -> crossing (or the reverse).
        pedestrian = (
            frm in crossing_edges
            or to in crossing_edges
            or raw.edge_function.get(frm) == "walkingarea"
            or (lane is not None and not lane.vehicles)
        )
        raw.links.setdefault(c["tl"], []).append(
            Link(int(c["linkIndex"]), from_lane, to_lane, pedestrian)
        )
    return raw


def _base_program(tls_id: str, logic: ET.Element, ped_links: set[int], path: Path) -> BaseProgram:
    phases: list[tuple[str, float, float | None, float | None]] = []
    ped_phases: list[int] = []
    for idx, ph in enumerate(logic.iter("phase")):
        state = ph.get("state", "")
        min_dur, max_dur = ph.get("minDur"), ph.get("maxDur")
        phases.append(
            (
                state,
                float(ph.get("duration", "0")),
                float(min_dur) if min_dur is not None else None,
                float(max_dur) if max_dur is not None else None,
            )
        )
        if any(i < len(state) and state[i] in "Gg" for i in ped_links):
            ped_phases.append(idx)
    kind = logic.get("type", "static")
    mode: Literal["fixed", "actuated"] = (
        "actuated" if kind in ("actuated", "delay_based") else "fixed"
    )
    try:
        return BaseProgram.from_sumo(
            tls_id,
            logic.get("programID", "0"),
            phases,
            offset_s=float(logic.get("offset", "0")),
            mode=mode,
            pedestrian_phases=ped_phases,
        )
    except ValidationError as e:
        detail = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'program'}: {err['msg']}"
            for err in e.errors()[:3]
        )
        raise ConfigError(
            f"{path}: traffic light {tls_id!r} program {logic.get('programID')!r} "
            f"cannot be a base program ({detail})"
        ) from e
    except (ValueError, ZeroDivisionError) as e:
        raise ConfigError(
            f"{path}: traffic light {tls_id!r} program {logic.get('programID')!r} "
            f"cannot be a base program: {e}"
        ) from e


def _build(path: Path, digest: str) -> NetworkModel:
    try:
        raw = _parse(path)
    except ET.ParseError as e:
        raise ConfigError(f"network file {path} is not well-formed XML: {e}") from e
    except (OSError, EOFError) as e:
        raise ConfigError(f"network file {path} cannot be read: {e}") from e
    except (ValueError, IndexError, KeyError) as e:
        raise ConfigError(f"network file {path} has a malformed attribute: {e}") from e
    if not raw.seen_net:
        raise ConfigError(f"{path} is not a SUMO network: it has no <net> root element")
    if not raw.tl_logics:
        raise ConfigError(
            f"network {path} has no traffic lights (<tlLogic>); signaltwin needs a "
            "signalised network (netconvert --tls.guess or junction type traffic_light)"
        )
    junction_of_tls: dict[str, list[str]] = {}
    for jid, (_, _, jtype) in raw.junctions.items():
        if "traffic_light" in jtype:
            junction_of_tls.setdefault(jid, []).append(jid)
    intersections: dict[str, Intersection] = {}
    unsupported: dict[str, str] = {}
    for tls_id, logics in sorted(raw.tl_logics.items()):
        links = tuple(sorted(raw.links.get(tls_id, []), key=lambda k: (k.index, k.from_lane)))
        ped = {k.index for k in links if k.pedestrian}
        try:
            base = _base_program(tls_id, logics[0], ped, path)
        except ConfigError as e:
            # One odd light (a ramp meter, a rail signal) should not make the whole
            # network unusable: leave it out and say so.
            unsupported[tls_id] = str(e)
            logger.warning("%s", e)
            continue
        incoming = sorted(
            {k.from_lane for k in links if not k.pedestrian and k.from_lane in raw.lanes}
        )
        approaches = sorted({raw.lanes[lane].edge_id for lane in incoming})
        junctions = tuple(sorted(j for j in raw.junctions if j == tls_id))
        if junctions:
            position = raw.junctions[junctions[0]][0]
        else:
            # Joined lights: the mean of the incoming lanes' end points.
            ends = [raw.lanes[lane].shape[-1] for lane in incoming if raw.lanes[lane].shape]
            position = (
                (sum(p[0] for p in ends) / len(ends), sum(p[1] for p in ends) / len(ends))
                if ends
                else (0.0, 0.0)
            )
        intersections[tls_id] = Intersection(
            tls_id=tls_id,
            position=position,
            junctions=junctions,
            incoming_lanes=tuple(incoming),
            approaches=tuple(approaches),
            links=links,
            base=base,
            programs=tuple(lg.get("programID", "0") for lg in logics),
        )
    if not intersections:
        reasons = "; ".join(unsupported.values())
        raise ConfigError(f"network {path} has no usable traffic light: {reasons}")
    return NetworkModel(
        id=_network_id(path),
        path=path,
        sha256=digest,
        intersections=intersections,
        lanes=raw.lanes,
        edges={e: tuple(v) for e, v in raw.edges.items()},
        junction_shapes={j: s for j, (_, s, _) in raw.junctions.items() if s},
        bounds=raw.bounds,
        unsupported=unsupported,
    )


_CACHE: dict[tuple[str, str], NetworkModel] = {}
_CACHE_LOCK = threading.Lock()


def load_network(net_path: Path | str, detectors_path: Path | str | None = None) -> NetworkModel:
    """Load a SUMO network (cached per path and content digest).

    Args:
        net_path: a ``.net.xml`` or ``.net.xml.gz`` with at least one traffic light.
        detectors_path: an additional file with E1 detectors; ``None`` leaves
            :attr:`NetworkModel.detectors` empty (see :func:`ensure_detectors`).

    Raises:
        ConfigError: the file is missing, unreadable, not a SUMO network, has no
            traffic lights, or a program is unusable (the message names the file).
    """
    path = Path(net_path).resolve()
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            f"network file {path} does not exist (simulation.network in the settings, "
            "or run 'signaltwin network build')"
        ) from e
    except OSError as e:
        raise ConfigError(f"network file {path} cannot be read: {e}") from e
    digest = sha256_hex(data)
    key = (str(path), digest)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
    if model is None:
        model = _build(path, digest)
        with _CACHE_LOCK:
            _CACHE[key] = model
    if detectors_path is not None:
        return model.with_detectors(Path(detectors_path))
    return model


# --------------------------------------------------------------------- detectors


def _detector_lanes(model: NetworkModel) -> list[tuple[str, str]]:
    """(lane id, tls id) of every incoming vehicle lane of every light, sorted."""
    seen: dict[str, str] = {}
    for tls_id in sorted(model.intersections):
        for lane in model.intersections[tls_id].incoming_lanes:
            seen.setdefault(lane, tls_id)
    return sorted(seen.items())


def write_detectors(
    net_path: Path | str,
    out_path: Path | str,
    *,
    setback_m: float = 30.0,
    period_s: int = 60,
) -> Path:
    """Write E1 induction loops on every incoming vehicle lane of every traffic light.

    Each loop sits ``setback_m`` before the stop line (mid-lane on lanes shorter
    than ``setback_m + 1``). Its id is ``e1_<lane id>``. The file is
    deterministic for a given network.

    Returns:
        ``out_path``.
    """
    model = load_network(net_path)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<additional>"]
    for lane_id, _tls in _detector_lanes(model):
        length = model.lanes[lane_id].length_m
        pos = length - setback_m if length > setback_m + 1.0 else max(0.1, length / 2.0)
        lines.append(
            f"    <inductionLoop id={quoteattr('e1_' + lane_id)} lane={quoteattr(lane_id)} "
            f'pos="{pos:.2f}" period="{int(period_s)}" file="NUL"/>'
        )
    lines.append("</additional>")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def ensure_detectors(net_path: Path | str, out_path: Path | str) -> Path:
    """Return ``out_path``, generating loops there first if it does not exist.

    A network the project did not make usually has no detectors; this gives it
    the same loops the district has (see :func:`write_detectors`).
    """
    out = Path(out_path)
    if out.is_file():
        read_detectors(out, load_network(net_path))  # validates
        return out
    logger.info("generating induction loops for %s into %s", net_path, out)
    return write_detectors(net_path, out)


def read_loops(path: Path | str) -> tuple[tuple[str, str, float], ...]:
    """The E1 loops (``inductionLoop``/``e1Detector``) of an additional file, as written.

    The one parser of detector files: :func:`read_detectors` checks its loops
    against a network, :func:`simulators.demand.read_detector_lanes` maps them to
    lanes.

    Returns:
        ``(detector id, lane id, pos)`` per loop, in file order (``pos`` as in the
        file: negative counts from the lane's end).

    Raises:
        ConfigError: the file is missing, unreadable or malformed.
    """
    p = Path(path)
    out: list[tuple[str, str, float]] = []
    try:
        for event, elem in _open_xml(p):
            if event != "end" or elem.tag not in ("inductionLoop", "e1Detector"):
                continue
            det_id, lane_id = elem.get("id"), elem.get("lane")
            if not det_id or not lane_id:
                raise ConfigError(f"{p}: an induction loop lacks 'id' or 'lane'")
            out.append((det_id, lane_id, float(elem.get("pos", "0"))))
    except FileNotFoundError as e:
        raise ConfigError(f"detector file {p} does not exist") from e
    except ET.ParseError as e:
        raise ConfigError(f"detector file {p} is not well-formed XML: {e}") from e
    except ValueError as e:
        raise ConfigError(f"detector file {p} has a malformed 'pos': {e}") from e
    except OSError as e:
        raise ConfigError(f"detector file {p} cannot be read: {e}") from e
    return tuple(out)


def read_detectors(path: Path | str, model: NetworkModel) -> tuple[Detector, ...]:
    """Read E1 detectors (``inductionLoop``/``e1Detector``) from an additional file.

    Raises:
        ConfigError: the file is missing or malformed, or a loop names a lane the
            network does not have.
    """
    p = Path(path)
    lane_tls: dict[str, str] = {}
    for tls_id in sorted(model.intersections):
        for lane_name in model.intersections[tls_id].incoming_lanes:
            lane_tls.setdefault(lane_name, tls_id)
    out: list[Detector] = []
    for det_id, lane_id, pos in read_loops(p):
        lane = model.lanes.get(lane_id)
        if lane is None:
            raise ConfigError(
                f"{p}: detector {det_id!r} is on lane {lane_id!r}, which network "
                f"{model.path.name} does not have (detectors of another network?)"
            )
        if pos < 0:
            pos += lane.length_m
        out.append(Detector(det_id, lane_id, pos, lane_tls.get(lane_id)))
    return tuple(sorted(out, key=lambda d: d.id))
