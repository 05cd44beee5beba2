"""Rasterisation, the laid-out scene and per-frame drawing (CPU, no encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from configs.errors import ConfigError
from edge_accel.raster import WorldToPixel, rasterise_polylines
from edge_accel.render import FrameTimeline, WhatIfScene
from edge_accel.scene import SceneGeometry, WhatIfFrames, grid_geometry

CPU = torch.device("cpu")
W, H = 640, 360


def _table(polys: list[list[tuple[float, float]]], band: float = 4.0, **kw: object):  # type: ignore[no-untyped-def]
    to_px = WorldToPixel(1.0, 10.0, 90.0)  # metres == pixels, y flipped
    return rasterise_polylines(
        [np.asarray(p, dtype=np.float64) for p in polys],
        [band] * len(polys),
        to_px,
        (0, 0, 100, 100),
        100,
        CPU,
        **kw,  # type: ignore[arg-type]
    )


def test_eastbound_edge_is_drawn_on_its_right_hand_side() -> None:
    table = _table([[(0.0, 0.0), (50.0, 0.0)]])
    ys = table.flat // 100
    xs = table.flat % 100
    # World y=0 is pixel row 90; travelling east, the right-hand side is south (rows >= 90).
    assert int(ys.min()) == 90 and int(ys.max()) == 93
    assert 8 <= int(xs.min()) <= 10 and 60 <= int(xs.max()) <= 62
    assert len(set(table.flat.tolist())) == len(table)  # unique pixels
    # The queue reference counts from the downstream (east) end.
    east = table.dist_to_end_m[xs == int(xs.max())]
    west = table.dist_to_end_m[xs == int(xs.min())]
    assert float(east.max()) < 2.0 and float(west.min()) > 48.0
    assert bool(table.core.any()) and not bool(table.core.all())


def test_opposite_directions_do_not_overlap() -> None:
    fwd = [(0.0, 0.0), (50.0, 0.0)]
    table = _table([fwd, fwd[::-1]])
    rows_of = {e: set((table.flat[table.edge == e] // 100).tolist()) for e in (0, 1)}
    assert rows_of[0] and rows_of[1] and not rows_of[0] & rows_of[1]


def test_later_edge_owns_overlapping_pixels_and_exclusion_is_respected() -> None:
    line = [(0.0, 0.0), (50.0, 0.0)]
    exclude = torch.zeros(100 * 100, dtype=torch.bool)
    exclude[90 * 100 + 30 : 90 * 100 + 40] = True
    table = _table([line, line], exclude=exclude)
    assert set(table.edge.tolist()) == {1}
    assert not bool(exclude[table.flat].any())


def test_clip_rectangle_bounds_the_pixels() -> None:
    table = _table([[(-50.0, 0.0), (200.0, 0.0)]])
    xs = table.flat % 100
    assert int(xs.min()) >= 0 and int(xs.max()) <= 99


def _scene() -> WhatIfScene:
    return WhatIfScene(grid_geometry(3, 3, 100.0), W, H, CPU)


def _y(frames: torch.Tensor) -> torch.Tensor:
    return frames[:, :H, :].reshape(frames.shape[0], -1)


def test_edges_take_the_lut_colour_of_their_occupancy() -> None:
    scene = _scene()
    e = scene.n_edges
    occ = torch.zeros(2, 2 * e)
    occ[1] = 1.0
    occ[1, 0] = float("nan")
    frames = scene.draw(occ, torch.zeros(2, 2 * e))
    assert frames.shape == (2, H * 3 // 2, W) and frames.dtype == torch.uint8
    luma = scene.pix_flat < W * H
    key = scene.pix_key[luma]
    flat = scene.pix_flat[luma]
    y = _y(frames)
    assert bool((y[0, flat] == scene.lut_yuv[0, 0]).all())
    nodata = key // 3 == 0
    assert bool((y[1, flat[~nodata]] == scene.lut_yuv[255, 0]).all())
    assert bool((y[1, flat[nodata]] == scene.lut_yuv[256, 0]).all())
    # Pixels that are not edges keep the background.
    mask = torch.ones(W * H, dtype=torch.bool)
    mask[flat] = False
    assert torch.equal(y[0, mask], scene.background[: W * H][mask])


def test_queue_stripe_grows_from_the_downstream_end() -> None:
    scene = _scene()
    e = scene.n_edges
    occ = torch.full((3, 2 * e), 0.1)
    queue = torch.zeros(3, 2 * e)
    queue[1] = 30.0
    queue[2] = 1e6
    frames = scene.draw(occ, queue)
    core = scene.core_flat[scene.core_flat < W * H]
    changed = [int((_y(frames)[k, core] != _y(frames)[0, core]).sum()) for k in (1, 2)]
    assert 0 < changed[0] < changed[1] == len(core)


def test_reused_buffer_matches_a_fresh_draw() -> None:
    scene = _scene()
    e = scene.n_edges
    f0, f1 = scene.text_codes(scene.clock_field, ["SIM TIME 00:00:01", "SIM TIME 11:11:11"])[[0, 1]]
    buf = scene.new_buffer(1)
    occ = torch.rand(1, 2 * e)
    scene.draw(torch.rand(1, 2 * e), torch.rand(1, 2 * e) * 50, {scene.clock_field: f1[None]}, buf)
    reused = scene.draw(occ, torch.zeros(1, 2 * e), {scene.clock_field: f0[None]}, buf).clone()
    fresh = scene.draw(occ, torch.zeros(1, 2 * e), {scene.clock_field: f0[None]})
    assert torch.equal(reused, fresh)
    blank = scene.draw(occ, torch.zeros(1, 2 * e))
    assert not torch.equal(fresh, blank)  # the clock text was stamped


def test_too_small_frames_are_rejected() -> None:
    with pytest.raises(ConfigError, match="even width"):
        WhatIfScene(grid_geometry(2, 2), 321, 200, CPU)


def test_timeline_interpolates_linearly_and_holds_the_ends() -> None:
    times = {
        "current": np.array([0.0, 10.0], dtype=np.float32),
        "candidate": np.array([0.0, 5.0], dtype=np.float32),
    }
    tl = FrameTimeline.build(5, times)
    assert tl.sim_time_s.tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]
    series = np.array([0.0, 100.0], dtype=np.float32)
    assert tl.sample("current", series).tolist() == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert tl.sample("candidate", series).tolist() == [0.0, 50.0, 100.0, 100.0, 100.0]


def test_whatif_frames_validate_shapes_and_times() -> None:
    with pytest.raises(ConfigError, match=r"occupancy has shape \(2, 1\)"):
        WhatIfFrames.from_arrays("X", ["a", "b"], [0, 1], np.zeros((2, 1)))
    with pytest.raises(ConfigError, match="increasing"):
        WhatIfFrames.from_arrays("X", ["a"], [1, 0], np.zeros((2, 1)))
    side = WhatIfFrames.from_arrays("X", ["a"], [0, 1], np.zeros((2, 1)))
    assert np.isnan(side.mean_wait_s).all() and np.isnan(side.queue_veh).all()


def test_geometry_validation_names_the_edge() -> None:
    with pytest.raises(ConfigError, match="'e1'.*polyline"):
        SceneGeometry(edge_ids=("e1",), polylines={}).validated()
    with pytest.raises(ConfigError, match="'e1'.*2 \\(x, y\\) points"):
        SceneGeometry(edge_ids=("e1",), polylines={"e1": [(0.0, 0.0)]}).validated()
    geo = SceneGeometry(edge_ids=("e1",), polylines={"e1": [(0.0, 0.0), (10.0, 5.0)]})
    assert geo.validated().bounds == (0.0, 0.0, 10.0, 5.0)
