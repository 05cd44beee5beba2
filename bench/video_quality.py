"""What the encoder preset costs and buys: time, bytes and PSNR of the what-if video.

Renders the benchmark's what-if picture (bench/render.py's synthetic 10 x 7
grid with vehicles, heads and charts) once into raw YUV frames, then encodes
those same frames with each libx264 preset/crf pair and decodes them back.
Prints one JSON line per pair and frame size:

* ``video_psnr_y_db``: luma PSNR of the decoded video against the rendered
  frames (higher is closer; above ~40 dB the difference is hard to see),
  with ``encode_s`` (wall time), ``mb_per_video_s`` (file megabytes per second
  of video) and ``ratio`` = encode time / the same frames at veryfast crf 23
  (the daemon's setting before presets were configurable; < 1 is faster).

Run: ``.venv/bin/python bench/video_quality.py [--seconds 2] [--sizes 1920x1080,3840x2160]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from render import ATTRIBUTION, ESTIMATE, sides  # bench/render.py, run from bench/ or the root

from edge_accel import H264Writer, grid_geometry, render_whatif, select_device
from edge_accel import render as render_module

PAIRS = (("veryfast", 23), ("superfast", 23), ("ultrafast", 23), ("ultrafast", 26))


class _Capture:
    """Stands in for the encoder during the render: keeps the raw frames."""

    frames: list[np.ndarray] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        _Capture.frames = []

    def __enter__(self) -> _Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write_many(self, frames: object) -> None:
        for frame in frames:  # type: ignore[attr-defined]
            _Capture.frames.append(np.array(frame))


def rendered(width: int, height: int, seconds: float, out: Path) -> list[np.ndarray]:
    """The raw packed YUV 4:2:0 frames of the benchmark video at this size."""
    geometry = grid_geometry(10, 7, 150.0)
    current, candidate = sides(geometry)
    encoder = render_module.H264Writer
    render_module.H264Writer = _Capture  # type: ignore[assignment,misc]
    try:
        target = out / "raw.mp4"
        target.touch()
        render_whatif(geometry, current, candidate, ATTRIBUTION, target, width, height, 30,
                      select_device("auto"), duration_s=seconds, estimate=ESTIMATE)  # fmt: skip
    finally:
        render_module.H264Writer = encoder  # type: ignore[misc]
    return _Capture.frames


def measure(frames: list[np.ndarray], width: int, height: int, preset: str, crf: int,
            path: Path) -> tuple[float, int, float]:  # fmt: skip
    """Encode time, file bytes and luma PSNR (dB) of one preset/crf."""
    import av

    started = time.perf_counter()
    with H264Writer(path, width, height, 30, preset=preset, crf=crf) as writer:
        for frame in frames:
            writer.write(frame)
    elapsed = time.perf_counter() - started
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]
    mse = float(np.mean([
        np.mean((a[:height].astype(np.float64) - b[:height]) ** 2)
        for a, b in zip(frames, decoded, strict=True)
    ]))  # fmt: skip
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
    return elapsed, path.stat().st_size, psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="video length (default 2)")
    parser.add_argument("--sizes", default="1920x1080,3840x2160", help="WxH,WxH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            frames = rendered(width, height, args.seconds, out)
            reference: float | None = None
            for preset, crf in PAIRS:
                elapsed, size_bytes, psnr = measure(frames, width, height, preset, crf,
                                                    out / "q.mp4")  # fmt: skip
                if (preset, crf) == ("veryfast", 23):
                    reference = elapsed
                line = {
                    "figure": "video_psnr_y_db",
                    "value": round(psnr, 2),
                    "unit": "dB",
                    "ratio": None if reference is None else round(elapsed / reference, 3),
                    "against": "veryfast crf 23 encode time",
                    "size": size,
                    "preset": preset,
                    "crf": crf,
                    "encode_s": round(elapsed, 3),
                    "mb_per_video_s": round(size_bytes / 1e6 / args.seconds, 2),
                }
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
