"""Network loading and field-emulator stepping: ours vs the raw SUMO libraries, same inputs.

Figures (one JSON line each; ratio is ours/raw):

* ``network_load`` – :func:`simulators.network.load_network` (uncached) vs
  ``sumolib.net.readNet(withPrograms=True)`` on the demo district.
* ``field_step`` – one district step at the morning peak with the field's
  detector and approach collection vs a bare ``libsumo.simulationStep`` loop on
  the same SUMO command line (same seed, same demand).
* ``field_realtime_error`` – relative error of field time against
  ``speed`` x wall time over a short real-time run (ratio null).

    .venv/bin/python bench/field.py [--steps 600] [--realtime-s 20] [--speed 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import libsumo
import sumolib

from simulators import network as network_module
from simulators.field import FieldConfig, FieldEmulator
from simulators.netbuild import DemandProfile, district_paths


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 4),
                "unit": unit,
                "ratio": ratio,
                "against": against,
            }
        ),
        flush=True,
    )


def bench_load(rounds: int) -> None:
    paths = district_paths()
    ours, raw = [], []
    for _ in range(rounds):
        network_module._CACHE.clear()
        t0 = time.perf_counter()
        network_module.load_network(paths["net"], paths["det"])
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sumolib.net.readNet(str(paths["net"]), withPrograms=True)
        raw.append(time.perf_counter() - t0)
    emit("network_load", min(ours), "s", round(min(ours) / min(raw), 3), "sumolib.net.readNet")


def bench_step(steps: int, begin_s: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-field-"))
    config = FieldConfig.for_district(seed=4, begin_s=begin_s, work_dir=work)
    field = FieldEmulator(config).start()
    command = field._command()  # the identical SUMO command line for the raw loop
    t0 = time.perf_counter()
    field.step_until(begin_s + steps)
    ours = (time.perf_counter() - t0) / steps
    field.close()
    libsumo.start(command)
    t0 = time.perf_counter()
    for _ in range(steps):
        libsumo.simulationStep()
    raw = (time.perf_counter() - t0) / steps
    libsumo.close()
    shutil.rmtree(work, ignore_errors=True)
    emit("field_step", ours * 1000, "ms", round(ours / raw, 3), "libsumo.simulationStep loop")


def bench_realtime(wall_s: float, speed: float, begin_s: int) -> None:
    config = FieldConfig.for_district(seed=5, begin_s=begin_s)
    with FieldEmulator(config) as field:
        stop = threading.Event()
        timer = threading.Timer(wall_s, stop.set)
        f0, w0 = field.field_time_s, time.monotonic()
        timer.start()
        field.run_realtime(speed, stop)
        wall = time.monotonic() - w0
        elapsed = field.field_time_s - f0
    emit(
        "field_realtime_error",
        abs(elapsed - speed * wall) / (speed * wall),
        "fraction",
        None,
        f"{speed:g}x wall clock over {wall:.0f} s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--realtime-s", type=float, default=20.0)
    parser.add_argument("--speed", type=float, default=10.0)
    args = parser.parse_args()
    peak = DemandProfile.load(district_paths()["demand"]).peak_begin_s
    bench_load(args.rounds)
    bench_step(args.steps, peak)
    bench_realtime(args.realtime_s, args.speed, peak)


if __name__ == "__main__":
    main()
