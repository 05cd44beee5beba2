"""The what-if video end to end: render, encode, probe (ffprobe when present), sidecar, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from configs.digests import sha256_file
from controller.cli import run
from edge_accel import (
    Attribution,
    PairedEstimate,
    SceneGeometry,
    SignalSamples,
    VehicleSamples,
    WhatIfFrames,
    grid_geometry,
    probe_video,
    render_whatif,
)

pytestmark = pytest.mark.integration

DISTRICT = Path(__file__).resolve().parents[2] / "configs" / "district" / "district.net.xml"
ATTRIBUTION = Attribution("1" * 64, "2" * 64, "3" * 64, "4" * 64, "sumo 1.28.0", 11)


def _sides(edge_ids: tuple[str, ...], samples: int, horizon_s: float = 900.0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, horizon_s, samples)
    occ = rng.uniform(0.0, 1.0, size=(samples, len(edge_ids))).astype(np.float32)
    queue = (occ * 15).astype(np.float32)
    wait = np.linspace(5, 40, samples)
    nox = np.cumsum(np.full(samples, 4000.0))
    current = WhatIfFrames.from_arrays("CURRENT PLAN", edge_ids, t, occ, queue, wait, nox)
    candidate = WhatIfFrames.from_arrays(
        "CANDIDATE", edge_ids, t, occ * 0.6, queue * 0.5, wait * 0.85, nox * 1.004
    )
    return current, candidate


def _probe_tool() -> str:
    # Prefer ffprobe; PyAV's demuxer is the fallback, and a failure of both raises.
    return "ffprobe" if shutil.which("ffprobe") else "pyav"


@pytest.mark.slow
def test_default_video_is_20_s_1080p_h264_with_a_tag_set_per_frame(tmp_path: Path) -> None:
    geometry = grid_geometry(5, 4, 180.0)
    # 31 samples over a 900 s horizon: far fewer than 600 frames, so interpolated.
    current, candidate = _sides(geometry.edge_ids, 31)
    art = render_whatif(
        geometry, current, candidate, ATTRIBUTION, tmp_path / "whatif.mp4", device="auto"
    )
    assert (art.width, art.height, art.fps, art.frames, art.duration_s) == (
        1920,
        1080,
        30,
        600,
        20.0,
    )
    probe = probe_video(art.path)
    assert probe.tool == _probe_tool()
    assert (probe.codec, probe.width, probe.height, probe.pix_fmt) == (
        "h264",
        1920,
        1080,
        "yuv420p",
    )
    assert probe.frames == 600
    assert probe.duration_s == pytest.approx(20.0, abs=0.05)
    assert "plan_candidate=" + "4" * 64 in probe.metadata["comment"]
    assert probe.metadata["description"] == ATTRIBUTION.summary()

    assert art.sha256 == sha256_file(art.path)
    assert art.sidecar_sha256 == sha256_file(art.sidecar_path)
    sidecar = json.loads(art.sidecar_path.read_text())
    assert sidecar["video"]["sha256"] == art.sha256
    frames = sidecar["frames"]
    assert len(frames) == probe.frames == 600
    assert [f["frame"] for f in frames] == list(range(600))
    sim = [f["sim_time_s"] for f in frames]
    assert (
        sim[0] == 0.0
        and sim[-1] == 900.0
        and all(b > a for a, b in zip(sim, sim[1:], strict=False))
    )
    assert frames[0]["pts_s"] == 0.0 and frames[-1]["pts_s"] == pytest.approx(599 / 30)
    assert {f["network_sha256"] for f in frames} == {"1" * 64}
    assert {f["seed"] for f in frames} == {11}


def test_same_inputs_give_the_same_video_digest(tmp_path: Path) -> None:
    geometry = grid_geometry(3, 3, 100.0)
    current, candidate = _sides(geometry.edge_ids, 4, 60.0)
    digests = [
        render_whatif(geometry, current, candidate, ATTRIBUTION, tmp_path / f"{k}.mp4",
                      640, 360, 10, "cpu", duration_s=1.0).sha256
        for k in range(2)
    ]  # fmt: skip
    assert digests[0] == digests[1]
    assert probe_video(tmp_path / "0.mp4", prefer="pyav").frames == 10


def _document(edge_ids: list[str], samples: int = 3) -> dict[str, object]:
    occ = [[0.1 * ((i + j) % 10) for j in range(len(edge_ids))] for i in range(samples)]
    queue = [[float((i * j) % 7) for j in range(len(edge_ids))] for i in range(samples)]
    return {
        "network": str(DISTRICT),
        "demand_sha256": "d" * 64,
        "simulator": "sumo 1.28.0",
        "seeds": [3, 4],
        "recording": {
            "edge_ids": edge_ids,
            "times_s": [300.0 + 100 * i for i in range(samples)],
            "plans": {
                "current": {"occupancy": occ, "queue": queue, "plan_sha256": "c" * 64},
                "webster": {"occupancy": occ[::-1], "queue": queue, "plan_sha256": "w" * 64},
            },
        },
    }


def test_cli_renders_the_district_from_simulate_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulators.network import load_network

    model = load_network(DISTRICT)
    doc = _document(sorted(model.edges)[:40])
    source = tmp_path / "sim.json"
    source.write_text(json.dumps(doc))
    out = tmp_path / "district.mp4"
    size = ["--width", "640", "--height", "360", "--fps", "10", "--duration-s", "1"]
    code = run(["render", "--input", str(source), "--out", str(out), *size, "--device", "cpu"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["frames"] == 10 and report["codec"] == "h264"
    assert report["sha256"] == sha256_file(out)
    sidecar = json.loads(Path(report["sidecar"]).read_text())
    tags = sidecar["frames"][0]
    assert tags["network_sha256"] == model.sha256  # computed from the network file
    assert tags["plan_current_sha256"] == "c" * 64
    assert tags["plan_candidate_sha256"] == "w" * 64
    assert tags["demand_sha256"] == "d" * 64 and tags["seed"] == 3
    assert tags["sim_time_s"] == 300.0 and sidecar["frames"][-1]["sim_time_s"] == 500.0
    # without --config or --preset: the shipped [video] defaults
    assert (sidecar["video"]["preset"], sidecar["video"]["crf"]) == ("ultrafast", 26)


def test_cli_encoder_options_come_from_the_command_line_or_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulators.network import load_network

    source = tmp_path / "sim.json"
    source.write_text(json.dumps(_document(sorted(load_network(DISTRICT).edges)[:10])))
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
    text = demo.read_text().replace('"district/', f'"{demo.parent}/district/')
    video = 'width = 320\nheight = 180\nfps = 5\nduration_s = 1.0\npreset = "superfast"\ncrf = 30'
    config = tmp_path / "video.toml"
    config.write_text(text.replace("width = 1280\nheight = 720\nfps = 30\nduration_s = 8.0", video))
    out = tmp_path / "v.mp4"
    base = ["render", "--input", str(source), "--out", str(out), "--device", "cpu"]
    assert run([*base, "--config", str(config)]) == 0
    video = json.loads(Path(json.loads(capsys.readouterr().out)["sidecar"]).read_text())["video"]
    assert (video["width"], video["preset"], video["crf"]) == (320, "superfast", 30)
    assert run([*base, "--config", str(config), "--preset", "veryfast", "--crf", "20"]) == 0
    video = json.loads(Path(json.loads(capsys.readouterr().out)["sidecar"]).read_text())["video"]
    assert (video["preset"], video["crf"]) == ("veryfast", 20)
    assert run([*base, "--crf", "52"]) == 2
    assert "--crf must be 0..51" in capsys.readouterr().err


def test_cli_explains_a_missing_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "sim.json"
    source.write_text(json.dumps({"outcomes": [], "horizon_s": 900}))
    code = run(["render", "--input", str(source), "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    assert 'no "recording"' in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def _full_sides(geometry: SceneGeometry, samples: int = 6):  # type: ignore[no-untyped-def]
    """Sides with vehicles (every other one recorded on the candidate) and signal states."""
    rng = np.random.default_rng(3)
    t = np.linspace(300.0, 600.0, samples)
    edges = geometry.edge_ids
    ids = sorted({tls for tls, _, _ in geometry.signal_heads})
    width = {i: 1 + max(k for tls, _, links in geometry.signal_heads if tls == i for k in links)
             for i in ids}  # fmt: skip
    offsets = np.concatenate(([0], np.cumsum([width[i] for i in ids])))
    states = np.frombuffer(
        b"".join(
            b"".join((b"Gr" * 8)[k % 2 : k % 2 + width[i]] for i in ids) for k in range(samples)
        ),
        dtype=np.uint8,
    ).reshape(samples, -1)
    signals = SignalSamples.from_arrays(ids, offsets, states, samples=samples)
    n = min(40, len(edges)) // 2 * 2
    starts = np.array([geometry.polylines[e][0] for e in edges[:n]])
    x = np.tile(starts[:, 0] + 30.0, samples)
    y = np.tile(starts[:, 1] + 1.0, samples)
    vehicles = VehicleSamples.from_arrays(
        np.arange(samples + 1) * n, x, y, np.full(x.size, 90.0), rng.uniform(0, 14, x.size),
        samples=samples,
    )  # fmt: skip
    halved = VehicleSamples.from_arrays(
        np.arange(samples + 1) * (n // 2), x.reshape(samples, n)[:, ::2].ravel(),
        y.reshape(samples, n)[:, ::2].ravel(), np.full(x.size // 2, 90.0),
        np.full(x.size // 2, 3.0), np.full(samples, n), samples=samples,
    )  # fmt: skip
    occ = rng.uniform(0.0, 0.08, size=(samples, len(edges))).astype(np.float32)
    wait, nox = np.linspace(5, 40, samples), np.cumsum(np.full(samples, 4000.0))
    current = WhatIfFrames.from_arrays("CURRENT PLAN", edges, t, occ, occ * 40, wait, nox,
                                       vehicles=vehicles, signals=signals)  # fmt: skip
    candidate = WhatIfFrames.from_arrays(
        "CANDIDATE (x)", edges, t, occ * 0.5, occ * 10, wait * 0.7, nox,
        vehicles=halved, signals=signals,
    )  # fmt: skip
    return current, candidate


def test_the_full_picture_is_deterministic_and_its_sidecar_states_its_scales(
    tmp_path: Path,
) -> None:
    geometry = grid_geometry(4, 3, 150.0)
    current, candidate = _full_sides(geometry)
    estimate = PairedEstimate(-0.25, (-0.3, -0.2), 0.001, (-0.004, 0.006), (11, 12, 13), 0.95,
                              verdict="passed", passed=True,
                              intersection_wait_change={"J1_1": -0.4})  # fmt: skip
    arts = [
        render_whatif(geometry, current, candidate, ATTRIBUTION, tmp_path / f"{k}.mp4", 640, 360,
                      10, "cpu", duration_s=1.0, estimate=estimate)
        for k in range(2)
    ]  # fmt: skip
    assert arts[0].sha256 == arts[1].sha256
    picture = json.loads(arts[0].sidecar_path.read_text())["video"]["picture"]
    assert picture["panels"] == ["current", "candidate", "difference"]
    assert picture["seed_shown"] == 11
    assert picture["occupancy_max"] == 0.1  # the 99th percentile, rounded up
    assert picture["estimate"]["wait_ci"] == [-0.3, -0.2]
    assert picture["vehicles"].startswith("1 vehicle in 2 drawn")
    probe = probe_video(arts[0].path)
    assert (probe.codec, probe.frames, probe.width) == ("h264", 10, 640)
