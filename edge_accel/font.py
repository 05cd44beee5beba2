"""Video text: a TrueType font (DejaVu Sans) rasterised once into a glyph atlas on the device.

Each :class:`GlyphAtlas` is one font at one pixel size: every glyph it can draw
is rasterised once (:mod:`edge_accel.truetype`, anti-aliased) into a tile of a
``uint8`` coverage tensor, with its advance width. Text is then laid out
proportionally (the font's advances; no kerning) and composed on the device:
one string for the static background, or a whole batch of strings for a text
field that changes every frame (the clock, the running values), with one
scatter per batch. Characters the atlas lacks are drawn as ``?``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from edge_accel.truetype import TrueTypeFont, find_font

__all__ = ["Align", "GlyphAtlas", "load_font"]

Align = Literal["left", "right"]

# Printable ASCII and the few symbols the video uses (minus sign, arrows, ...).
_CHARSET = "".join(chr(c) for c in range(32, 127)) + (
    "\u2212\u2013\u2014\u2026\u00b0\u00b1\u00d7\u00b7\u2264\u2265\u0394\u2192"
    "\u2018\u2019\u201c\u201d\u2009\u00a0\u25a0\u25cf"
)


@functools.lru_cache(maxsize=4)
def load_font(path: Path | None = None) -> TrueTypeFont:
    """The font at ``path`` (None: DejaVu Sans from the system), read once per process.

    Raises:
        ConfigError: No such font, or not a TrueType font.
    """
    return TrueTypeFont(find_font(path))


@functools.lru_cache(maxsize=32)
def _tiles(path: Path | None, size_px: int) -> tuple[np.ndarray, np.ndarray, int, int, str]:
    font = load_font(path)
    chars = "".join(c for c in _CHARSET if font.has(c) or c == " ")
    scale = size_px / font.units_per_em
    baseline = int(np.ceil(font.ascender * scale))
    line_h = baseline + int(np.ceil(-font.descender * scale)) + 1
    glyphs = [font.rasterise(c, size_px) for c in chars]
    pad = max([0] + [-g.left_px for g in glyphs])
    width = max(1, max(pad + g.left_px + g.coverage.shape[1] for g in glyphs))
    tiles = np.zeros((len(chars), line_h, width), dtype=np.uint8)
    for i, g in enumerate(glyphs):
        h, w = g.coverage.shape
        if not h or not w:
            continue
        y0, x0 = baseline + g.top_px, pad + g.left_px
        ys, ye = max(0, y0), min(line_h, y0 + h)
        if ye > ys:
            tiles[i, ys:ye, x0 : x0 + w] = g.coverage[ys - y0 : ye - y0]
    advances = np.array([g.advance_px for g in glyphs], dtype=np.float64)
    return tiles, advances, pad, baseline, chars


class GlyphAtlas:
    """One font at one pixel size, rasterised and held on a device.

    Attributes:
        size_px: Pixels per em.
        line_h: Height of a line of text (ascender to descender), pixels.
        baseline: Baseline's row within a line.
        tiles: ``uint8 [n_chars, line_h, tile_w]`` coverage of each glyph, placed
            ``pad`` pixels right of its pen position.
        advances: ``float64 [n_chars]`` advance widths, pixels.
    """

    def __init__(self, size_px: int, device: torch.device, font: Path | None = None) -> None:
        """Rasterise (or take from the per-process cache) every glyph at ``size_px``.

        Raises:
            ConfigError: The font is missing or unreadable.
        """
        self.size_px = max(6, int(size_px))
        tiles, advances, pad, baseline, chars = _tiles(font, self.size_px)
        self.tiles = torch.from_numpy(tiles).to(device)
        self.advances = advances
        self._advances_t = torch.from_numpy(advances).to(device)
        self.pad = pad
        self.baseline = baseline
        self.line_h = int(tiles.shape[1])
        self.tile_w = int(tiles.shape[2])
        self.device = device
        self._index = {c: i for i, c in enumerate(chars)}
        self._unknown = self._index.get("?", 0)
        self._space = self._index.get(" ", 0)
        self._rendered: dict[tuple[str, int, str], torch.Tensor] = {}

    def codes(self, text: str) -> list[int]:
        """Return the glyph index of each character (unknown ones map to ``?``)."""
        return [self._index.get(c, self._unknown) for c in text]

    def width(self, text: str) -> int:
        """Pixel width of ``text`` set in this font."""
        return int(round(float(sum(self.advances[i] for i in self.codes(text)))))

    def fit(self, text: str, width_px: int) -> str:
        """``text``, shortened with an ellipsis until it fits ``width_px``."""
        if self.width(text) <= width_px:
            return text
        while text and self.width(text + "\u2026") > width_px:
            text = text[:-1]
        return text.rstrip() + "\u2026" if text else ""

    def wrap(self, text: str, width_px: int) -> list[str]:
        """``text`` broken at spaces into lines no wider than ``width_px`` (long words cut)."""
        lines: list[str] = []
        line = ""
        for word in text.split(" "):
            trial = f"{line} {word}" if line else word
            if self.width(trial) <= width_px or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
        return [self.fit(x, width_px) for x in lines]

    def encode(self, lines: Sequence[str], n_chars: int | None = None) -> torch.Tensor:
        """Glyph codes ``[len(lines), n]`` (padded with spaces) on the device."""
        n = n_chars if n_chars is not None else max([1] + [len(s) for s in lines])
        rows = [self.codes(s[:n]) + [self._space] * (n - len(s[:n])) for s in lines]
        return torch.tensor(rows, dtype=torch.long).to(self.device)

    def render_codes(
        self, codes: torch.Tensor, width_px: int, align: Align = "left"
    ) -> torch.Tensor:
        """Compose a batch of strings into coverage masks.

        Args:
            codes: ``long [B, n]`` glyph indices (spaces pad the end).
            width_px: Width of the masks; glyphs beyond it are cut.
            align: ``"right"`` aligns each string's end (trailing spaces ignored).

        Returns:
            ``uint8 [B, line_h, width_px]`` coverage (0..255).
        """
        batch, n = codes.shape
        adv = self._advances_t[codes]  # [B, n]
        pen = torch.cumsum(adv, dim=1) - adv
        if align == "right":
            ink = codes != self._space
            last = torch.where(ink, torch.arange(n, device=codes.device), -1).amax(dim=1)
            end = torch.where(
                last >= 0,
                (pen + adv).gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1),
                torch.zeros_like(last, dtype=adv.dtype),
            )
            pen = pen + (width_px - end).unsqueeze(1)
        h, tw = self.line_h, self.tile_w
        padded_w = width_px + 2 * tw
        # tile origin per glyph, in the padded mask (glyphs wholly outside land in the pads)
        x0 = (torch.round(pen).long() - self.pad + tw).clamp(0, width_px + tw)
        dev = codes.device
        rows = (
            torch.arange(batch, device=dev).view(batch, 1, 1) * h
            + torch.arange(h, device=dev).view(1, h, 1)
        ) * padded_w  # noqa: E501
        base = (rows + torch.arange(tw, device=dev).view(1, 1, tw)).unsqueeze(1)  # [B, 1, h, tw]
        flat = base + x0.view(batch, n, 1, 1)
        out = torch.zeros(batch * h * padded_w, dtype=torch.uint8, device=dev)
        out.scatter_reduce_(0, flat.reshape(-1), self.tiles[codes].reshape(-1), reduce="amax")
        return out.view(batch, h, padded_w)[:, :, tw : tw + width_px]

    def render(self, text: str, width_px: int | None = None, align: Align = "left") -> torch.Tensor:
        """Render one string to ``uint8 [line_h, width]`` coverage (its own width by default).

        The last few hundred strings are kept: a daemon's videos repeat their labels.
        """
        width = self.width(text) + self.tile_w if width_px is None else width_px
        key = (text, width, align)
        cached = self._rendered.get(key)
        if cached is None:
            cached = self.render_codes(self.encode([text]), max(1, width), align)[0]
            if len(self._rendered) >= 512:
                self._rendered.pop(next(iter(self._rendered)))
            self._rendered[key] = cached
        return cached
