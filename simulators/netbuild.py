"""Build the demo district reproducibly: network, detectors, demand profile, routes.

The district is a 7 x 7 street grid with uneven block lengths (about 150-260 m).
Two north-south and two east-west streets are *arterials* (2 lanes per
direction, 50 km/h, priority 3, sidewalks with pedestrian crossings); the others
are *collectors* (1 lane, 40 km/h, priority 1). 47 of the 49 junctions are
signalised (the two corner junctions where collectors meet are priority
junctions). Every boundary junction has a stub road to the outside, where
traffic enters and leaves.

Signal programs come from ``netconvert`` with fixed settings: a 90 s cycle,
4 s yellow (never below 3 s) and a 2 s all-red clearance after every yellow.
Induction loops (E1) sit 30 m before the stop line of every incoming vehicle
lane of every traffic light.

Demand is a *profile* (``district.demand.json``): origin and destination
weights over the stub roads, a 3-hour morning-peak shape in 15-minute bins and
the fleet's HBEFA4 emission-class mix. :func:`expand_demand` turns it into a
trips file with a seed of its own (Poisson arrivals), so that the field
emulator's hidden demand differs from the one the twin is given. The committed
``district.rou.xml`` is the expansion with seed 0.

Every output is byte-for-byte reproducible: ``netconvert``'s header comment
(which names the date, the host paths and the options) is removed, and all
numbers are written with fixed precision.
"""

from __future__ import annotations

__all__ = [
    "DISTRICT_DIR",
    "DISTRICT_FILES",
    "DemandProfile",
    "DistrictVehicleType",
    "build_district",
    "check_district",
    "district_paths",
    "expand_demand",
]

import json
import logging
import math
import random
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import configs
from configs.digests import sha256_file
from configs.errors import ConfigError, SimulationError
from simulators.network import write_detectors
from simulators.sumo import tool_binary

logger = logging.getLogger(__name__)

DISTRICT_DIR: Path = Path(configs.__file__).resolve().parent / "district"
"""Where the committed district lives (``configs/district``)."""

NAME = "district"
DISTRICT_FILES: tuple[str, ...] = (
    f"{NAME}.typ.xml",
    f"{NAME}.nod.xml",
    f"{NAME}.edg.xml",
    f"{NAME}.net.xml",
    f"{NAME}.det.add.xml",
    f"{NAME}.demand.json",
    f"{NAME}.rou.xml",
    f"{NAME}.sumocfg",
)
"""The generated files, in build order; ``DIGESTS`` lists their sha256."""

DIGESTS_FILE = "DIGESTS"

GRID_N = 7
# Block lengths (m) between grid lines, west->east and south->north. Uneven on
# purpose so that signal coordination is not trivial.
X_SPACING_M: tuple[float, ...] = (210.0, 180.0, 250.0, 160.0, 230.0, 195.0)
Y_SPACING_M: tuple[float, ...] = (190.0, 240.0, 170.0, 220.0, 150.0, 260.0)
STUB_M = 180.0
ARTERIAL_COLUMNS = frozenset({2, 5})
ARTERIAL_ROWS = frozenset({1, 4})
UNSIGNALISED = frozenset({(0, 0), (6, 6)})

CYCLE_S = 90
YELLOW_S = 4
ALLRED_S = 2
# Vehicles keep green while pedestrians clear the crossing; at least the
# default minimum green (7 s) so the base program itself is safe.
CROSSING_CLEARANCE_S = 8
DETECTOR_SETBACK_M = 30.0
DETECTOR_PERIOD_S = 60


@dataclass(frozen=True)
class DistrictVehicleType:
    """One vehicle type of the demo district's own (hidden) fleet: vType, HBEFA4 class, share.

    This is the city's fleet, which the field emulator drives; the daemon's
    estimate of it is ``simulation.fleet`` (:class:`configs.settings.FleetShare`).
    """

    type_id: str
    emission_class: str
    vclass: str
    length_m: float
    share: float


