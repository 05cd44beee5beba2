"""Make a what-if video from a real demo-district cycle and save three of its frames.

The cycle is the e2e video test's (``tests/support/starved_district.py``): the
demo district at its morning peak on plans that starve every light's first
green, the daemon's own parts, and the renderer adapter drawing the video from
the twin's recording. The first, middle and last frames are written as PNG
(PyAV's encoder; no other image library), e.g. for ``docs/img/``::

    .venv/bin/python scripts/video_frames.py --out docs/img --prefix whatif \
        [--width 1920 --height 1080 --fps 30 --duration-s 20] [--keep DIR]

Prints one JSON line with the video, its digest and the gate's decision.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.ledger import Ledger  # noqa: E402
from tests.support.starved_district import cycle_settings, one_cycle  # noqa: E402


def save_frames(video: Path, out: Path, prefix: str) -> list[Path]:
    """Write the first, middle and last frame of ``video`` as PNG files."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = {"start": 0, "middle": len(frames) // 2, "end": len(frames) - 1}
    written = []
    for name, index in picks.items():
        path = out / f"{prefix}-{name}.png"
        rgb = frames[index]
        with av.open(str(path), "w", format="image2") as png:
            stream = png.add_stream("png")
            stream.width, stream.height = rgb.shape[1], rgb.shape[0]
            stream.pix_fmt = "rgb24"
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                png.mux(packet)
            for packet in stream.encode(None):
                png.mux(packet)
        written.append(path)
    return written


def main() -> None:
    """Run the cycle, save the frames, print what was made."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG files")
    parser.add_argument("--prefix", default="whatif")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--keep", type=Path, help="keep the state (video, ledger) here")
    parser.add_argument(
        "--lead-s", type=float, default=900.0, help="field seconds before the daemon starts"
    )
    args = parser.parse_args()
    video = {"width": args.width, "height": args.height, "fps": args.fps,
             "duration_s": args.duration_s}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="signaltwin-frames-") as tmp:
        work = args.keep or Path(tmp)
        settings = cycle_settings(work / "state", video)
        with one_cycle(settings, work, lead_s=args.lead_s) as report:
            pass
        with Ledger.open(settings.ledger.path, readonly=True) as ledger:
            cycle = list(ledger.iter_records("cycle"))[-1].body
        if "video" not in cycle:
            raise SystemExit(f"no video: the gate said {report.decision} ({report.error})")
        path = Path(cycle["video"]["path"])
        args.out.mkdir(parents=True, exist_ok=True)
        pngs = save_frames(path, args.out, args.prefix)
        print(json.dumps({"video": str(path), "sha256": cycle["video"]["sha256"],
                          "decision": report.decision, "deployed": report.deployed,
                          "frames": [str(p) for p in pngs]}))  # fmt: skip


if __name__ == "__main__":
    main()
