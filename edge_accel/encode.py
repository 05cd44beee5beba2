"""H.264 MP4 encoding with PyAV, per-frame attribution sidecars, and probing.

Frames arrive as packed planar YUV 4:2:0 (``[H * 3 // 2, W]`` uint8, the layout
the renderer produces on the device), are handed to libx264 without any colour
conversion on the host, and are muxed into MP4. Each video gets a JSON sidecar
with one attribution tag set per frame (which network, demand, plans,
simulator and seed produced it, and the frame's simulated time) and a summary
of the same digests in the MP4's container metadata, so a frame cut out of the
video can still be traced to the ledger record that produced it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from configs.digests import sha256_hex
from configs.errors import ConfigError, SignaltwinError

__all__ = [
    "SIDECAR_SCHEMA",
    "Attribution",
    "EncodeError",
    "H264Writer",
    "VideoArtifact",
    "VideoProbe",
    "probe_video",
    "write_sidecar",
]

logger = logging.getLogger(__name__)

SIDECAR_SCHEMA = "signaltwin.video-attribution/v1"


class EncodeError(SignaltwinError):
    """The video could not be encoded or written."""


@dataclass(frozen=True)
class Attribution:
    """What produced a what-if video; stamped on every frame's tag set.

    Attributes:
        network_sha256: Digest of the network (.net.xml) simulated.
        demand_sha256: Digest of the demand snapshot (estimated routes/flows).
        plan_current_sha256: Digest of the current plan (left panel).
        plan_candidate_sha256: Digest of the candidate plan (right panel).
        simulator_version: E.g. ``"sumo 1.28.0"``.
        seed: The simulation seed of the recorded runs.
    """

    network_sha256: str
    demand_sha256: str
    plan_current_sha256: str
    plan_candidate_sha256: str
    simulator_version: str
    seed: int

    def frame_tags(self, frame: int, pts_s: float, sim_time_s: float) -> dict[str, Any]:
        """Return the tag set of one frame."""
        return {
            "frame": frame,
            "pts_s": round(pts_s, 6),
            "sim_time_s": round(sim_time_s, 3),
            "network_sha256": self.network_sha256,
            "demand_sha256": self.demand_sha256,
            "plan_current_sha256": self.plan_current_sha256,
            "plan_candidate_sha256": self.plan_candidate_sha256,
            "simulator": self.simulator_version,
            "seed": self.seed,
        }

    def summary(self) -> str:
        """One line with every digest, for the MP4's comment/description metadata."""
        return (
            f"signaltwin what-if; network={self.network_sha256}; demand={self.demand_sha256}; "
            f"plan_current={self.plan_current_sha256}; "
            f"plan_candidate={self.plan_candidate_sha256}; "
            f"simulator={self.simulator_version}; seed={self.seed}"
        )


@dataclass(frozen=True)
class VideoArtifact:
    """A written what-if video and its attribution sidecar, with their digests."""

    path: Path
    sha256: str
    sidecar_path: Path
    sidecar_sha256: str
    frames: int
    duration_s: float
    width: int
    height: int
    fps: int