FLEET: tuple[DistrictVehicleType, ...] = (
    DistrictVehicleType("pc_petrol", "HBEFA4/PC_petrol_Euro-6ab", "passenger", 4.5, 0.40),
    DistrictVehicleType("pc_petrol_old", "HBEFA4/PC_petrol_Euro-4", "passenger", 4.3, 0.08),
    DistrictVehicleType("pc_diesel", "HBEFA4/PC_diesel_Euro-6ab", "passenger", 4.6, 0.20),
    DistrictVehicleType("pc_diesel_old", "HBEFA4/PC_diesel_Euro-5", "passenger", 4.6, 0.07),
    DistrictVehicleType("pc_bev", "HBEFA4/PC_BEV", "passenger", 4.5, 0.10),
    DistrictVehicleType("ldv_diesel", "HBEFA4/LCV_diesel_N1-III_Euro-6ab", "delivery", 6.0, 0.10),
    DistrictVehicleType("hdv_rigid", "HBEFA4/RT_le7.5t_Euro-VI_A-C", "truck", 8.5, 0.05),
)
"""The district fleet (shares sum to 1); NOx depends strongly on it."""

# Morning peak, 06:00-09:00 in 15-minute bins: fraction of the peak rate.
PROFILE_BIN_S = 900
PROFILE_SHAPE: tuple[float, ...] = (
    0.30,
    0.40,
    0.55,
    0.72,
    0.88,
    1.00,
    1.00,
    0.92,
    0.78,
    0.62,
    0.48,
    0.38,
)
PEAK_VEH_PER_H = 3600.0


