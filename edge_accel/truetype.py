"""A small TrueType reader and anti-aliased glyph rasteriser (numpy only).

The what-if video's text is set in a real font (DejaVu Sans by default) without
a font library: this module reads the ``cmap``, ``hmtx`` and ``glyf`` tables of
a ``.ttf`` file (quadratic outlines, simple and composite glyphs), flattens the
outlines and fills them with the non-zero winding rule on a 4x4 supersampled
grid. Glyphs are rasterised once per size into a glyph atlas
(:mod:`edge_accel.font`); nothing here runs per frame. No hinting: at video
sizes (9 px and up) unhinted anti-aliased text reads well.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from configs.errors import ConfigError

__all__ = ["DEFAULT_FONTS", "GlyphBitmap", "TrueTypeFont", "find_font"]

#: Where the default font is looked for, in order (Debian: ``fonts-dejavu-core``).
DEFAULT_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/usr/local/share/fonts/DejaVuSans.ttf"),
)

_SUPERSAMPLE = 4
_CURVE_STEPS = 6  # line segments per quadratic curve at the supersampled size

# glyf flags
_ON_CURVE, _X_SHORT, _Y_SHORT, _REPEAT, _X_SAME, _Y_SAME = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# composite glyph flags
_ARGS_ARE_WORDS, _ARGS_ARE_XY, _HAVE_SCALE = 0x0001, 0x0002, 0x0008
_MORE_COMPONENTS, _HAVE_XY_SCALE, _HAVE_2X2 = 0x0020, 0x0040, 0x0080


def find_font(path: Path | None = None, candidates: Sequence[Path] = DEFAULT_FONTS) -> Path:
    """Return ``path``, or the first of ``candidates`` present.

    Raises:
        ConfigError: The font file is missing (naming the Debian package to install).
    """
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"video font {path} does not exist; give a .ttf file")
        return Path(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "the what-if video needs the DejaVu Sans font and found none of "
        f"{', '.join(str(p) for p in candidates)}; install the Debian package "
        "fonts-dejavu-core (scripts/setup.sh does) or pass a .ttf file"
    )


@dataclass(frozen=True)
class GlyphBitmap:
    """One rasterised glyph.

    Attributes:
        coverage: ``uint8 [h, w]`` ink coverage (0..255), top row first.
        left_px: x of the bitmap's left column relative to the pen position.
        top_px: y of the bitmap's top row relative to the baseline (negative = above).
        advance_px: how far the pen moves after this glyph.
    """

    coverage: npt.NDArray[np.uint8]
    left_px: int
    top_px: int
    advance_px: float


class TrueTypeFont:
    """The tables of one TrueType font needed to lay out and rasterise text."""

    def __init__(self, path: Path) -> None:
        """Read ``path``.

        Raises:
            ConfigError: The file is not a TrueType font with outlines this reader
                understands (CFF/OpenType-PostScript fonts are not supported).
        """
        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
            self._read_tables()
        except OSError as e:
            raise ConfigError(f"video font {path}: cannot read: {e.strerror}") from e
        except (struct.error, KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"video font {path} is not a TrueType (glyf) font this renderer reads: {e}"
            ) from e

    # -- tables -------------------------------------------------------------------------

    def _u16(self, offset: int) -> int:
        return int(struct.unpack_from(">H", self._data, offset)[0])

    def _i16(self, offset: int) -> int:
        return int(struct.unpack_from(">h", self._data, offset)[0])

    def _u32(self, offset: int) -> int:
        return int(struct.unpack_from(">I", self._data, offset)[0])

    def _read_tables(self) -> None:
        count = self._u16(4)
        self._tables: dict[str, int] = {}
        for i in range(count):
            rec = 12 + 16 * i
            tag = self._data[rec : rec + 4].decode("latin-1")
            self._tables[tag] = self._u32(rec + 8)
        if "glyf" not in self._tables:
            raise ValueError("no glyf table (a CFF font?)")
        head = self._tables["head"]
        self.units_per_em = self._u16(head + 18)
        long_loca = self._i16(head + 50) == 1
        hhea = self._tables["hhea"]
        self.ascender = self._i16(hhea + 4)
        self.descender = self._i16(hhea + 6)
        self.line_gap = self._i16(hhea + 8)
        n_metrics = self._u16(hhea + 34)
        self.n_glyphs = self._u16(self._tables["maxp"] + 4)
        hmtx = self._tables["hmtx"]
        advances = [self._u16(hmtx + 4 * i) for i in range(n_metrics)]
        self._advance = advances + [advances[-1]] * (self.n_glyphs - n_metrics)
        loca = self._tables["loca"]
        if long_loca:
            self._loca = [self._u32(loca + 4 * i) for i in range(self.n_glyphs + 1)]
        else:
            self._loca = [2 * self._u16(loca + 2 * i) for i in range(self.n_glyphs + 1)]
        self._cmap = self._read_cmap()

    def _read_cmap(self) -> dict[int, int]:
        cmap = self._tables["cmap"]
        best: tuple[int, int] | None = None  # (rank, offset)
        for i in range(self._u16(cmap + 2)):
            rec = cmap + 4 + 8 * i
            platform, encoding, offset = self._u16(rec), self._u16(rec + 2), self._u32(rec + 4)
            fmt = self._u16(cmap + offset)
            rank = {(3, 10, 12): 0, (0, 4, 12): 1, (3, 1, 4): 2, (0, 3, 4): 3}.get(
                (platform, encoding, fmt), 9
            )
            if fmt in (4, 12) and (best is None or rank < best[0]):
                best = (rank, cmap + offset)
        if best is None:
            raise ValueError("no Unicode cmap subtable (format 4 or 12)")
        table = best[1]
        out: dict[int, int] = {}
        if self._u16(table) == 12:
            for g in range(self._u32(table + 12)):
                rec = table + 16 + 12 * g
                start, end, glyph = self._u32(rec), self._u32(rec + 4), self._u32(rec + 8)
                for code in range(start, min(end, 0x2FFFF) + 1):
                    out[code] = glyph + code - start
            return out
        segments = self._u16(table + 6) // 2
        ends = table + 14
        starts = ends + 2 * segments + 2
        deltas = starts + 2 * segments
        ranges = deltas + 2 * segments
        for i in range(segments):
            end, start = self._u16(ends + 2 * i), self._u16(starts + 2 * i)
            delta, range_offset = self._u16(deltas + 2 * i), self._u16(ranges + 2 * i)
            for code in range(start, end + 1):
                if code == 0xFFFF:
                    continue
                if range_offset == 0:
                    glyph = (code + delta) & 0xFFFF
                else:
                    glyph = self._u16(ranges + 2 * i + range_offset + 2 * (code - start))
                    glyph = (glyph + delta) & 0xFFFF if glyph else 0
                if glyph:
                    out[code] = glyph
        return out

    # -- glyphs -------------------------------------------------------------------------

    def glyph_index(self, char: str) -> int:
        """The glyph of ``char`` (0, the font's "missing" glyph, when it has none)."""
        return self._cmap.get(ord(char), 0)

    def has(self, char: str) -> bool:
        """Whether the font has a glyph for ``char``."""
        return ord(char) in self._cmap

    def advance(self, glyph: int) -> int:
        """Advance width of ``glyph`` in font units."""
        return self._advance[glyph]

    def contours(self, glyph: int, depth: int = 0) -> list[list[tuple[float, float, bool]]]:
        """The outline of ``glyph``: contours of ``(x, y, on_curve)`` points in font units."""
        start, end = self._loca[glyph], self._loca[glyph + 1]
        if end <= start or depth > 8:
            return []
        base = self._tables["glyf"] + start
        n_contours = self._i16(base)
        if n_contours >= 0:
            return self._simple(base, n_contours)
        out: list[list[tuple[float, float, bool]]] = []
        pos = base + 10
        while True:
            flags, component = self._u16(pos), self._u16(pos + 2)
            pos += 4
            if flags & _ARGS_ARE_WORDS:
                a, b = self._i16(pos), self._i16(pos + 2)
                pos += 4
            else:
                a, b = struct.unpack_from(">bb", self._data, pos)
                pos += 2
            dx, dy = (float(a), float(b)) if flags & _ARGS_ARE_XY else (0.0, 0.0)
            xx, xy, yx, yy = 1.0, 0.0, 0.0, 1.0
            if flags & _HAVE_SCALE:
                xx = yy = self._i16(pos) / 16384.0
                pos += 2
            elif flags & _HAVE_XY_SCALE:
                xx, yy = self._i16(pos) / 16384.0, self._i16(pos + 2) / 16384.0
                pos += 4
            elif flags & _HAVE_2X2:
                xx, xy = self._i16(pos) / 16384.0, self._i16(pos + 2) / 16384.0
                yx, yy = self._i16(pos + 4) / 16384.0, self._i16(pos + 6) / 16384.0
                pos += 8
            for contour in self.contours(component, depth + 1):
                out.append(
                    [(x * xx + y * yx + dx, x * xy + y * yy + dy, on) for x, y, on in contour]
                )
            if not flags & _MORE_COMPONENTS:
                return out

    def _simple(self, base: int, n_contours: int) -> list[list[tuple[float, float, bool]]]:
        ends = [self._u16(base + 10 + 2 * i) for i in range(n_contours)]
        n_points = ends[-1] + 1 if ends else 0
        pos = base + 10 + 2 * n_contours
        pos += 2 + self._u16(pos)  # skip the instructions
        flags: list[int] = []
        while len(flags) < n_points:
            flag = self._data[pos]
            pos += 1
            flags.append(flag)
            if flag & _REPEAT:
                flags.extend([flag] * self._data[pos])
                pos += 1
        flags = flags[:n_points]
        coords: list[list[int]] = []
        for short, same in ((_X_SHORT, _X_SAME), (_Y_SHORT, _Y_SAME)):
            value, axis = 0, []
            for flag in flags:
                if flag & short:
                    step = self._data[pos]
                    pos += 1
                    value += step if flag & same else -step
                elif not flag & same:
                    value += self._i16(pos)
                    pos += 2
                axis.append(value)
            coords.append(axis)
        out, first = [], 0
        for last in ends:
            out.append(
                [
                    (float(coords[0][i]), float(coords[1][i]), bool(flags[i] & _ON_CURVE))
                    for i in range(first, last + 1)
                ]
            )
            first = last + 1
        return out

    # -- rasterising --------------------------------------------------------------------

    def rasterise(self, char: str, size_px: float) -> GlyphBitmap:
        """Rasterise ``char`` at ``size_px`` pixels per em (anti-aliased, 4x4 supersampled)."""
        glyph = self.glyph_index(char)
        scale = size_px / self.units_per_em
        advance = self.advance(glyph) * scale
        segments = _flatten(self.contours(glyph), scale * _SUPERSAMPLE)
        if segments.shape[0] == 0:
            return GlyphBitmap(np.zeros((0, 0), dtype=np.uint8), 0, 0, advance)
        # glyph space is y up; the bitmap is y down
        xs = segments[:, [0, 2]]
        ys = -segments[:, [1, 3]]
        s = _SUPERSAMPLE
        left = int(np.floor(xs.min() / s))
        top = int(np.floor(ys.min() / s))
        right = int(np.ceil(xs.max() / s))
        bottom = int(np.ceil(ys.max() / s))
        width, height = max(1, right - left), max(1, bottom - top)
        x0 = segments[:, 0] - left * s
        x1 = segments[:, 2] - left * s
        y0 = -segments[:, 1] - top * s
        y1 = -segments[:, 3] - top * s
        ink = _fill_nonzero(x0, y0, x1, y1, width * s, height * s)
        coverage = ink.reshape(height, s, width, s).sum(axis=(1, 3)) * (255.0 / (s * s))
        return GlyphBitmap(np.round(coverage).astype(np.uint8), left, top, advance)


def _flatten(
    contours: list[list[tuple[float, float, bool]]], scale: float
) -> npt.NDArray[np.float64]:
    """Line segments ``[n, 4]`` (x0, y0, x1, y1) of the outline, scaled."""
    segs: list[tuple[float, float, float, float]] = []
    t = np.linspace(0.0, 1.0, _CURVE_STEPS + 1)[1:]
    for contour in contours:
        if len(contour) < 2:
            continue
        pts = [(x * scale, y * scale, on) for x, y, on in contour]
        # start on an on-curve point (or the midpoint of two off-curve ones)
        if not pts[0][2]:
            if pts[-1][2]:
                pts = [pts[-1], *pts[:-1]]
            else:
                pts = [((pts[0][0] + pts[-1][0]) / 2, (pts[0][1] + pts[-1][1]) / 2, True), *pts]
        start = (pts[0][0], pts[0][1])
        cur = start
        control: tuple[float, float] | None = None
        for x, y, on in [*pts[1:], (start[0], start[1], True)]:
            if on:
                if control is None:
                    segs.append((cur[0], cur[1], x, y))
                else:
                    segs.extend(_quad(cur, control, (x, y), t))
                    control = None
                cur = (x, y)
            elif control is None:
                control = (x, y)
            else:
                mid: tuple[float, float] = ((control[0] + x) / 2, (control[1] + y) / 2)
                segs.extend(_quad(cur, control, mid, t))
                cur, control = mid, (x, y)
    return np.asarray(segs, dtype=np.float64).reshape(-1, 4)


def _quad(
    p0: tuple[float, float],
    p1: tuple[float, float],
    p2: tuple[float, float],
    t: npt.NDArray[np.float64],
) -> list[tuple[float, float, float, float]]:
    xs = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t**2 * p2[0]
    ys = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t**2 * p2[1]
    px = np.concatenate(([p0[0]], xs))
    py = np.concatenate(([p0[1]], ys))
    return [(float(px[i]), float(py[i]), float(px[i + 1]), float(py[i + 1])) for i in range(len(t))]


def _fill_nonzero(
    x0: npt.NDArray[np.float64],
    y0: npt.NDArray[np.float64],
    x1: npt.NDArray[np.float64],
    y1: npt.NDArray[np.float64],
    width: int,
    height: int,
) -> npt.NDArray[np.float64]:
    """Fill the polygon edges with the non-zero rule, sampling at pixel centres."""
    rows = np.arange(height, dtype=np.float64) + 0.5
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    crosses = (rows[:, None] >= lo[None, :]) & (rows[:, None] < hi[None, :])  # [rows, edges]
    dy = np.where(y1 != y0, y1 - y0, 1.0)
    x_at = x0[None, :] + (rows[:, None] - y0[None, :]) * ((x1 - x0) / dy)[None, :]
    direction = np.where(y1 > y0, 1, -1)[None, :].repeat(height, axis=0)
    r, e = np.nonzero(crosses)
    # a crossing at x counts for every sample whose centre lies right of it
    col = np.clip(np.ceil(x_at[r, e] - 0.5), 0, width).astype(np.int64)
    winding = np.zeros((height, width + 1), dtype=np.int64)
    np.add.at(winding, (r, col), direction[r, e])
    ink: npt.NDArray[np.float64] = (np.cumsum(winding[:, :width], axis=1) != 0).astype(np.float64)
    return ink
