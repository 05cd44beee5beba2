"""Render a what-if video (current plan | candidate | difference) on the device and encode it.

The scene (:class:`~edge_accel.whatif_scene.WhatIfScene`) is laid out and
rasterised once per network; each video then draws its static picture once
(titles, legends with the scales ranged to this recording, the strip charts,
the paired estimate; :mod:`edge_accel.picture`), converts it to YUV once, and
draws every batch of frames on the device (:meth:`WhatIfScene.draw`). A batch
crosses to the host once (through pinned memory on CUDA) and is handed to
libx264 while the next batch is drawn.

Time: the video spans the recorded simulated window; frame ``k`` of ``N``
shows simulated time ``t0 + (t1 - t0) * k / (N - 1)``. Edge series and the
running means are linearly interpolated between recorded samples (held beyond
a side's last sample); vehicles and signal states are shown as recorded at the
sample nearest the frame's time (the twin records one sample per frame, so
that is the frame's own sample).

Scales: roads by occupancy from 0 to the recording's 99th percentile (rounded
up to 1, 2, 2.5 or 5 x 10^k); vehicles by speed from 0 to the recording's 99th
percentile (rounded up to 10 km/h); the difference map by the change of each
edge's mean queue so far, candidate minus current, symmetric around 0 up to
the 98th percentile of its magnitude (at least 0.5 vehicles). The legend
states each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from configs.digests import sha256_file
from configs.errors import ConfigError
from edge_accel.chart import ChartSeries, StripChart, nice_ceiling
from edge_accel.device import select_device
from edge_accel.encode import Attribution, H264Writer, VideoArtifact, write_sidecar
from edge_accel.layout import Canvas
from edge_accel.marks import signal_class_table
from edge_accel.picture import PictureText, draw_picture, signed_pct
from edge_accel.scene import PairedEstimate, SceneGeometry, WhatIfFrames
from edge_accel.whatif_scene import (
    DIFF,
    ROAD,
    FrameBatch,
    TextField,
    VehicleBatch,
    WhatIfScene,
    lut_rows,
)

__all__ = ["FrameTimeline", "WhatIfScene", "render_whatif"]

logger = logging.getLogger(__name__)

SIDES = ("current", "candidate")


@dataclass(frozen=True)
class FrameTimeline:
    """Which simulated time each video frame shows, and how to sample each side.

    Attributes:
        sim_time_s: ``[N]`` simulated time per frame.
        lo, hi, weight: Per side (``"current"``, ``"candidate"``), ``[N]``
            sample indices and the interpolation weight of ``hi``.
    """

    sim_time_s: npt.NDArray[np.float64]
    lo: dict[str, npt.NDArray[np.int64]]
    hi: dict[str, npt.NDArray[np.int64]]
    weight: dict[str, npt.NDArray[np.float32]]

    @classmethod
    def build(cls, n_frames: int, sides: dict[str, npt.NDArray[np.float32]]) -> FrameTimeline:
        """Spread ``n_frames`` over the union of the sides' recorded times."""
        t0 = min(float(t[0]) for t in sides.values())
        t1 = max(float(t[-1]) for t in sides.values())
        if n_frames > 1:
            sim = t0 + (t1 - t0) * np.arange(n_frames, dtype=np.float64) / (n_frames - 1)
        else:
            sim = np.array([t0], dtype=np.float64)
        lo: dict[str, npt.NDArray[np.int64]] = {}
        hi: dict[str, npt.NDArray[np.int64]] = {}
        weight: dict[str, npt.NDArray[np.float32]] = {}
        for name, times in sides.items():
            t = times.astype(np.float64)
            upper = np.clip(np.searchsorted(t, sim, side="right"), 1, max(1, len(t) - 1))
            lower = upper - 1
            if len(t) == 1:
                lower = upper = np.zeros(n_frames, dtype=np.int64)
                w = np.zeros(n_frames)
            else:
                span = t[upper] - t[lower]
                w = np.clip((sim - t[lower]) / span, 0.0, 1.0)
            lo[name] = lower.astype(np.int64)
            hi[name] = upper.astype(np.int64)
            weight[name] = w.astype(np.float32)
        return cls(sim_time_s=sim, lo=lo, hi=hi, weight=weight)

    def sample(self, side: str, series: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Interpolate a ``[T]`` series of ``side`` at every frame (host-side)."""
        w = self.weight[side]
        out: npt.NDArray[np.float32] = (
            series[self.lo[side]] * (1.0 - w) + series[self.hi[side]] * w
        ).astype(np.float32)
        return out

    def nearest(self, side: str) -> npt.NDArray[np.int64]:
        """The recorded sample nearest each frame's time, per frame."""
        return np.where(self.weight[side] < 0.5, self.lo[side], self.hi[side])


def _clock(t_s: float) -> str:
    if not math.isfinite(t_s):
        return "--:--:--"
    total = int(round(t_s)) % 86_400
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _align(side: WhatIfFrames, edge_ids: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a side's columns to the geometry's edges (missing -> NaN occupancy, no queue)."""
    column = {e: i for i, e in enumerate(side.edge_ids)}
    idx = np.array([column.get(e, -1) for e in edge_ids], dtype=np.int64)
    missing = idx < 0
    if missing.any():
        logger.info(
            "%s: %d of %d drawn edges have no series (drawn as no data)",
            side.label, int(missing.sum()), len(edge_ids),
        )  # fmt: skip
    occ = side.occupancy[:, np.where(missing, 0, idx)].astype(np.float32)
    queue = side.queue_veh[:, np.where(missing, 0, idx)].astype(np.float32)
    occ[:, missing] = np.nan
    queue[:, missing] = np.nan
    finite = occ[np.isfinite(occ)]
    if finite.size and float(finite.max()) > 1.5:
        logger.warning(
            "%s: occupancy reaches %.1f; treating it as percent (expected a 0..1 fraction)",
            side.label, float(finite.max()),
        )  # fmt: skip
        occ = occ / 100.0
    return occ, queue


def _running_mean(queue: np.ndarray) -> np.ndarray:
    """Per edge, the mean queue from the first sample up to each sample (NaN stays NaN)."""
    counts = np.arange(1, queue.shape[0] + 1, dtype=np.float64)[:, None]
    out: np.ndarray = (np.cumsum(queue.astype(np.float64), axis=0) / counts).astype(np.float32)
    return out


def _percentile(values: np.ndarray, q: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if finite.size else float("nan")


class _Side:
    """One side's series, on the device where frames need them."""

    def __init__(self, scene: WhatIfScene, frames: WhatIfFrames, table: np.ndarray) -> None:
        dev = scene.device
        occ, queue = _align(frames, scene.geometry.edge_ids)
        self.occ_host = occ
        self.occ = torch.from_numpy(occ).to(dev)
        self.queue_mean_host = _running_mean(queue)
        self.queue_mean = torch.from_numpy(self.queue_mean_host).to(dev)
        self.vehicles = frames.vehicles
        if frames.vehicles is not None:
            v = frames.vehicles
            self.v_xy_angle = torch.from_numpy(np.stack((v.x_m, v.y_m, v.angle_deg))).to(dev)
            self.v_speed = torch.from_numpy(v.speed_mps).to(dev)
        samples = len(frames.times_s)
        self.heads = np.zeros((samples, scene.n_heads), dtype=np.int64)
        if frames.signals is not None and scene.n_heads:
            sig = frames.signals
            classes = table[sig.states]  # [T, links]
            where = {t: i for i, t in enumerate(sig.ids)}
            for h, (tls, _, links) in enumerate(scene.heads):
                i = where.get(tls)
                if i is None:
                    continue
                lo, hi = int(sig.offsets[i]), int(sig.offsets[i + 1])
                cols = [lo + k for k in links if lo + k < hi]
                if cols:
                    self.heads[:, h] = classes[:, cols].max(axis=1)


def render_whatif(
    geometry: SceneGeometry,
    frames_current: WhatIfFrames,
    frames_candidate: WhatIfFrames,
    attribution: Attribution,
    out_path: Path,
    width: int = 1920,
    height: int = 1080,
    fps: int = 30,
    device: torch.device | str | None = None,
    *,
    duration_s: float = 20.0,
    preset: str = "ultrafast",
    crf: int = 26,
    batch_frames: int | None = None,
    colormap: str = "greys",
    clock_offset_s: float = 0.0,
    scene: WhatIfScene | None = None,
    estimate: PairedEstimate | None = None,
    title: str | None = None,
) -> VideoArtifact:
    """Render the what-if video and its attribution sidecar.

    Args:
        geometry: The network as drawn.
        frames_current: The current plan's series (left panel).
        frames_candidate: The candidate's series (middle panel).
        attribution: Digests and seed stamped on every frame.
        out_path: The .mp4 to write; the sidecar goes next to it as ``<name>.json``.
        width: Frame width (even), 1920 by default; 3840 for 4K.
        height: Frame height (even), 1080 by default; 2160 for 4K.
        fps: Frames per second.
        device: A device, a ``[edge] device`` preference string, or None (= "auto").
        duration_s: Video length; ``round(duration_s * fps)`` frames.
        preset: libx264 preset.
        crf: libx264 constant rate factor.
        batch_frames: Frames drawn per device batch (default from frame size).
        colormap: The roads' colormap: ``"greys"``, ``"viridis"`` or ``"cividis"``.
        clock_offset_s: Added to simulated time for the on-screen clock
            (seconds since midnight of the simulated start).
        scene: A scene built earlier for this geometry, size and device (reused
            across cycles to skip rasterisation); built here when None.
        estimate: The what-if's paired multi-seed estimate for the candidate
            (quoted in the picture); None says the numbers are one run's.
        title: The header (default: the two sides' labels).

    Returns:
        The written video with the sha256 of the MP4 and of the sidecar.

    Raises:
        ConfigError: Bad sizes, durations, device or inputs.
        SignaltwinError: Encoding or writing failed.
    """
    dev = device if isinstance(device, torch.device) else select_device(device or "auto")
    n_frames = int(round(duration_s * fps))
    if n_frames < 1 or fps < 1:
        raise ConfigError(f"[video] duration_s={duration_s}, fps={fps} give no frames")
    if scene is None:
        scene = WhatIfScene(geometry, width, height, dev, colormap=colormap)
    elif (scene.width, scene.height, scene.device) != (width, height, dev):
        raise ConfigError(
            f"the reused scene is {scene.width}x{scene.height} on {scene.device}, "
            f"not {width}x{height} on {dev}"
        )
    timeline = FrameTimeline.build(
        n_frames, {"current": frames_current.times_s, "candidate": frames_candidate.times_s}
    )
    table = signal_class_table()
    inputs = dict(zip(SIDES, (frames_current, frames_candidate), strict=True))
    sides = {name: _Side(scene, frames, table) for name, frames in inputs.items()}
    video = _Video(scene, timeline, inputs, sides, attribution, estimate, duration_s, title,
                   clock_offset_s)  # fmt: skip

    batch = batch_frames or _default_batch(width, height, dev)
    # Two frame buffers: one is drawn while the encoder reads the other.
    buffers = [
        scene.new_buffer(batch, background=video.background)
        for _ in range(2 if dev.type == "cpu" else 1)
    ]
    pinned = [scene.new_buffer(batch, pin=True) for _ in range(2)] if dev.type == "cuda" else []

    def render_batch(number: int) -> np.ndarray:
        lo_k = number * batch
        hi_k = min(n_frames, lo_k + batch)
        frames = scene.draw(video.batch(lo_k, hi_k), buffers[number % len(buffers)], video.charts)
        if dev.type == "cuda":
            host = pinned[number % 2].frames[: hi_k - lo_k]
            host.copy_(frames, non_blocking=True)
            torch.cuda.current_stream(dev).synchronize()
            return host.numpy()
        return frames.numpy()

    out_path = Path(out_path)
    metadata = {
        "title": "signaltwin what-if: current plan | candidate | difference",
        "comment": attribution.summary(),
        "description": attribution.summary(),
    }
    n_batches = math.ceil(n_frames / batch)
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="whatif-render") as pool,
        H264Writer(out_path, width, height, fps, preset=preset, crf=crf, metadata=metadata) as out,
    ):
        pending: Future[np.ndarray] = pool.submit(render_batch, 0)
        for number in range(n_batches):
            host = pending.result()
            if number + 1 < n_batches:
                pending = pool.submit(render_batch, number + 1)
            out.write_many(_rows(host))
    video_sha = sha256_file(out_path)
    tags = [
        attribution.frame_tags(k, k / fps, float(timeline.sim_time_s[k])) for k in range(n_frames)
    ]
    sidecar = out_path.with_name(out_path.name + ".json")
    sidecar_sha = write_sidecar(
        sidecar,
        out_path,
        video_sha,
        attribution,
        tags,
        {"width": width, "height": height, "fps": fps, "frames": n_frames, "codec": "h264",
         "preset": preset, "crf": crf, "time_mapping": "linear interpolation, ends held",
         "picture": video.summary()},
    )  # fmt: skip
    logger.info("what-if video %s: %d frames, sha256 %s", out_path, n_frames, video_sha)
    return VideoArtifact(
        path=out_path,
        sha256=video_sha,
        sidecar_path=sidecar,
        sidecar_sha256=sidecar_sha,
        frames=n_frames,
        duration_s=n_frames / fps,
        width=width,
        height=height,
        fps=fps,
    )


