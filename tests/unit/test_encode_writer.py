"""The H.264 writer, attribution tags, sidecar and prober on tiny videos."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from configs.digests import sha256_file
from configs.errors import ConfigError
from edge_accel.encode import (
    SIDECAR_SCHEMA,
    Attribution,
    H264Writer,
    probe_video,
    write_sidecar,
)

ATTRIBUTION = Attribution("n" * 64, "d" * 64, "c" * 64, "k" * 64, "sumo 1.28.0", 7)


def _frames(n: int, w: int = 64, h: int = 48) -> list[np.ndarray]:
    out = []
    for k in range(n):
        f = np.full((h * 3 // 2, w), 128, dtype=np.uint8)
        f[:h] = 16 + (k * 9) % 200
        out.append(f)
    return out


def _write(path: Path, n: int = 12, fps: int = 6) -> None:
    with H264Writer(path, 64, 48, fps, metadata={"comment": ATTRIBUTION.summary()}) as out:
        out.write_many(_frames(n))


NO_FFPROBE = "ffprobe not installed (apt-get install ffmpeg)"
PROBERS = [
    "pyav",
    pytest.param(
        "ffprobe", marks=pytest.mark.skipif(shutil.which("ffprobe") is None, reason=NO_FFPROBE)
    ),
]


@pytest.mark.parametrize("tool", PROBERS)
def test_written_video_probes_as_h264_with_every_frame(tmp_path: Path, tool: str) -> None:
    path = tmp_path / "v.mp4"
    _write(path)
    probe = probe_video(path, prefer=tool)
    assert probe.tool == tool
    assert (probe.codec, probe.width, probe.height, probe.frames) == ("h264", 64, 48, 12)
    assert probe.duration_s == pytest.approx(2.0, abs=1e-3)
    assert probe.pix_fmt == "yuv420p"
    assert "network=" + "n" * 64 in probe.metadata["comment"]


def test_encoding_is_deterministic(tmp_path: Path) -> None:
    _write(tmp_path / "a.mp4")
    _write(tmp_path / "b.mp4")
    assert sha256_file(tmp_path / "a.mp4") == sha256_file(tmp_path / "b.mp4")
    data = (tmp_path / "a.mp4").read_bytes()
    assert sha256_file(tmp_path / "a.mp4") == hashlib.sha256(data).hexdigest()


def test_wrong_frame_shape_is_rejected(tmp_path: Path) -> None:
    with H264Writer(tmp_path / "v.mp4", 64, 48, 6) as out:
        with pytest.raises(ConfigError, match=r"\(72, 64\) packed YUV"):
            out.write(np.zeros((48, 64), dtype=np.uint8))
        out.write(_frames(1)[0])


def test_odd_sizes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="even"):
        H264Writer(tmp_path / "v.mp4", 65, 48, 6)


def test_sidecar_holds_one_tag_set_per_frame(tmp_path: Path) -> None:
    tags = [ATTRIBUTION.frame_tags(k, k / 30, 100.0 + k) for k in range(5)]
    sha = write_sidecar(
        tmp_path / "v.mp4.json", tmp_path / "v.mp4", "f" * 64, ATTRIBUTION, tags, {"fps": 30}
    )
    raw = (tmp_path / "v.mp4.json").read_bytes()
    assert sha == hashlib.sha256(raw).hexdigest()
    doc = json.loads(raw)
    assert doc["schema"] == SIDECAR_SCHEMA
    assert doc["video"] == {"file": "v.mp4", "sha256": "f" * 64, "fps": 30}
    assert [t["frame"] for t in doc["frames"]] == list(range(5))
    assert doc["frames"][3]["sim_time_s"] == 103.0
    assert doc["frames"][0]["plan_candidate_sha256"] == "k" * 64
    assert doc["frames"][0]["seed"] == 7 and doc["frames"][0]["simulator"] == "sumo 1.28.0"
