"""Rasterisation, the laid-out scene and per-frame drawing (CPU, no encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from configs.errors import ConfigError
from edge_accel.marks import SIGNAL_GREEN, SIGNAL_RED
from edge_accel.raster import WorldToPixel, rasterise_polylines
from edge_accel.render import FrameTimeline, WhatIfScene
from edge_accel.scene import SceneGeometry, WhatIfFrames, grid_geometry
from edge_accel.whatif_scene import DIFF, NO_DATA, ROAD, SIGNAL, TextField, VehicleBatch

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


def _scene(colormap: str = "greys") -> WhatIfScene:
    return WhatIfScene(grid_geometry(3, 3, 100.0), W, H, CPU, colormap=colormap)


def _y(frames: torch.Tensor) -> torch.Tensor:
    return frames[:, :H, :].reshape(frames.shape[0], -1)


def test_edges_take_the_lut_colour_of_their_value_on_all_three_panels() -> None:
    scene = _scene("viridis")
    e = scene.n_edges
    batch = scene.empty_batch(2)
    batch.road[0] = ROAD  # lowest occupancy
    batch.road[1] = ROAD + 255
    batch.road[1, 0] = NO_DATA
    batch.diff[:] = DIFF + 128
    frames = scene.draw(batch)
    assert frames.shape == (2, H * 3 // 2, W) and frames.dtype == torch.uint8
    # edge pixels that no signal head covers (heads are drawn over the roads)
    heads = torch.cat((scene.head_flat, scene.rim_flat))
    luma = (scene.pix_flat < W * H) & ~torch.isin(scene.pix_flat, heads)
    key, flat = scene.pix_key[luma], scene.pix_flat[luma]
    panel = key // 3 // e
    y = _y(frames)
    assert set(panel.tolist()) == {0, 1, 2}
    roads = panel < 2
    assert bool((y[0, flat[roads]] == scene.lut_yuv[ROAD, 0]).all())
    nodata = key // 3 == 0
    assert bool((y[1, flat[roads & ~nodata]] == scene.lut_yuv[ROAD + 255, 0]).all())
    assert bool((y[1, flat[nodata]] == scene.lut_yuv[NO_DATA, 0]).all())
    assert bool((y[:, flat[~roads]] == scene.lut_yuv[DIFF + 128, 0]).all())
    # pixels that are neither edges nor signal heads keep the background
    mask = torch.ones(W * H, dtype=torch.bool)
    mask[flat] = False
    mask[scene.head_flat[scene.head_flat < W * H]] = False
    mask[scene.rim_flat[scene.rim_flat < W * H]] = False
    assert torch.equal(y[0, mask], scene.background[: W * H][mask])


def test_a_neutral_road_colormap_leaves_the_maps_chroma_alone() -> None:
    grey, colour = _scene("greys"), _scene("viridis")
    assert grey.pix_flat.numel() < colour.pix_flat.numel()
    assert bool((grey.lut_yuv[: NO_DATA + 1, 1:] == 128).all())


def test_signal_heads_show_the_recorded_state() -> None:
    scene = _scene()
    assert scene.n_heads == len(scene.heads) > 0
    batch = scene.empty_batch(2)
    batch.heads[0] = SIGNAL_RED
    batch.heads[1] = SIGNAL_GREEN
    frames = scene.draw(batch).reshape(2, -1)
    luma = scene.head_flat < W * H
    flat = scene.head_flat[luma]
    assert bool((frames[0, flat] == scene.lut_yuv[SIGNAL + SIGNAL_RED, 0]).all())
    assert bool((frames[1, flat] == scene.lut_yuv[SIGNAL + SIGNAL_GREEN, 0]).all())
    assert bool((frames[:, scene.rim_flat] == scene.rim_value).all())


def _vehicles(scene: WhatIfScene, n: int, heading_deg: float, speed_index: int) -> VehicleBatch:
    # n vehicles on the middle of the map of panel 0, in frame 0
    m = scene.layout.maps[0]
    x = torch.full((n,), m.x + m.w / 2.0)
    y = torch.full((n,), m.y + m.h / 2.0)
    rad = torch.deg2rad(torch.full((n,), heading_deg))
    return VehicleBatch(
        x, y, torch.sin(rad), -torch.cos(rad), torch.full((n,), speed_index),
        torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
    )  # fmt: skip


def test_vehicles_are_oriented_marks_and_the_slowest_shows_where_they_overlap() -> None:
    scene = _scene()
    for heading, long_axis in ((90.0, 1), (0.0, 0)):  # east: wide; north: tall
        batch = scene.empty_batch(1)
        batch.vehicles = _vehicles(scene, 1, heading, 200)
        y = _y(scene.draw(batch))[0].reshape(H, W)
        drawn = (y == scene.speed_yuv[200, 0]).nonzero()
        extent = drawn.max(dim=0).values - drawn.min(dim=0).values + 1
        assert int(extent[long_axis]) > int(extent[1 - long_axis]) >= 2
    fast = _vehicles(scene, 1, 90.0, 250)
    slow = _vehicles(scene, 1, 90.0, 10)
    both = VehicleBatch(*(torch.cat((a, b)) for a, b in zip(
        vars(slow).values(), vars(fast).values(), strict=True)))  # fmt: skip
    reverse = VehicleBatch(*(torch.cat((b, a)) for a, b in zip(
        vars(slow).values(), vars(fast).values(), strict=True)))  # fmt: skip
    frames = []
    for vehicles in (both, reverse):
        batch = scene.empty_batch(1)
        batch.vehicles = vehicles
        frames.append(scene.draw(batch).clone())
    assert torch.equal(frames[0], frames[1])  # the order does not matter
    assert bool((_y(frames[0]) == scene.speed_yuv[10, 0]).any())
    assert not bool((_y(frames[0]) == scene.speed_yuv[250, 0]).any())


def test_a_reused_buffer_matches_a_fresh_draw() -> None:
    scene = _scene()
    field = TextField(scene.layout.clock, scene.fonts.title, "right")
    codes = field.atlas.encode(["simulated 00:00:01", "simulated 11:11:11"])
    buf = scene.new_buffer(1)
    first = scene.empty_batch(1)
    first.vehicles = _vehicles(scene, 3, 45.0, 100)
    first.text = {field: codes[1:]}
    scene.draw(first, buf)
    second = scene.empty_batch(1)
    second.road[:] = ROAD + 30
    second.text = {field: codes[:1]}
    reused = scene.draw(second, buf).clone()
    fresh = scene.draw(second)
    assert torch.equal(reused, fresh)  # no vehicle and no old text left behind
    second.text = {}
    assert not torch.equal(fresh, scene.draw(second))  # the clock text was stamped


def test_too_small_frames_are_rejected() -> None:
    with pytest.raises(ConfigError, match="even width"):
        WhatIfScene(grid_geometry(2, 2), 321, 200, CPU)
    with pytest.raises(ConfigError, match="greys"):
        WhatIfScene(grid_geometry(2, 2), 640, 360, CPU, colormap="jet")


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
