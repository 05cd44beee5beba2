"""Colour: colour-blind-safe colormap LUTs, the video's palette, RGB -> YUV 4:2:0 on the device.

The colormaps are computed in code from anchor colours, interpolated linearly
to a 256-entry LUT, so no plotting library is needed at run time:

* ``greys`` (road occupancy, the default), ``viridis`` and ``cividis``
  (matplotlib's, perceptually uniform): the roads' colour, selectable;
* ``speed``: vehicles, the upper two thirds of matplotlib's *plasma* (stopped
  = magenta, free flow = yellow), lightness increasing with speed, bright on
  the dark map;
* ``blue-orange``: the difference view, diverging through a dark grey (no
  change); blue = better under the candidate, orange = worse. Blue and orange
  stay apart with the common colour-vision deficiencies.

Signal heads use the conventional red, amber and a bluish green (as signal
lenses do, for red-green colour-blind drivers).

YUV uses ITU-R BT.709 coefficients with limited ("tv") range, which is what the
encoder declares in the H.264 stream (see :mod:`edge_accel.encode`).
"""

from __future__ import annotations

from typing import Literal

import torch

from configs.errors import ConfigError

__all__ = [
    "ColormapName",
    "Palette",
    "colormap_lut",
    "hex_rgb",
    "rgb_to_yuv",
    "rgb_to_yuv420",
]

ColormapName = Literal["greys", "viridis", "cividis"]
"""The colormaps a user may choose for the roads' occupancy."""

# Ten evenly spaced samples (0, 1/9, ..., 1) of each matplotlib colormap.
_ANCHORS: dict[str, tuple[str, ...]] = {
    "viridis": (
        "440154", "482878", "3e4989", "31688e", "26828e",
        "1f9e89", "35b779", "6ece58", "b5de2b", "fde725",
    ),
    "cividis": (
        "00224e", "123570", "3b496c", "575d6d", "707173",
        "8a8779", "a69d75", "c4b56c", "e4cf5b", "fee838",
    ),
    "greys": ("343434", "9c9c9c"),
    "speed": ("a01b9a", "b12a90", "cc4778", "e16462", "f2844b", "fca636", "fcce25", "f0f921"),
    "blue-orange": (
        "9ad8ff", "56b4e9", "2f7fbf", "1f4f75", "383838",
        "7d4a1c", "b9661a", "e69f00", "ffd47e",
    ),
}  # fmt: skip


def hex_rgb(value: str) -> tuple[int, int, int]:
    """``"rrggbb"`` -> ``(r, g, b)``."""
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


class Palette:
    """The video's fixed colours (RGB), in one place."""

    BACKGROUND = hex_rgb("121212")
    MAP = hex_rgb("1a1a1a")
    PANEL_EDGE = hex_rgb("3a3a3a")
    TEXT = hex_rgb("ececec")
    TEXT_DIM = hex_rgb("a0a0a0")
    NO_DATA = hex_rgb("2c2c2c")  # neutral, like the greys: the maps' chroma stays put
    JUNCTION = hex_rgb("5a5a5a")
    CURRENT = hex_rgb("cfcfcf")
    CANDIDATE = hex_rgb("56b4e9")
    SIGNAL_RED = hex_rgb("ff3b30")
    SIGNAL_AMBER = hex_rgb("ffb000")
    SIGNAL_GREEN = hex_rgb("14e09a")
    SIGNAL_OFF = hex_rgb("6e6e6e")
    OUTLINE = hex_rgb("000000")
    PASS = hex_rgb("14e09a")
    FAIL = hex_rgb("ff6b5e")


def colormap_lut(
    name: str = "viridis", size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """Return a colormap as a ``uint8`` LUT ``[size, 3]`` (RGB), low values first.

    Raises:
        ConfigError: ``name`` is not a known colormap or ``size`` < 2.
    """
    if name not in _ANCHORS:
        raise ConfigError(f"colormap {name!r} is unknown; use one of {sorted(_ANCHORS)}")
    if size < 2:
        raise ConfigError(f"colormap size must be >= 2, got {size}")
    anchors = torch.tensor([hex_rgb(h) for h in _ANCHORS[name]], dtype=torch.float64)
    pos = torch.linspace(0.0, anchors.shape[0] - 1.0, size, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=anchors.shape[0] - 2)
    frac = (pos - lo).unsqueeze(1)
    lut = anchors[lo] * (1.0 - frac) + anchors[lo + 1] * frac
    return lut.round().clamp(0, 255).to(torch.uint8).to(device or torch.device("cpu"))


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    """Convert ``[..., 3]`` RGB ``uint8`` to full-resolution BT.709 limited-range YUV.

    Returns:
        ``uint8`` tensor ``[..., 3]`` with Y in [16, 235] and U, V in [16, 240].
    """
    x = rgb.to(torch.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    u = (b - y) / 1.8556
    v = (r - y) / 1.5748
    out = torch.stack((16.0 + 219.0 * y, 128.0 + 224.0 * u, 128.0 + 224.0 * v), dim=-1)
    return out.round().clamp(0, 255).to(torch.uint8)


def rgb_to_yuv420(rgb: torch.Tensor) -> torch.Tensor:
    """Convert RGB frames to packed planar YUV 4:2:0, as the encoder takes them.

    Args:
        rgb: ``uint8`` tensor ``[B, H, W, 3]`` (or ``[H, W, 3]``), H and W even.

    Returns:
        ``uint8`` tensor ``[B, H * 3 // 2, W]`` (or ``[H * 3 // 2, W]``): the Y
        plane, then U and V (each ``H/2 x W/2``, 2x2-averaged) laid out row
        after row -- the layout of ``av.VideoFrame.from_ndarray(..., "yuv420p")``.

    Raises:
        ConfigError: The frame size is odd.
    """
    single = rgb.dim() == 3
    frames = rgb.unsqueeze(0) if single else rgb
    batch, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ConfigError(f"YUV 4:2:0 needs an even frame size, got {width}x{height}")
    yuv = rgb_to_yuv(frames)
    y = yuv[..., 0].reshape(batch, height * width)
    chroma = yuv[..., 1:].to(torch.int16).reshape(batch, height // 2, 2, width // 2, 2, 2)
    chroma = ((chroma.sum(dim=(2, 4)) + 2) // 4).to(torch.uint8)  # [B, H/2, W/2, 2]
    u = chroma[..., 0].reshape(batch, -1)
    v = chroma[..., 1].reshape(batch, -1)
    packed = torch.cat((y, u, v), dim=1).reshape(batch, height * 3 // 2, width)
    return packed[0] if single else packed
