"""Small SUMO scenarios for the twin and demand tests (built with the wheel's tools)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulators.sumo import sumo_home, tool_binary


@dataclass(frozen=True)
class GridScenario:
    net: Path
    detectors: Path
    routes: Path
    tls_ids: tuple[str, ...]


def build_grid(
    directory: Path,
    size: int = 3,
    length_m: float = 200.0,
    lanes: int = 1,
    period_s: float = 2.0,
    end_s: float = 1200.0,
    seed: int = 1,
    arterial: bool = False,
) -> GridScenario:
    """A size x size grid of signalised junctions with E1 loops on every incoming lane.

    With ``arterial`` the demand is mostly a west-east stream along the middle row
    on top of light random background traffic.
    """
    directory.mkdir(parents=True, exist_ok=True)
    letters = "ABCDEFGHIJ"[:size]
    tls = [f"{c}{i}" for c in letters for i in range(size)]
    net = directory / "grid.net.xml"
    subprocess.run(
        [
            str(tool_binary("netgenerate")),
            "--grid",
            "--grid.number",
            str(size),
            "--grid.length",
            str(length_m),
            "--grid.attach-length",
            "150",
            "--default.lanenumber",
            str(lanes),
            "--tls.set",
            ",".join(tls),
            "--seed",
            str(seed),
            "-o",
            str(net),
        ],
        check=True,
        capture_output=True,
    )
    detectors = directory / "detectors.add.xml"
    root = ET.parse(net).getroot()
    controlled = set(tls)
    lines = ["<additional>"]
    for edge in root.iter("edge"):
        if edge.get("function") == "internal" or edge.get("to") not in controlled:
            continue
        for lane in edge.iter("lane"):
            pos = max(0.0, float(lane.get("length", "0")) - 15.0)
            lid = lane.get("id")
            lines.append(
                f'  <inductionLoop id="e1_{lid}" lane="{lid}" pos="{pos:.1f}" '
                f'period="60" file="NUL"/>'
            )
    lines.append("</additional>")
    detectors.write_text("\n".join(lines) + "\n")
    routes = directory / "routes.rou.xml"
    trips = directory / "trips.xml"
    subprocess.run(
        [
            sys.executable,
            str(sumo_home() / "tools" / "randomTrips.py"),
            "-n",
            str(net),
            "-o",
            str(trips),
            "-r",
            str(routes),
            "-e",
            str(end_s),
            "-p",
            str(period_s * (3 if arterial else 1)),
            "--fringe-factor",
            "50",
            "--seed",
            str(seed),
            "--validate",
        ],
        check=True,
        capture_output=True,
    )
    if arterial:
        mid = size // 2
        west, east = "left", "right"
        edges = [f"{west}{mid}{letters[0]}{mid}"]
        edges += [f"{letters[i]}{mid}{letters[i + 1]}{mid}" for i in range(size - 1)]
        edges.append(f"{letters[-1]}{mid}{east}{mid}")
        text = routes.read_text()
        flow = (
            f'    <route id="arterial" edges="{" ".join(edges)}"/>\n'
            f'    <flow id="arterial_flow" route="arterial" begin="0" end="{end_s}" '
            f'vehsPerHour="700" departLane="best" departSpeed="max"/>\n'
        )
        # insert right after the <routes ...> opening tag
        idx = text.index(">", text.index("<routes")) + 1
        text = text[:idx] + "\n" + flow + text[idx:]
        routes.write_text(text)
    return GridScenario(net=net, detectors=detectors, routes=routes, tls_ids=tuple(tls))


def training_config(grid: GridScenario) -> Any:
    """The small fixed-time training set-up the training tests share (an ``rl.env.EnvConfig``)."""
    from rl.env import EnvConfig  # torch and gymnasium: only for the training tests

    return EnvConfig(
        net_file=grid.net,
        detectors_file=grid.detectors,
        route_files=(grid.routes,),
        interval_s=120.0,
        episode_steps=2,
        warmup_s=120.0,
        begin_range_s=(0.0, 300.0),
        mode="fixed",
    )


@dataclass(frozen=True)
class ForeignScenario:
    net: Path
    routes: Path


def build_foreign(directory: Path, seed: int = 4, end_s: float = 1000.0) -> ForeignScenario:
    """A random (non-grid) network with its own actuated lights and its own routes.

    Nothing in it comes from the project's network builder: netgenerate's random
    network with guessed actuated traffic lights, two-lane roads, and
    randomTrips' routes with SUMO's default vehicle type.
    """
    directory.mkdir(parents=True, exist_ok=True)
    net = directory / "rand.net.xml"
    subprocess.run(
        [
            str(tool_binary("netgenerate")),
            "--rand",
            "--rand.iterations",
            "60",
            "--seed",
            str(seed),
            "--tls.guess",
            "--tls.guess.threshold",
            "30",
            "--tls.default-type",
            "actuated",
            "--default.lanenumber",
            "2",
            "-o",
            str(net),
        ],
        check=True,
        capture_output=True,
    )
    routes = directory / "rand.rou.xml"
    subprocess.run(
        [
            sys.executable,
            str(sumo_home() / "tools" / "randomTrips.py"),
            "-n",
            str(net),
            "-o",
            str(directory / "trips.xml"),
            "-r",
            str(routes),
            "-e",
            str(end_s),
            "-p",
            "1.2",
            "--seed",
            str(seed),
            "--validate",
        ],
        check=True,
        capture_output=True,
    )
    return ForeignScenario(net=net, routes=routes)
