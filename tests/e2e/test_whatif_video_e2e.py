"""A deployment with its what-if video, end to end through the daemon's own parts.

Real parts only: the demo district's field emulator (SUMO, in this process, on
the traci backend) behind the controllers' own acceptance logic (the lockstep
fleet, :mod:`controller.lockstep`), the twin on libsumo worker processes, the
proposer, the gate, a SoftHSM2 token, the SQLite ledger, and the daemon's
renderer adapter (:class:`controller.wiring.RendererAdapter`) drawing the video
from the twin's recording of the what-if.

The city runs plans that starve the first green of every light (7 s of a
90 s cycle) at the morning peak, so the candidates (Webster and the policy,
within the safety limits' per-deployment change) clearly win: the gate must
let one through, and the test fails if it refuses. The video is then checked
with ffprobe (H.264, size, frame count) and its sidecar against the digest the
ledger recorded for the deployment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from configs.digests import sha256_file
from configs.settings import Settings
from controller.ledger import Ledger
from tests.support.starved_district import cycle_settings, one_cycle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WIDTH, HEIGHT, FPS, DURATION_S = 960, 540, 10, 6.0
PRESET, CRF = "superfast", 30  # not the defaults: the adapter must pass [video]'s own


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[tuple[Settings, Any]]:
    video = {"width": WIDTH, "height": HEIGHT, "fps": FPS, "duration_s": DURATION_S,
             "preset": PRESET, "crf": CRF}  # fmt: skip
    settings = cycle_settings(
        tmp_path / "state", video, horizon_s=300, warmup_s=120, seeds=3, candidates=2
    )
    with one_cycle(settings, tmp_path) as report:
        yield settings, report


def _ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames,pix_fmt", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    stream: dict[str, Any] = json.loads(out)["streams"][0]
    return stream


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe (Debian: ffmpeg) missing")
def test_a_deployment_carries_a_video_of_the_twins_recording(
    deployed: tuple[Settings, Any],
) -> None:
    settings, report = deployed
    assert report.deployed, (report.decision, report.failed_stage, report.error)
    with Ledger.open(settings.ledger.path, readonly=True) as ledger:
        cycle = [r for r in ledger.iter_records("cycle")][-1].body
        deployment = ledger.find("deployment")[-1].body
    assert deployment["result"] == "deployed", deployment
    recorded = cycle["video"]
    video = Path(recorded["path"])
    assert recorded["sha256"] == sha256_file(video)
    # the signed timing configuration names the same video as its evidence
    assert cycle["configuration"]["evidence"]["video_sha256"] == recorded["sha256"]

    stream = _ffprobe(video)
    frames = round(FPS * DURATION_S)
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert (int(stream["width"]), int(stream["height"])) == (WIDTH, HEIGHT)
    assert int(stream["nb_read_frames"]) == frames

    sidecar = json.loads(video.with_name(video.name + ".json").read_text())
    assert sidecar["video"]["sha256"] == recorded["sha256"]
    assert sidecar["video"]["frames"] == frames == len(sidecar["frames"])
    assert (sidecar["video"]["preset"], sidecar["video"]["crf"]) == (PRESET, CRF)
    chosen = cycle["gate"]["chosen"]
    request = cycle["whatif"]["request"]
    recorded_seed = request["seeds"][request["record"]["seed_index"]]
    assert sidecar["attribution"]["seed"] == recorded_seed
    assert sidecar["attribution"]["network_sha256"] == cycle["network"]["sha256"]
    assert sidecar["attribution"]["demand_sha256"] == cycle["demand"]["sha256"]
    picture = sidecar["video"]["picture"]
    assert picture["seed_shown"] == recorded_seed
    # the numbers in the picture are the gate's: the paired estimate over every seed
    outcome = next(o for o in cycle["whatif"]["result"]["outcomes"] if o["name"] == chosen)
    assert picture["estimate"]["seeds"] == request["seeds"]
    assert picture["estimate"]["wait_change"] == pytest.approx(outcome["changes"]["wait"]["mean"])
    assert picture["estimate"]["wait_ci"] == pytest.approx(outcome["changes"]["wait"]["ci"])
    assert picture["vehicles"].startswith("All vehicles drawn")
