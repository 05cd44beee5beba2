"""Benchmark the what-if video: ours (render on the device + encode) vs PyAV alone.

The scene is a synthetic 10 x 7 grid with the full picture: three panels,
about 740 vehicles per frame on each side (three per edge, moving), a signal
head per approach with changing states, the strip charts and the paired
estimate.

Prints one JSON line per figure:
- render_4k_scene_build_s: rasterising the scene once (reused across cycles).
- pyav_encode_premade_4k_block_s: PyAV/libx264 encoding 30 pre-made 3840x2160
  YUV 4:2:0 frames (the encoder's own limit): the frames of the same what-if
  video, rendered and decoded beforehand, so both sides encode the same picture.
- render_4k_block_latency_s: 30 frames of 3840x2160 rendered and encoded into
  an MP4 with sidecar (scene reused); ratio = ours / PyAV alone.
- pyav_encode_premade_1080p_fps and render_1080p_fps: the same at 1920x1080
  over --frames-1080p frames; ratio = ours / PyAV alone (1.0 = rendering free).

Both sides encode with the preset and crf of the shipped settings
(configs/production.example.toml [video], which the daemon uses); --preset and
--crf measure another choice.

Usage: .venv/bin/python bench/render.py [--device auto|cpu|cuda]
       [--preset PRESET] [--crf N] [--frames-1080p 90]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import get_args

import av
import numpy as np
import torch

from configs.settings import X264Preset
from configs.settings_file import load_settings
from edge_accel import (
    Attribution,
    PairedEstimate,
    SceneGeometry,
    SignalSamples,
    VehicleSamples,
    WhatIfFrames,
    WhatIfScene,
    describe_device,
    grid_geometry,
    render_whatif,
    select_device,
)

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTION = Attribution("a" * 64, "b" * 64, "c" * 64, "d" * 64, "sumo 1.28.0", 1)
ESTIMATE = PairedEstimate(-0.2, (-0.26, -0.14), 0.002, (-0.003, 0.007), (1, 2, 3), 0.95,
                          verdict="Gate passed on the upper 95 % bounds", passed=True)  # fmt: skip


def emit(
    figure: str, value: float, unit: str, ratio: float | None, against: str | None, **extra: object
) -> None:
    line = {
        "figure": figure,
        "value": round(value, 4),
        "unit": unit,
        "ratio": None if ratio is None else round(ratio, 3),
        "against": against,
        **extra,
    }
    print(json.dumps(line), flush=True)


def _vehicles(geometry: SceneGeometry, t: np.ndarray, per_edge: int) -> VehicleSamples:
    """``per_edge`` vehicles on every edge, moving along it at their own speed."""
    rng = np.random.default_rng(1)
    starts = np.array([geometry.polylines[e][0] for e in geometry.edge_ids])
    ends = np.array([geometry.polylines[e][-1] for e in geometry.edge_ids])
    edge = np.repeat(np.arange(len(starts)), per_edge)
    phase = rng.uniform(0, 1, edge.size)
    speed = rng.uniform(0, 14, edge.size)
    d = ends[edge] - starts[edge]
    frac = (phase[None, :] + speed[None, :] * (t[:, None] - t[0]) / 150.0) % 1.0  # [T, V]
    pos = starts[edge][None] + d[None] * frac[..., None]
    angle = np.degrees(np.arctan2(d[:, 0], d[:, 1]))
    n = edge.size
    return VehicleSamples.from_arrays(
        np.arange(len(t) + 1) * n, pos[..., 0].ravel(), pos[..., 1].ravel(),
        np.tile(angle, len(t)), np.tile(speed, len(t)), samples=len(t),
    )  # fmt: skip


def _signals(geometry: SceneGeometry, t: np.ndarray) -> SignalSamples:
    ids = sorted({tls for tls, _, _ in geometry.signal_heads})
    width = {tls: 0 for tls in ids}
    for tls, _, links in geometry.signal_heads:
        width[tls] = max(width[tls], max(links) + 1)
    offsets = np.concatenate(([0], np.cumsum([width[i] for i in ids])))
    cycle = ["GrGr", "yryr", "rGrG", "ryry"]
    rows = []
    for k in range(len(t)):
        state = cycle[(k // 4) % 4]
        rows.append("".join((state * 2)[: width[i]] for i in ids).encode())
    states = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(t), -1)
    return SignalSamples.from_arrays(ids, offsets, states, samples=len(t))


def sides(geometry: SceneGeometry) -> tuple[WhatIfFrames, WhatIfFrames]:
    edge_ids = geometry.edge_ids
    rng = np.random.default_rng(0)
    samples = 61
    t = np.linspace(0.0, 900.0, samples)
    occ = rng.uniform(0.0, 1.0, size=(samples, len(edge_ids))).astype(np.float32)
    queue = (occ * 12).astype(np.float32)
    wait = np.linspace(5, 40, samples)
    nox = np.cumsum(np.full(samples, 5000.0))
    vehicles, signals = _vehicles(geometry, t, 3), _signals(geometry, t)
    return (
        WhatIfFrames.from_arrays("CURRENT PLAN", edge_ids, t, occ, queue, wait, nox,
                                 vehicles=vehicles, signals=signals),
        WhatIfFrames.from_arrays("CANDIDATE", edge_ids, t, occ * 0.7, queue * 0.5, wait * 0.8,
                                 nox, vehicles=vehicles, signals=signals),
    )  # fmt: skip


def premade(video: Path) -> list[np.ndarray]:
    """The frames of one of our videos, decoded: the same content, for PyAV alone to encode."""
    with av.open(str(video)) as container:
        return [
            np.ascontiguousarray(f.to_ndarray(format="yuv420p")) for f in container.decode(video=0)
        ]


def pyav_encode(
    frames: list[np.ndarray], width: int, height: int, preset: str, crf: int, path: Path
) -> float:
    started = time.perf_counter()
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "crf": str(crf)}
        stream.codec_context.thread_count = 0
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--preset", choices=get_args(X264Preset), help="default: the shipped settings' preset"
    )
    parser.add_argument("--crf", type=int, help="default: the shipped settings' crf")
    parser.add_argument("--frames-1080p", type=int, default=90)
    parser.add_argument("--grid", type=int, default=10, help="grid columns (rows = 3/4 of it)")
    args = parser.parse_args()
    shipped = load_settings(ROOT / "configs" / "production.example.toml").video
    preset = args.preset or shipped.preset
    crf = shipped.crf if args.crf is None else args.crf
    device = select_device(args.device)
    where = describe_device(device)
    geometry = grid_geometry(args.grid, max(2, args.grid * 3 // 4), 150.0)
    current, candidate = sides(geometry)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # Warm-up: first use of the encoder and the device.
        small = WhatIfScene(geometry, 640, 360, device)
        render_whatif(geometry, current, candidate, ATTRIBUTION, out / "w.mp4", 640, 360, 30,
                      device, duration_s=0.2, scene=small, estimate=ESTIMATE)  # fmt: skip

        started = time.perf_counter()
        scene4k = WhatIfScene(geometry, 3840, 2160, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        emit("render_4k_scene_build_s", time.perf_counter() - started, "s", None, None,
             device=where, edges=scene4k.n_edges)  # fmt: skip
        render_whatif(geometry, current, candidate, ATTRIBUTION, out / "ref4k.mp4", 3840, 2160,
                      30, device, duration_s=1.0, crf=12, scene=scene4k,
                      estimate=ESTIMATE)  # fmt: skip
        frames = premade(out / "ref4k.mp4")
        raw_4k = pyav_encode(frames, 3840, 2160, preset, crf, out / "raw4k.mp4")
        emit("pyav_encode_premade_4k_block_s", raw_4k, "s", None, None, preset=preset, crf=crf)
        del frames
        started = time.perf_counter()
        render_whatif(geometry, current, candidate, ATTRIBUTION, out / "ours4k.mp4", 3840, 2160,
                      30, device, duration_s=1.0, preset=preset, crf=crf, scene=scene4k,
                      estimate=ESTIMATE)  # fmt: skip
        ours_4k = time.perf_counter() - started
        emit("render_4k_block_latency_s", ours_4k, "s", ours_4k / raw_4k,
             "pyav_encode_premade_4k_block_s", preset=preset, crf=crf, device=where,
             target_s=0.8)  # fmt: skip
        del scene4k

        n = args.frames_1080p
        scene_hd = WhatIfScene(geometry, 1920, 1080, device)
        render_whatif(geometry, current, candidate, ATTRIBUTION, out / "refhd.mp4", 1920, 1080,
                      30, device, duration_s=n / 30, crf=12, scene=scene_hd,
                      estimate=ESTIMATE)  # fmt: skip
        frames = premade(out / "refhd.mp4")
        raw_hd = pyav_encode(frames, 1920, 1080, preset, crf, out / "rawhd.mp4")
        emit("pyav_encode_premade_1080p_fps", n / raw_hd, "frames/s", None, None,
             preset=preset, crf=crf)  # fmt: skip
        del frames
        started = time.perf_counter()
        render_whatif(geometry, current, candidate, ATTRIBUTION, out / "ourshd.mp4", 1920, 1080,
                      30, device, duration_s=n / 30, preset=preset, crf=crf,
                      scene=scene_hd, estimate=ESTIMATE)  # fmt: skip
        ours_hd = time.perf_counter() - started
        emit("render_1080p_fps", n / ours_hd, "frames/s", (n / ours_hd) / (n / raw_hd),
             "pyav_encode_premade_1080p_fps", preset=preset, crf=crf, device=where)  # fmt: skip


if __name__ == "__main__":
    main()