class H264Writer:
    """Write packed YUV 4:2:0 frames to an H.264 MP4 with libx264.

    Use as a context manager; frames are written in order with :meth:`write`.
    The stream declares BT.709 limited range, matching :mod:`edge_accel.color`.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int,
        *,
        preset: str = "ultrafast",
        crf: int = 26,
        threads: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Open ``path`` for writing.

        Args:
            path: The .mp4 to create (its directory must exist).
            width: Frame width in pixels (even).
            height: Frame height in pixels (even).
            fps: Frames per second.
            preset: libx264 preset (``ultrafast`` .. ``veryslow``).
            crf: Constant rate factor (lower = better quality, bigger file).
            threads: Encoder threads, 0 = one per core.
            metadata: Container metadata (``title``, ``comment``, ``description``...).

        Raises:
            ConfigError: Odd frame size, no libx264 in this PyAV build, or a bad
                option value.
            EncodeError: The file cannot be created.
        """
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ConfigError(
                f"[video] width/height must be positive and even, got {width}x{height}"
            )
        if "libx264" not in av.codecs_available:
            raise ConfigError(
                "this PyAV build has no libx264 encoder; install the 'av' wheel from PyPI "
                "(it bundles libx264) instead of a system build without it"
            )
        self.path = path
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_written = 0
        try:
            self._container = av.open(str(path), mode="w", format="mp4")
        except (OSError, av.FFmpegError) as e:
            raise EncodeError(f"cannot create video file {path}: {e}") from e
        for key, value in (metadata or {}).items():
            self._container.metadata[key] = value
        stream = self._container.add_stream("libx264", rate=Fraction(fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {
            "preset": preset,
            "crf": str(crf),
            "x264-params": "colorprim=bt709:transfer=bt709:colormatrix=bt709:range=tv",
        }
        stream.codec_context.thread_count = threads
        self._stream = stream

    def write(self, packed_yuv420: npt.NDArray[np.uint8]) -> None:
        """Encode one frame given as a C-contiguous ``[H * 3 // 2, W]`` uint8 array.

        libx264 copies the picture, so the caller may reuse the buffer afterwards.

        Raises:
            ConfigError: The array has the wrong shape or type.
            EncodeError: The encoder failed.
        """
        expected = (self.height * 3 // 2, self.width)
        if packed_yuv420.shape != expected or packed_yuv420.dtype != np.uint8:
            raise ConfigError(
                f"frame must be uint8 {expected} packed YUV 4:2:0, got "
                f"{packed_yuv420.dtype} {packed_yuv420.shape}"
            )
        frame = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(packed_yuv420), "yuv420p")
        frame.pts = self.frames_written
        frame.time_base = Fraction(1, self.fps)
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as e:
            raise EncodeError(f"encoding frame {self.frames_written} of {self.path}: {e}") from e
        self.frames_written += 1

    def write_many(self, frames: Iterable[npt.NDArray[np.uint8]]) -> None:
        """Encode several frames in order."""
        for frame in frames:
            self.write(frame)

    def close(self) -> None:
        """Flush the encoder and finish the MP4."""
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except av.FFmpegError as e:
            raise EncodeError(f"flushing the encoder for {self.path}: {e}") from e
        finally:
            self._container.close()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()


def write_sidecar(
    sidecar_path: Path,
    video_path: Path,
    video_sha256: str,
    attribution: Attribution,
    frame_tags: list[dict[str, Any]],
    video: dict[str, Any],
) -> str:
    """Write the attribution sidecar JSON (one tag set per frame); return its sha256."""
    document = {
        "schema": SIDECAR_SCHEMA,
        "video": {"file": video_path.name, "sha256": video_sha256, **video},
        "attribution": asdict(attribution),
        "frames": frame_tags,
    }
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    try:
        sidecar_path.write_bytes(data)
    except OSError as e:
        raise EncodeError(f"cannot write the attribution sidecar {sidecar_path}: {e}") from e
    return sha256_hex(data)


@dataclass(frozen=True)
class VideoProbe:
    """What a prober reads back from a video file."""

    tool: str
    codec: str
    width: int
    height: int
    frames: int
    duration_s: float
    pix_fmt: str
    metadata: dict[str, str]


def probe_video(path: Path, prefer: str = "ffprobe") -> VideoProbe:
    """Read codec, size, frame count, duration and metadata back from a video.

    Uses ffprobe when it is on PATH (and ``prefer`` is ``"ffprobe"``), otherwise
    PyAV's demuxer (counting packets, which for H.264 without B-frame reordering
    loss equals the frame count).

    Raises:
        SignaltwinError: The file cannot be probed.
    """
    ffprobe = shutil.which("ffprobe") if prefer == "ffprobe" else None
    if ffprobe:
        cmd = [
            ffprobe, "-v", "error", "-count_packets", "-select_streams", "v:0",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_packets,pix_fmt,duration:format=duration:format_tags",
            "-of", "json", str(path),
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise EncodeError(f"ffprobe failed on {path}: {e}") from e
        info = json.loads(out)
        stream = info["streams"][0]
        fmt = info.get("format", {})
        return VideoProbe(
            tool="ffprobe",
            codec=stream["codec_name"],
            width=int(stream["width"]),
            height=int(stream["height"]),
            frames=int(stream["nb_read_packets"]),
            duration_s=float(stream.get("duration", fmt.get("duration", "nan"))),
            pix_fmt=stream.get("pix_fmt", ""),
            metadata={str(k): str(v) for k, v in fmt.get("tags", {}).items()},
        )
    try:
        with av.open(str(path)) as container:
            vstream = container.streams.video[0]
            packets = sum(1 for p in container.demux(vstream) if p.size)
            duration = (
                float(vstream.duration * vstream.time_base)
                if vstream.duration is not None and vstream.time_base is not None
                else float("nan")
            )
            return VideoProbe(
                tool="pyav",
                codec=vstream.codec_context.name,
                width=vstream.codec_context.width,
                height=vstream.codec_context.height,
                frames=packets,
                duration_s=duration,
                pix_fmt=str(vstream.codec_context.pix_fmt),
                metadata=dict(container.metadata),
            )
    except av.FFmpegError as e:
        raise EncodeError(f"cannot open {path} to probe it: {e}") from e
