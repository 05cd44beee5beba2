"""What-if on Ray against the local backend, side by side in one run.

Starts a real two-node Ray cluster on 127.0.0.1 (``ray start --head`` plus a
second ``ray start --address``, one CPU each: the same two cores the local
backend gets), then runs the daemon's own what-if (``configs/demo.toml``'s
settings through ``request_from_settings``: its horizon, warm-up, seeds,
candidates and video recording) on the demo district at its peak demand, with
the local backend and with the Ray backend, the same number of workers each,
alternating cycle by cycle. Prints one JSON line per figure:

* ``whatif_ray_throughput``: (plan, seed) runs per second on the cluster;
  ``ratio`` against the local backend in the same run (target >= 0.8; the point
  is overhead, not speed-up: the cores are the same).
* ``whatif_ray_identical``: 1 when every number of every cycle (outcomes,
  intervals, per-intersection figures, video recordings) equals the local
  backend's, else 0.
* ``whatif_ray_cycle_overhead_s``: extra wall time per what-if over local.
* ``whatif_run_s_p50``: one run's wall time (median, local backend), the base of
  the projection below.
* ``whatif_projection_500x16x5_elimination_s``: the same with the production
  example's sequential elimination (two rounds, each waiting for its slowest run).
* ``whatif_projection_500x16x5_s`` (one line per core count): projected what-if
  wall time for 500 intersections x 16 candidates x 5 seeds on N cluster cores
  at the production example's horizon and warm-up, from the measured per-run
  time scaled by network size (SUMO's step cost grows with the vehicles in the
  network, i.e. with its size at the same density) and by simulated time, plus
  the measured per-what-if overhead; ``ratio`` against the 240 s cycle.

Run: ``.venv/bin/python -m bench.scale [--cycles 3]`` (about 3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from bench.whatif import DISTRICT, emit, peak_routes
from configs.safety import Proposal, project
from configs.settings_file import load_settings
from configs.timing import IntersectionTiming
from simulators.network import load_network
from simulators.twin import (
    RECORDING_ARRAYS,
    LibsumoWhatIfEngine,
    RayWhatIfEngine,
    WhatIfRequest,
    WhatIfResult,
    request_from_settings,
)
from tests.support.ray_cluster import RayCluster

ROOT = Path(__file__).resolve().parent.parent
CYCLE_S = 240.0
TARGET_LIGHTS, TARGET_CANDIDATES, TARGET_SEEDS = 500, 16, 5


def daemon_request(routes: Path) -> WhatIfRequest:
    """The request a demo cycle sends: the demo settings, base plans and green variants."""
    settings = load_settings(ROOT / "configs" / "demo.toml")
    model = load_network(DISTRICT / "district.net.xml", DISTRICT / "district.det.add.xml")
    bases = model.base_programs()
    current = {t: IntersectionTiming.from_base(b) for t, b in bases.items()}
    factors = [0.8, 1.15, 1.3][: settings.simulation.candidates]
    candidates = {
        f"greens-x{f}": {
            t: project(
                t,
                Proposal([b.phases[i].duration_s * f for i in b.green_indices]),
                b,
                settings.safety.limits_for(t),
            )
            for t, b in bases.items()
        }
        for f in factors
    }
    return request_from_settings(
        settings,
        network=DISTRICT / "district.net.xml",
        demand=routes,
        current=current,
        candidates=candidates,
        record_video=True,
    )


def same(a: WhatIfResult, b: WhatIfResult) -> bool:
    if a.to_dict() != b.to_dict() or set(a.recordings) != set(b.recordings):
        return False
    for name, rec in a.recordings.items():
        other = b.recordings[name]
        if (rec.edge_ids, rec.signal_ids) != (other.edge_ids, other.signal_ids):
            return False
        # every array: edges, vehicles (positions, headings, speeds, waits, counts), signals
        for field in RECORDING_ARRAYS:
            if not np.array_equal(getattr(rec, field), getattr(other, field)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3, help="timed what-ifs per backend")
    args = parser.parse_args()
    settings = load_settings(ROOT / "configs" / "demo.toml")
    workers = settings.simulation.workers
    with tempfile.TemporaryDirectory() as tmp:
        request = daemon_request(peak_routes(Path(tmp) / "peak.rou.xml"))
        runs = len(request.plan_names()) * len(request.seeds)
        print(f"# {runs} runs per what-if, {workers} workers, {args.cycles} cycles", flush=True)
        local_s: list[float] = []
        ray_s: list[float] = []
        identical = True
        run_s: list[float] = []
        with RayCluster(head_cpus=1, node_cpus=1) as cluster:
            compute = settings.compute.model_copy(
                update={"backend": "ray", "address": cluster.address}
            )
            with (
                LibsumoWhatIfEngine(workers, timeout_s=compute.timeout_s) as local,
                RayWhatIfEngine(compute, workers) as ray,
            ):
                ray.connect()
                reference = local.evaluate(request)  # pool start-up, not timed
                identical &= same(ray.evaluate(request), reference)  # files shipped once
                for _ in range(args.cycles):
                    started = time.perf_counter()
                    got = local.evaluate(request)
                    local_s.append(time.perf_counter() - started)
                    identical &= same(got, reference)
                    started = time.perf_counter()
                    got = ray.evaluate(request)
                    ray_s.append(time.perf_counter() - started)
                    identical &= same(got, reference)
                # per-run wall time, one run at a time (no contention with the other worker)
                with LibsumoWhatIfEngine(workers=0) as serial:
                    started = time.perf_counter()
                    serial.evaluate(request)
                    run_s.append((time.perf_counter() - started) / runs)
        local_tp = runs / statistics.median(local_s)
        ray_tp = runs / statistics.median(ray_s)
        emit(
            "whatif_ray_throughput",
            ray_tp,
            "runs/s",
            round(ray_tp / local_tp, 3),
            f"local backend, {workers} worker processes, same run ({local_tp:.3f} runs/s)",
        )
        emit(
            "whatif_ray_identical",
            1.0 if identical else 0.0,
            "bool",
            None,
            f"local backend, {args.cycles + 1} what-ifs of {runs} runs, every number",
        )
        overhead = statistics.median(ray_s) - statistics.median(local_s)
        emit(
            "whatif_ray_cycle_overhead_s",
            overhead,
            "s",
            round(statistics.median(ray_s) / statistics.median(local_s), 3),
            f"local backend what-if {statistics.median(local_s):.2f} s (median)",
        )
        per_run = statistics.median(run_s)
        emit("whatif_run_s_p50", per_run, "s", None, "one demo-size run, alone on a core")
        lights = len(request.current)
        target_runs = (TARGET_CANDIDATES + 1) * TARGET_SEEDS
        production = tomllib.loads((ROOT / "configs" / "production.example.toml").read_text())
        simulated = production["simulation"]["horizon_s"] + production["simulation"]["warmup_s"]
        demo_simulated = request.horizon_s + request.warmup_s
        run_500 = per_run * (TARGET_LIGHTS / lights) * (simulated / demo_simulated)
        for cores in (16, 32, 64, 128, 256):
            wall = math.ceil(target_runs / cores) * run_500 + max(0.0, overhead)
            emit(
                "whatif_projection_500x16x5_s",
                wall,
                "s",
                round(wall / CYCLE_S, 3),
                f"{cores} cluster cores; {target_runs} runs of {run_500:.1f} s "
                f"({per_run:.2f} s x {TARGET_LIGHTS}/{lights} lights x {simulated}/"
                f"{demo_simulated} simulated s); ratio: share of a {CYCLE_S:.0f} s cycle",
            )
        # with the production example's sequential elimination: two rounds, each a barrier
        k = int(production["simulation"].get("elimination_seeds", 0))
        f = int(production["simulation"].get("finalists", 1))
        if 0 < k < TARGET_SEEDS and f < TARGET_CANDIDATES:
            first, second = (TARGET_CANDIDATES + 1) * k, (f + 1) * (TARGET_SEEDS - k)
            for cores in (16, 32, 64, 128, 256):
                rounds = math.ceil(first / cores) + math.ceil(second / cores)
                wall = rounds * run_500 + max(0.0, overhead)
                emit(
                    "whatif_projection_500x16x5_elimination_s",
                    wall,
                    "s",
                    round(wall / CYCLE_S, 3),
                    f"{cores} cluster cores; sequential elimination after {k} seeds, {f} "
                    f"finalist(s): {first} + {second} runs of {run_500:.1f} s in two rounds "
                    f"(without: {target_runs} runs); ratio: share of a {CYCLE_S:.0f} s cycle",
                )


if __name__ == "__main__":
    main()