class _Video:
    """One video's static picture (background, charts, scales) and its per-batch values."""

    def __init__(
        self,
        scene: WhatIfScene,
        timeline: FrameTimeline,
        inputs: dict[str, WhatIfFrames],
        sides: dict[str, _Side],
        attribution: Attribution,
        estimate: PairedEstimate | None,
        duration_s: float,
        title: str | None,
        clock_offset_s: float,
    ) -> None:
        self.scene, self.timeline, self.sides = scene, timeline, sides
        self.n_frames = len(timeline.sim_time_s)
        occ = np.concatenate([s.occ_host.reshape(-1) for s in sides.values()])
        self.occupancy_max = min(1.0, nice_ceiling(_percentile(occ, 99.0), 0.01))
        diff = self._diff_host()
        self.diff_max = nice_ceiling(_percentile(np.abs(diff), 98.0), 0.5)
        speeds = [s.vehicles.speed_mps for s in sides.values() if s.vehicles is not None]
        top_kmh = _percentile(np.concatenate(speeds), 99.0) * 3.6 if speeds else float("nan")
        self.speed_max_mps = (max(10.0, math.ceil(top_kmh / 10.0) * 10.0) if math.isfinite(
            top_kmh) else 50.0) / 3.6  # fmt: skip
        t0, t1 = float(timeline.sim_time_s[0]), float(timeline.sim_time_s[-1])
        clock0, clock1 = _clock(t0 + clock_offset_s), _clock(t1 + clock_offset_s)
        wait = {n: timeline.sample(n, f.mean_wait_s).astype(np.float64) for n, f in inputs.items()}
        nox = {
            n: timeline.sample(n, f.nox_mg).astype(np.float64) / 1000.0 for n, f in inputs.items()
        }
        fonts, lay = scene.fonts, scene.layout
        self.charts = (
            StripChart(lay.charts[0], ChartSeries("Mean wait so far", "s", wait["current"],
                       wait["candidate"]), timeline.sim_time_s, fonts, clock0, clock1),
            StripChart(lay.charts[1], ChartSeries("NOx so far", "g", nox["current"],
                       nox["candidate"]), timeline.sim_time_s, fonts, clock0, clock1),
        )  # fmt: skip
        seed = attribution.seed
        self.text = PictureText(
            title=title
            or f"signaltwin what-if: {inputs['candidate'].label} against "
            f"{inputs['current'].label.lower()}",
            subtitle=self._subtitle(seed, estimate, clock0, clock1, t1 - t0, duration_s),
            labels=(
                inputs["current"].label,
                inputs["candidate"].label,
                "DIFFERENCE: candidate \u2212 current",
            ),  # fmt: skip
            attribution=(
                f"network {attribution.network_sha256[:12]} \u00b7 demand "
                f"{attribution.demand_sha256[:12]} \u00b7 plans "
                f"{attribution.plan_current_sha256[:12]} | {attribution.plan_candidate_sha256[:12]}"
                f" \u00b7 {attribution.simulator_version} \u00b7 seed {seed}"
            ),
            occupancy_max=self.occupancy_max,
            speed_max_kmh=round(self.speed_max_mps * 3.6),
            diff_max_veh=self.diff_max,
            vehicles_note=self._vehicles_note(),
            estimate=estimate,
            seed=seed,
        )
        canvas = Canvas(scene.background_rgb.clone())
        draw_picture(scene, canvas, self.text)
        for chart in self.charts:
            chart.draw(canvas)
        self.background = canvas.to_yuv420(scene.background)
        # the text that changes every frame
        clock = TextField(lay.clock, fonts.title, "right")
        lines: dict[TextField, list[str]] = {
            clock: [f"simulated {_clock(t + clock_offset_s)}" for t in timeline.sim_time_s]
        }
        for chart, series, digits in zip(self.charts, (wait, nox), (1, 0), strict=True):
            field = TextField(chart.values, fonts.small, "right", 200)
            lines[field] = [
                f"current {_value(a, digits)} \u00b7 candidate {_value(b, digits)} \u00b7 "
                f"{signed_pct(b / a - 1.0) if a else 'n/a'}"
                for a, b in zip(series["current"], series["candidate"], strict=True)
            ]
        self.codes = {f: f.atlas.encode(text) for f, text in lines.items()}
        cursors = np.stack([c.cursor for c in self.charts], axis=1)
        self.cursor = torch.from_numpy(cursors).to(scene.device)

    def _diff_host(self) -> np.ndarray:
        tl = self.timeline
        at = {}
        for name, side in self.sides.items():
            q = side.queue_mean_host
            w = tl.weight[name][:, None]
            at[name] = q[tl.lo[name]] * (1 - w) + q[tl.hi[name]] * w
        out: np.ndarray = at["candidate"] - at["current"]
        return out

    def _subtitle(
        self,
        seed: int,
        estimate: PairedEstimate | None,
        clock0: str,
        clock1: str,
        span_s: float,
        duration_s: float,
    ) -> str:
        which = f"Picture and strip charts: the twin's run with seed {seed}"
        if estimate is not None:
            which += f", one of the {len(estimate.seeds)} paired seeds of the estimate (right)"
        speed = span_s / duration_s if duration_s > 0 else float("nan")
        return (
            f"{which}; simulated {clock0} \u2013 {clock1} shown in {duration_s:g} s "
            f"({speed:.0f}\u00d7 real time)"
        )

    def _vehicles_note(self) -> str:
        recorded = [s.vehicles for s in self.sides.values() if s.vehicles is not None]
        if not recorded:
            return "No vehicle positions recorded."
        peak = max(int(v.count.max()) if v.count.size else 0 for v in recorded)
        stride = max(v.stride for v in recorded)
        if stride == 1:
            return f"All vehicles drawn (up to {peak} at once)."
        return f"1 vehicle in {stride} drawn (capped per sample; up to {peak} in the network)."

    def summary(self) -> dict[str, object]:
        """What the sidecar says about the picture (its scales and what it shows)."""
        return {
            "panels": ["current", "candidate", "difference"],
            "seed_shown": self.text.seed,
            "occupancy_max": self.occupancy_max,
            "speed_max_kmh": self.text.speed_max_kmh,
            "difference_max_queue_veh": self.diff_max,
            "vehicles": self.text.vehicles_note,
            "estimate": None
            if self.text.estimate is None
            else {
                "wait_change": self.text.estimate.wait_change,
                "wait_ci": list(self.text.estimate.wait_ci),
                "nox_change": self.text.estimate.nox_change,
                "nox_ci": list(self.text.estimate.nox_ci),
                "seeds": list(self.text.estimate.seeds),
                "confidence_level": self.text.estimate.confidence_level,
            },
        }

    def batch(self, lo_k: int, hi_k: int) -> FrameBatch:
        """Everything that changes in frames ``lo_k:hi_k``."""
        tl, dev = self.timeline, self.scene.device
        road, mean_queue = [], {}
        for name, side in self.sides.items():
            lo = torch.from_numpy(tl.lo[name][lo_k:hi_k]).to(dev)
            hi = torch.from_numpy(tl.hi[name][lo_k:hi_k]).to(dev)
            w = torch.from_numpy(tl.weight[name][lo_k:hi_k]).to(dev).unsqueeze(1)
            occ = side.occ[lo] * (1 - w) + side.occ[hi] * w
            road.append(lut_rows(occ, 0.0, self.occupancy_max, ROAD))
            mean_queue[name] = side.queue_mean[lo] * (1 - w) + side.queue_mean[hi] * w
        diff = lut_rows(mean_queue["candidate"] - mean_queue["current"], -self.diff_max,
                        self.diff_max, DIFF)  # fmt: skip
        heads = torch.from_numpy(
            np.concatenate(
                [s.heads[tl.nearest(n)[lo_k:hi_k]] for n, s in self.sides.items()], axis=1
            )
        ).to(dev)
        return FrameBatch(
            road=torch.cat(road, dim=1),
            diff=diff,
            heads=heads,
            vehicles=self._vehicles(lo_k, hi_k),
            text={f: c[lo_k:hi_k] for f, c in self.codes.items()},
            cursor=self.cursor[lo_k:hi_k],
        )

    def _vehicles(self, lo_k: int, hi_k: int) -> VehicleBatch | None:
        scene, dev = self.scene, self.scene.device
        parts: list[tuple[torch.Tensor, ...]] = []
        for panel, (name, side) in enumerate(self.sides.items()):
            if side.vehicles is None:
                continue
            offsets = side.vehicles.offsets
            near = self.timeline.nearest(name)[lo_k:hi_k]
            starts, ends = offsets[near], offsets[near + 1]
            counts = ends - starts
            if not counts.sum():
                continue
            frame = np.repeat(np.arange(hi_k - lo_k), counts)
            rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            idx = torch.from_numpy(rows).to(dev)
            xya = side.v_xy_angle[:, idx]
            x, y, ux, uy = scene.vehicle_pixels(xya[0], xya[1], xya[2], panel)
            colour = (side.v_speed[idx] / self.speed_max_mps).clamp(0, 1).mul(255).round().long()
            f = torch.from_numpy(frame).to(dev)
            parts.append((x, y, ux, uy, colour, f, torch.full_like(f, panel)))
        if not parts:
            return None
        cat = [torch.cat(p) for p in zip(*parts, strict=True)]
        return VehicleBatch(*cat)


def _value(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}".replace(",", "\u2009")


def _default_batch(width: int, height: int, device: torch.device) -> int:
    """Frames per batch: about 128 MiB of frames on an accelerator, 24 MiB on the CPU.

    On the CPU a batch gains nothing from width, and a small one lets the
    encoder start sooner and keeps the two buffers' fill cheap (at 4K: 2 frames).
    """
    frame_bytes = width * height * 3 // 2
    budget = (128 << 20) if device.type != "cpu" else (24 << 20)
    return int(max(1, min(32, budget // frame_bytes)))


def _rows(batch: np.ndarray) -> Iterator[np.ndarray]:
    for k in range(batch.shape[0]):
        yield batch[k]
