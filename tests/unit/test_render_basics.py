"""Device choice, colormaps, YUV conversion and the bitmap font (pure logic, CPU)."""

from __future__ import annotations

import pytest
import torch

from configs.errors import ConfigError
from edge_accel.color import colormap_lut, rgb_to_yuv, rgb_to_yuv420
from edge_accel.device import select_device
from edge_accel.font import GlyphAtlas

CPU = torch.device("cpu")


def test_auto_picks_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("CPU").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_missing_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[edge\] device = 'cuda'.*no CUDA"):
        select_device("cuda")


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="'auto', 'cpu', 'cuda'"):
        select_device("tpu")


@pytest.mark.parametrize("name", ["viridis", "cividis"])
def test_colormap_lightness_increases(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == torch.uint8
    luma = rgb_to_yuv(lut)[:, 0].to(torch.int32)
    # Perceptually ordered maps get brighter from low to high values, which is
    # what keeps them readable with colour-vision deficiencies and in greyscale.
    assert bool((luma[1:] >= luma[:-1] - 1).all())
    assert int(luma[-1]) - int(luma[0]) > 120


def test_viridis_endpoints_match_matplotlib() -> None:
    lut = colormap_lut("viridis")
    assert lut[0].tolist() == [0x44, 0x01, 0x54]
    assert lut[-1].tolist() == [0xFD, 0xE7, 0x25]


def test_unknown_colormap_is_rejected() -> None:
    with pytest.raises(ConfigError, match="jet"):
        colormap_lut("jet")


def test_rgb_to_yuv_limited_range_bt709() -> None:
    rgb = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0]], dtype=torch.uint8)
    yuv = rgb_to_yuv(rgb).tolist()
    assert yuv[0] == [16, 128, 128]
    assert yuv[1] == [235, 128, 128]
    assert yuv[2] == [63, 102, 240]  # BT.709 red


def test_rgb_to_yuv420_layout_and_subsampling() -> None:
    frames = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    frames[1] = 255
    frames[0, 0:2, 0:2] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    packed = rgb_to_yuv420(frames)
    assert packed.shape == (2, 6, 6)
    flat = packed.reshape(2, -1)
    assert bool((flat[1, :24] == 235).all()) and bool((flat[1, 24:] == 128).all())
    u0, v0 = int(flat[0, 24]), int(flat[0, 24 + 6])  # first chroma sample of each plane
    assert (u0, v0) == (102, 240)
    assert int(flat[0, 25]) == 128  # neighbouring chroma block is black


def test_rgb_to_yuv420_rejects_odd_sizes() -> None:
    with pytest.raises(ConfigError, match="even"):
        rgb_to_yuv420(torch.zeros(3, 4, 3, dtype=torch.uint8))


def test_font_renders_fixed_width_cells() -> None:
    atlas = GlyphAtlas(2, CPU)
    mask = atlas.render("A1")
    assert mask.shape == (atlas.cell_h, 2 * atlas.cell_w) == (18, 24)
    assert bool(mask.any())
    # A lower-case letter is drawn as its capital; an unknown character as '?'.
    assert torch.equal(atlas.render("a"), atlas.render("A"))
    assert torch.equal(atlas.render("\u00e9"), atlas.render("?"))
    assert not bool(atlas.render(" ").any())


def test_font_batch_matches_single_render() -> None:
    atlas = GlyphAtlas(1, CPU)
    codes = torch.tensor([atlas.codes("12:30"), atlas.codes("NOX %")])
    batch = atlas.render_codes(codes)
    assert torch.equal(batch[0], atlas.render("12:30"))
    assert torch.equal(batch[1], atlas.render("NOX %"))