@dataclass(frozen=True)
class DemandProfile:
    """A time-varying origin-destination demand profile.

    Attributes:
        bin_s: length of one profile bin.
        shape: rate multiplier per bin (fraction of ``peak_veh_per_h``).
        peak_veh_per_h: total district arrival rate at multiplier 1.
        origins: entry edge -> relative weight.
        destinations: exit edge -> relative weight.
        fleet: the vehicle-type mix.
    """

    bin_s: int
    shape: tuple[float, ...]
    peak_veh_per_h: float
    origins: dict[str, float]
    destinations: dict[str, float]
    fleet: tuple[DistrictVehicleType, ...]

    @property
    def duration_s(self) -> int:
        """Length of the profile."""
        return self.bin_s * len(self.shape)

    @property
    def peak_begin_s(self) -> int:
        """Start of the first bin at the peak rate."""
        return self.bin_s * self.shape.index(max(self.shape))

    def to_json(self) -> str:
        """Serialise deterministically (sorted keys, fixed indentation)."""
        data = {
            "schema": "signaltwin.demand-profile/v1",
            "bin_s": self.bin_s,
            "shape": list(self.shape),
            "peak_veh_per_h": self.peak_veh_per_h,
            "origins": self.origins,
            "destinations": self.destinations,
            "fleet": [
                {
                    "type_id": f.type_id,
                    "emission_class": f.emission_class,
                    "vclass": f.vclass,
                    "length_m": f.length_m,
                    "share": f.share,
                }
                for f in self.fleet
            ],
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> DemandProfile:
        """Read a profile written by :meth:`to_json`.

        Raises:
            ConfigError: the file is missing or malformed (names the key).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"demand profile {path} does not exist") from e
        except (OSError, ValueError) as e:
            raise ConfigError(f"demand profile {path} is not valid JSON: {e}") from e
        try:
            fleet = tuple(
                DistrictVehicleType(
                    str(f["type_id"]),
                    str(f["emission_class"]),
                    str(f["vclass"]),
                    float(f["length_m"]),
                    float(f["share"]),
                )
                for f in data["fleet"]
            )
            profile = cls(
                bin_s=int(data["bin_s"]),
                shape=tuple(float(x) for x in data["shape"]),
                peak_veh_per_h=float(data["peak_veh_per_h"]),
                origins={str(k): float(v) for k, v in data["origins"].items()},
                destinations={str(k): float(v) for k, v in data["destinations"].items()},
                fleet=fleet,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"demand profile {path}: missing or malformed key {e}") from e
        if abs(sum(f.share for f in fleet) - 1.0) > 1e-6:
            raise ConfigError(f"demand profile {path}: fleet shares must sum to 1")
        if not profile.origins or not profile.destinations or profile.bin_s <= 0:
            raise ConfigError(f"demand profile {path}: needs origins, destinations, bin_s > 0")
        return profile


def district_paths(directory: Path | None = None) -> dict[str, Path]:
    """Map file kinds (``net``, ``det``, ``rou``, ``demand``, ``cfg``) to paths."""
    d = Path(directory) if directory is not None else DISTRICT_DIR
    return {
        "net": d / f"{NAME}.net.xml",
        "det": d / f"{NAME}.det.add.xml",
        "rou": d / f"{NAME}.rou.xml",
        "demand": d / f"{NAME}.demand.json",
        "cfg": d / f"{NAME}.sumocfg",
    }


def _node_id(i: int, j: int) -> str:
    return f"n{i}{j}"


def _coords() -> tuple[list[float], list[float]]:
    xs = [0.0]
    for s in X_SPACING_M:
        xs.append(xs[-1] + s)
    ys = [0.0]
    for s in Y_SPACING_M:
        ys.append(ys[-1] + s)
    return xs, ys


def _stubs() -> list[tuple[str, int, int, float, float]]:
    """Fringe nodes: (id, grid i, grid j, x, y)."""
    xs, ys = _coords()
    out: list[tuple[str, int, int, float, float]] = []
    last = GRID_N - 1
    for j in range(GRID_N):
        out.append((f"fW{j}", 0, j, xs[0] - STUB_M, ys[j]))
        out.append((f"fE{j}", last, j, xs[last] + STUB_M, ys[j]))
    for i in range(GRID_N):
        out.append((f"fS{i}", i, 0, xs[i], ys[0] - STUB_M))
        out.append((f"fN{i}", i, last, xs[i], ys[last] + STUB_M))
    return out


def _nodes_xml() -> str:
    xs, ys = _coords()
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<nodes>"]
    for j in range(GRID_N):
        for i in range(GRID_N):
            kind = "priority" if (i, j) in UNSIGNALISED else "traffic_light"
            lines.append(
                f'    <node id="{_node_id(i, j)}" x="{xs[i]:.2f}" y="{ys[j]:.2f}" type="{kind}"/>'
            )
    for fid, _, _, x, y in _stubs():
        lines.append(f'    <node id="{fid}" x="{x:.2f}" y="{y:.2f}" type="dead_end"/>')
    lines.append("</nodes>")
    return "\n".join(lines) + "\n"


def _types_xml() -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<types>\n"
        '    <type id="arterial" numLanes="2" speed="13.89" priority="3" '
        'sidewalkWidth="2.00" disallow="tram rail_urban rail rail_electric rail_fast ship"/>\n'
        '    <type id="collector" numLanes="1" speed="11.11" priority="1" '
        'disallow="tram rail_urban rail rail_electric rail_fast ship"/>\n'
        "</types>\n"
    )


def _edges_xml() -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<edges>"]

    def add(a: str, b: str, kind: str) -> None:
        lines.append(f'    <edge id="{a}_{b}" from="{a}" to="{b}" type="{kind}"/>')

    for j in range(GRID_N):
        kind = "arterial" if j in ARTERIAL_ROWS else "collector"
        for i in range(GRID_N - 1):
            a, b = _node_id(i, j), _node_id(i + 1, j)
            add(a, b, kind)
            add(b, a, kind)
    for i in range(GRID_N):
        kind = "arterial" if i in ARTERIAL_COLUMNS else "collector"
        for j in range(GRID_N - 1):
            a, b = _node_id(i, j), _node_id(i, j + 1)
            add(a, b, kind)
            add(b, a, kind)
    for fid, i, j, _, _ in _stubs():
        horizontal = fid[1] in "WE"
        arterial = (j in ARTERIAL_ROWS) if horizontal else (i in ARTERIAL_COLUMNS)
        kind = "arterial" if arterial else "collector"
        add(fid, _node_id(i, j), kind)
        add(_node_id(i, j), fid, kind)
    lines.append("</edges>")
    return "\n".join(lines) + "\n"


_HEADER_COMMENT = re.compile(rb"<!--.*?-->\s*", re.DOTALL)


def strip_generated_header(data: bytes) -> bytes:
    """Remove SUMO's leading ``<!-- generated on ... -->`` comment(s).

    The comment names the build date, the host's paths and the options, which
    makes otherwise identical files differ between builds.
    """
    head, sep, rest = data.partition(b"?>")
    if not sep:
        head, rest = b"", data
    else:
        head += sep
    stripped = rest.lstrip()
    while stripped.startswith(b"<!--"):
        match = _HEADER_COMMENT.match(stripped)
        if match is None:
            break
        stripped = stripped[match.end() :]
    return head + b"\n\n" + stripped if sep else stripped


def _run_netconvert(typ: Path, nod: Path, edg: Path, out: Path) -> None:
    cmd = [
        str(tool_binary("netconvert")),
        "--type-files",
        str(typ),
        "--node-files",
        str(nod),
        "--edge-files",
        str(edg),
        "--output-file",
        str(out),
        "--no-turnarounds",
        "true",
        "--crossings.guess",
        "true",
        "--tls.default-type",
        "static",
        "--tls.cycle.time",
        str(CYCLE_S),
        "--tls.yellow.time",
        str(YELLOW_S),
        "--tls.allred.time",
        str(ALLRED_S),
        "--tls.crossing-clearance.time",
        str(CROSSING_CLEARANCE_S),
        "--tls.layout",
        "opposites",
        "--xml-validation",
        "never",
        "--no-warnings",
        "true",
        "--output.street-names",
        "false",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except OSError as e:
        raise SimulationError(f"could not start netconvert ({cmd[0]}): {e}") from e
    if proc.returncode != 0:
        raise SimulationError(
            f"netconvert failed building {out} (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    out.write_bytes(strip_generated_header(out.read_bytes()))


def default_profile(stub_edges: Sequence[tuple[str, str, bool]]) -> DemandProfile:
    """The district's demand profile.

    Args:
        stub_edges: ``(in_edge, out_edge, arterial)`` per stub road.
    """
    origins: dict[str, float] = {}
    destinations: dict[str, float] = {}
    for in_edge, out_edge, arterial in stub_edges:
        weight = 3.0 if arterial else 1.0
        origins[in_edge] = weight
        destinations[out_edge] = weight
    return DemandProfile(
        bin_s=PROFILE_BIN_S,
        shape=PROFILE_SHAPE,
        peak_veh_per_h=PEAK_VEH_PER_H,
        origins=dict(sorted(origins.items())),
        destinations=dict(sorted(destinations.items())),
        fleet=FLEET,
    )


def _stub_edges() -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for fid, i, j, _, _ in _stubs():
        horizontal = fid[1] in "WE"
        arterial = (j in ARTERIAL_ROWS) if horizontal else (i in ARTERIAL_COLUMNS)
        node = _node_id(i, j)
        out.append((f"{fid}_{node}", f"{node}_{fid}", arterial))
    return out


def fleet_xml(fleet: Sequence[DistrictVehicleType], dist_id: str = "fleet") -> str:
    """Return a ``<vTypeDistribution>`` element for the fleet mix."""
    lines = [f'    <vTypeDistribution id="{dist_id}">']
    for f in fleet:
        lines.append(
            f"        <vType id={quoteattr(f.type_id)} vClass={quoteattr(f.vclass)} "
            f'emissionClass={quoteattr(f.emission_class)} length="{f.length_m:.2f}" '
            f'speedDev="0.1" probability="{f.share:.4f}"/>'
        )
    lines.append("    </vTypeDistribution>")
    return "\n".join(lines)


def expand_demand(
    profile: DemandProfile,
    seed: int,
    out_path: Path,
    *,
    scale: float = 1.0,
    begin_s: int = 0,
    end_s: int | None = None,
    repeat: int = 1,
) -> Path:
    """Expand a demand profile into a SUMO trips file with Poisson arrivals.

    Each profile bin draws its vehicle count from a Poisson distribution with
    the bin's mean, spreads departures uniformly over the bin, and draws the
    origin and destination by weight (never leaving by the road it came in on).
    Trips are routed by SUMO at insertion (fastest path).

    Args:
        profile: the demand profile.
        seed: random seed; the same seed gives the same file.
        out_path: where to write the ``.rou.xml``.
        scale: multiplier on every rate (``1.0`` = the profile as given).
        begin_s: first departure time to keep (profile time).
        end_s: end of the expansion (default: end of the last repetition).
        repeat: how many times the profile runs back to back (a long-running
            field gets a peak every ``profile.duration_s``).

    Returns:
        ``out_path``.
    """
    if scale < 0 or not math.isfinite(scale):
        raise ConfigError(f"demand scale must be a non-negative number, got {scale}")
    if repeat < 1:
        raise ConfigError(f"demand repeat must be at least 1, got {repeat}")
    rng = random.Random(seed)
    total_s = profile.duration_s * repeat
    end = total_s if end_s is None else min(end_s, total_s)
    origins = list(profile.origins)
    o_weights = [profile.origins[o] for o in origins]
    dests = list(profile.destinations)
    d_weights = [profile.destinations[d] for d in dests]
    trips: list[tuple[float, str, str]] = []
    bins = [
        (rep * profile.duration_s + k * profile.bin_s, factor)
        for rep in range(repeat)
        for k, factor in enumerate(profile.shape)
    ]
    for b0, factor in bins:
        mean = profile.peak_veh_per_h * factor * scale * profile.bin_s / 3600.0
        count = _poisson(rng, mean)
        for _ in range(count):
            t = b0 + rng.random() * profile.bin_s
            o = rng.choices(origins, o_weights)[0]
            for _attempt in range(20):
                d = rng.choices(dests, d_weights)[0]
                if _stub_of(d) != _stub_of(o):
                    break
            if begin_s <= t < end:
                trips.append((t, o, d))
    trips.sort()
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- signaltwin demand: expanded from a profile, seed "
        + str(int(seed))
        + f", scale {scale:.4f} -->",
        "<routes>",
        fleet_xml(profile.fleet),
    ]
    for n, (t, o, d) in enumerate(trips):
        lines.append(
            f'    <trip id="t{n}" type="fleet" depart="{t:.2f}" from="{o}" to="{d}" '
            'departLane="best" departSpeed="max"/>'
        )
    lines.append("</routes>")
    out = Path(out_path)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _stub_of(edge_id: str) -> str:
    # "fW2_n02" and "n02_fW2" belong to the same stub "fW2".
    return "_".join(sorted(edge_id.split("_")))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    k, p = 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _sumocfg() -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<configuration>\n"
        "    <input>\n"
        f'        <net-file value="{NAME}.net.xml"/>\n'
        f'        <route-files value="{NAME}.rou.xml"/>\n'
        f'        <additional-files value="{NAME}.det.add.xml"/>\n'
        "    </input>\n"
        "    <processing>\n"
        '        <time-to-teleport value="-1"/>\n'
        "    </processing>\n"
        "</configuration>\n"
    )


def build_district(out_dir: Path | None = None) -> dict[str, str]:
    """Build every district file into ``out_dir`` and write its ``DIGESTS``.

    Args:
        out_dir: target directory (default: ``configs/district``).

    Returns:
        File name -> sha256 hex, as written to ``DIGESTS``.

    Raises:
        SimulationError: ``netconvert`` failed.
    """
    out = Path(out_dir) if out_dir is not None else DISTRICT_DIR
    out.mkdir(parents=True, exist_ok=True)
    typ, nod, edg = (out / f"{NAME}.typ.xml", out / f"{NAME}.nod.xml", out / f"{NAME}.edg.xml")
    typ.write_text(_types_xml(), encoding="utf-8")
    nod.write_text(_nodes_xml(), encoding="utf-8")
    edg.write_text(_edges_xml(), encoding="utf-8")
    paths = district_paths(out)
    # netconvert writes its input paths into the file; run it in a scratch dir
    # with relative names, then strip the header, so the output is path-free.
    with tempfile.TemporaryDirectory(prefix="signaltwin-net-") as tmp:
        tmp_dir = Path(tmp)
        for p in (typ, nod, edg):
            (tmp_dir / p.name).write_bytes(p.read_bytes())
        tmp_net = tmp_dir / paths["net"].name
        _run_netconvert(tmp_dir / typ.name, tmp_dir / nod.name, tmp_dir / edg.name, tmp_net)
        paths["net"].write_bytes(tmp_net.read_bytes())
    write_detectors(
        paths["net"],
        paths["det"],
        setback_m=DETECTOR_SETBACK_M,
        period_s=DETECTOR_PERIOD_S,
    )
    profile = default_profile(_stub_edges())
    paths["demand"].write_text(profile.to_json(), encoding="utf-8")
    expand_demand(profile, 0, paths["rou"])
    paths["cfg"].write_text(_sumocfg(), encoding="utf-8")
    digests = {name: sha256_file(out / name) for name in DISTRICT_FILES}
    (out / DIGESTS_FILE).write_text(
        "".join(f"{h}  {name}\n" for name, h in digests.items()), encoding="utf-8"
    )
    logger.info("built district in %s (%d files)", out, len(digests))
    return digests


def check_district(directory: Path | None = None) -> list[str]:
    """Verify the files in ``directory`` against its ``DIGESTS``.

    Returns:
        One line per problem (missing file, digest mismatch); empty when all match.

    Raises:
        ConfigError: ``DIGESTS`` is missing or malformed.
    """
    d = Path(directory) if directory is not None else DISTRICT_DIR
    digests_path = d / DIGESTS_FILE
    try:
        text = digests_path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(
            f"{digests_path} is missing; run 'signaltwin network build --out {d}'"
        ) from e
    problems: list[str] = []
    listed: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise ConfigError(f"{digests_path}:{lineno}: expected '<sha256>  <file>'")
        expected, name = parts
        listed.add(name)
        path = d / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{path}: sha256 differs from {DIGESTS_FILE}")
    for name in DISTRICT_FILES:
        if name not in listed:
            problems.append(f"{d / name}: not listed in {DIGESTS_FILE}")
    return problems
