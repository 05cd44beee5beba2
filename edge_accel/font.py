"""A tiny built-in 5x7 bitmap font, pre-rendered once into a device tensor.

Video text (titles, the field clock, running means) is stamped from a glyph
atlas on the device instead of being drawn by a font library, so rendering
needs neither matplotlib nor PIL and no per-frame host round trip. The font is
fixed-width, which lets a batch of frames write a whole text field with one
tensor assignment (see :mod:`edge_accel.render`). Lower-case letters are drawn
as capitals; characters outside the set are drawn as ``?``.
"""

from __future__ import annotations

import torch

__all__ = ["GLYPH_COLS", "GLYPH_ROWS", "GlyphAtlas"]

GLYPH_COLS = 5
GLYPH_ROWS = 7

# Each glyph: seven rows of five bits, most significant (leftmost) pixel first.
_GLYPHS: dict[str, str] = {
    " ": "00000 00000 00000 00000 00000 00000 00000",
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    ";": "00000 01100 01100 00000 01100 00100 01000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "%": "11000 11001 00010 00100 01000 10011 00011",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "[": "01110 01000 01000 01000 01000 01000 01110",
    "]": "01110 00010 00010 00010 00010 00010 01110",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "|": "00100 00100 00100 00100 00100 00100 00100",
    "<": "00010 00100 01000 10000 01000 00100 00010",
    ">": "01000 00100 00010 00001 00010 00100 01000",
    "'": "01100 00100 01000 00000 00000 00000 00000",
    "!": "00100 00100 00100 00100 00100 00000 00100",
    "?": "01110 10001 00001 00010 00100 00000 00100",
    "#": "01010 01010 11111 01010 11111 01010 01010",
    "*": "00000 00100 10101 01110 10101 00100 00000",
}

_CHARS = "".join(_GLYPHS)
_INDEX = {c: i for i, c in enumerate(_CHARS)}
_UNKNOWN = _INDEX["?"]


def _bitmap() -> torch.Tensor:
    rows = [[[bit == "1" for bit in row] for row in _GLYPHS[c].split()] for c in _CHARS]
    return torch.tensor(rows, dtype=torch.bool)  # [n, 7, 5]


class GlyphAtlas:
    """The font scaled to whole pixels and held on a device.

    A character cell is ``(GLYPH_COLS + 1) * scale`` wide and
    ``(GLYPH_ROWS + 2) * scale`` tall: one column and two rows of spacing.

    Attributes:
        scale: Pixels per font pixel.
        cell_w: Cell width in pixels.
        cell_h: Cell height in pixels.
        cells: ``bool`` tensor ``[n_chars, cell_h, cell_w]``, True where ink is.
    """

    def __init__(self, scale: int, device: torch.device) -> None:
        """Pre-render every glyph at ``scale`` on ``device``."""
        self.scale = max(1, int(scale))
        s = self.scale
        cells = torch.zeros(len(_CHARS), GLYPH_ROWS + 2, GLYPH_COLS + 1, dtype=torch.bool)
        cells[:, 1 : GLYPH_ROWS + 1, 0:GLYPH_COLS] = _bitmap()
        cells = cells.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
        self.cells = cells.to(device)
        self.cell_w = (GLYPH_COLS + 1) * s
        self.cell_h = (GLYPH_ROWS + 2) * s

    @staticmethod
    def codes(text: str) -> list[int]:
        """Return the glyph index of each character (unknown ones map to ``?``)."""
        return [_INDEX.get(c, _INDEX.get(c.upper(), _UNKNOWN)) for c in text]

    def width(self, n_chars: int) -> int:
        """Return the pixel width of ``n_chars`` characters."""
        return n_chars * self.cell_w

    def render_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Render a batch of fixed-length strings given as glyph indices.

        Args:
            codes: ``long`` tensor ``[B, n]`` of glyph indices on the atlas' device.

        Returns:
            ``bool`` tensor ``[B, cell_h, n * cell_w]``, True where ink is.
        """
        batch, n = codes.shape
        ink = self.cells[codes]  # [B, n, h, w]
        return ink.permute(0, 2, 1, 3).reshape(batch, self.cell_h, n * self.cell_w)

    def render(self, text: str) -> torch.Tensor:
        """Render one string to a ``bool`` mask ``[cell_h, len(text) * cell_w]``."""
        codes = torch.tensor([self.codes(text)], dtype=torch.long, device=self.cells.device)
        return self.render_codes(codes)[0]
