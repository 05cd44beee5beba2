"""Device choice, colormaps, YUV conversion, the TrueType font and its atlas (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from configs.errors import ConfigError
from edge_accel.color import colormap_lut, rgb_to_yuv, rgb_to_yuv420
from edge_accel.device import select_device
from edge_accel.font import GlyphAtlas
from edge_accel.truetype import TrueTypeFont, find_font

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


@pytest.mark.parametrize(
    ("name", "spread"), [("viridis", 120), ("cividis", 120), ("greys", 80), ("speed", 120)]
)
def test_colormap_lightness_increases(name: str, spread: int) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == torch.uint8
    luma = rgb_to_yuv(lut)[:, 0].to(torch.int32)
    # Perceptually ordered maps get brighter from low to high values, which is
    # what keeps them readable with colour-vision deficiencies and in greyscale.
    assert bool((luma[1:] >= luma[:-1] - 1).all())
    assert int(luma[-1]) - int(luma[0]) > spread


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


def test_the_font_is_a_real_truetype_face_with_proportional_advances() -> None:
    font = TrueTypeFont(find_font())
    assert font.units_per_em > 0 and font.has("A") and font.has("\u2212")
    # digits are tabular, letters proportional
    assert {font.advance(font.glyph_index(d)) for d in "0123456789"} == {
        font.advance(font.glyph_index("0"))
    }
    assert font.advance(font.glyph_index("i")) < font.advance(font.glyph_index("M"))
    # a composite glyph (e + acute) has the base letter's ink and more
    e, e_acute = font.rasterise("e", 20), font.rasterise("\u00e9", 20)
    assert e_acute.coverage.shape[0] > e.coverage.shape[0]
    assert int(e_acute.coverage.sum()) > int(e.coverage.sum())
    # anti-aliased: partial coverage at the edges, full inside
    o = font.rasterise("O", 24).coverage
    assert o.max() == 255 and ((o > 0) & (o < 255)).any()
    assert not font.rasterise(" ", 20).coverage.size


def test_a_missing_font_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find_font(tmp_path / "nope.ttf")
    (tmp_path / "bad.ttf").write_bytes(b"not a font")
    with pytest.raises(ConfigError, match="TrueType"):
        TrueTypeFont(tmp_path / "bad.ttf")
    with pytest.raises(ConfigError, match="install the Debian package fonts-dejavu-core"):
        find_font(candidates=(tmp_path / "DejaVuSans.ttf",))


def test_text_is_laid_out_proportionally_and_batches_match_single_renders() -> None:
    atlas = GlyphAtlas(16, CPU)
    assert atlas.width("iiii") < atlas.width("MMMM")
    mask = atlas.render("A1")
    assert mask.dtype == torch.uint8 and mask.shape[0] == atlas.line_h
    assert int(mask.max()) > 200
    # an unknown character is drawn as '?'
    assert torch.equal(atlas.render("\u4e00"), atlas.render("?"))
    codes = atlas.encode(["12:30", "NOX %"], 8)
    batch = atlas.render_codes(codes, 80)
    assert torch.equal(batch[0], atlas.render("12:30", 80))
    assert torch.equal(batch[1], atlas.render("NOX %", 80))
    # right alignment ends every string at the field's edge
    right = atlas.render_codes(atlas.encode(["1", "1234"], 6), 80, "right")
    for row in right:
        ink = (row > 0).any(dim=0).nonzero()
        assert 74 <= int(ink.max()) < 80


def test_long_text_is_cut_with_an_ellipsis_or_wrapped() -> None:
    atlas = GlyphAtlas(12, CPU)
    text = "the quick brown fox jumps over the lazy dog " * 3
    cut = atlas.fit(text, 100)
    assert cut.endswith("\u2026") and atlas.width(cut) <= 100
    lines = atlas.wrap(text, 120)
    assert len(lines) > 2 and all(atlas.width(x) <= 120 for x in lines)
    assert " ".join(lines).split() == text.split()


def test_nice_ceilings_and_signed_percentages() -> None:
    from edge_accel.chart import nice_ceiling
    from edge_accel.picture import signed_pct

    assert [nice_ceiling(v, 0.01) for v in (0.073, 0.12, 0.3, 0.0, float("nan"))] == [
        0.1, 0.2, 0.5, 0.01, 0.01,
    ]  # fmt: skip
    assert nice_ceiling(2.2, 0.5) == 2.5 and nice_ceiling(40, 1) == 50
    assert signed_pct(-0.1234) == "\u221212.3 %" and signed_pct(0.004, 2) == "+0.40 %"
    assert signed_pct(float("nan")) == "n/a"
