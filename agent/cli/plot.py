"""A small PNG line-plot renderer in NumPy + zlib, for `edge-agent capture --out FILE.png`.

No plotting library is needed on the device (matplotlib is not a dependency): a canvas is an RGB uint8 array,
traces are drawn column by column (min/max per pixel column, so a million samples draw as fast as a thousand),
text uses a built-in 5x7 bitmap font, and `write_png` writes a standard 8-bit RGB PNG (filter 0, zlib).

`Panel` holds the mapping between data and pixels, so callers (and tests) can find where a frequency was drawn.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (200, 200, 200)
TRACE = (31, 119, 180)
MARKERS = {"bpfo": (214, 39, 40), "bpfi": (44, 160, 44), "bsf": (148, 103, 189), "ftf": (255, 127, 14),
           "1x": (127, 127, 127)}

# 5x7 bitmap font: each glyph is 7 rows of 5 bits ("#" on). Lower case is drawn as upper case.
_FONT_ROWS = {
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.", "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.", "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.", "9": ".###.#...##...#.####....#...#..##..",
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.", "D": "###..#..#.#...##...##...##..#.###..",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####", "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "J": "..###...#....#....#....#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##...##...##...##...#", "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.", "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".####.....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#..#.#..", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..", "Z": "#####....#...#...#...#...#....#####",
    " ": "...................................", ".": "..........................##...##..",
    "-": "...............#####...............", ":": ".....##....##.........##....##.....",
    "/": ".........#...#...#...#...#.........", "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...", "%": "##...##..#...#...#...#...#..##...##",
    "=": "..........#####.....#####..........", ",": "....................##....#...#....",
    "_": "..............................#####", "+": ".......#....#..#####..#....#.......",
    "[": ".###..#....#....#....#....#....###.", "]": ".###....#....#....#....#....#..###.",
    "*": ".......#..#.#.#.###.#.#.#..#.......", ";": "......##...##.......##....#...#....",
    "'": "..#....#...#.......................", "<": "...#...#...#...#.....#.....#.....#.",
    ">": ".#.....#.....#.....#...#...#...#...",
}
_GLYPHS = {k: np.array([[c == "#" for c in v[r * 5:(r + 1) * 5]] for r in range(7)], dtype=bool)
           for k, v in _FONT_ROWS.items() if len(v) == 35}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        """Filled rectangle, inclusive corners, clipped."""
        xa, xb = sorted((int(x0), int(x1)))
        ya, yb = sorted((int(y0), int(y1)))
        xa, ya = max(xa, 0), max(ya, 0)
        xb, yb = min(xb, self.width - 1), min(yb, self.height - 1)
        if xa <= xb and ya <= yb:
            self.pixels[ya:yb + 1, xa:xb + 1] = color

    def box(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        self.rect(x0, y0, x1, y0, color)
        self.rect(x0, y1, x1, y1, color)
        self.rect(x0, y0, x0, y1, color)
        self.rect(x1, y0, x1, y1, color)

    def vline_dashed(self, x: int, y0: int, y1: int, color: tuple[int, int, int], dash: int = 4) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            if (y // dash) % 2 == 0:
                self.rect(x, y, x, y, color)

    def text(self, x: int, y: int, s: str, color: tuple[int, int, int] = BLACK, scale: int = 1) -> int:
        """Draw text with its top-left corner at (x, y); returns the x after the last character."""
        for ch in s:
            g = _GLYPHS.get(ch.upper(), _GLYPHS["*"] if ch.strip() else _GLYPHS[" "])
            ys, xs = np.nonzero(g)
            for dy in range(scale):
                for dx in range(scale):
                    yy, xx = y + ys * scale + dy, x + xs * scale + dx
                    ok = (yy >= 0) & (yy < self.height) & (xx >= 0) & (xx < self.width)
                    self.pixels[yy[ok], xx[ok]] = color
            x += 6 * scale
        return x

    def columns(self, x0: int, lo: np.ndarray, hi: np.ndarray, color: tuple[int, int, int]) -> None:
        """One vertical run per column from row lo[i] to hi[i] (already in pixels, clipped by the caller)."""
        prev_lo = prev_hi = None
        for i in range(len(lo)):
            a, b = int(lo[i]), int(hi[i])
            if prev_lo is not None:  # join to the previous column so the trace has no holes
                a, b = min(a, prev_hi), max(b, prev_lo)  # type: ignore[type-var]
            self.rect(x0 + i, a, x0 + i, b, color)
            prev_lo, prev_hi = int(lo[i]), int(hi[i])


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if 1000 <= a < 1e6:
        return f"{v:.0f}"
    if a >= 1e6 or a < 0.01:
        return f"{v:.2e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.3g}"


@dataclass
class Panel:
    """A plot area inside a canvas: data range [x_min, x_max] × [y_min, y_max] mapped to pixels."""

    canvas: Canvas
    left: int
    top: int
    width: int
    height: int
    x_min: float = 0.0
    x_max: float = 1.0
    y_min: float = 0.0
    y_max: float = 1.0

    def px(self, x: float) -> int:
        return self.left + int(round((x - self.x_min) / (self.x_max - self.x_min) * (self.width - 1)))

    def x_of(self, px: int) -> float:
        return self.x_min + (px - self.left) / (self.width - 1) * (self.x_max - self.x_min)

    def py(self, y: np.ndarray | float) -> np.ndarray:
        frac = (np.asarray(y, dtype=float) - self.y_min) / (self.y_max - self.y_min)
        return np.clip(self.top + (self.height - 1) - np.round(frac * (self.height - 1)), self.top,
                       self.top + self.height - 1).astype(int)

    def frame(self, title: str, x_label: str, y_label: str) -> None:
        c = self.canvas
        c.box(self.left - 1, self.top - 1, self.left + self.width, self.top + self.height, BLACK)
        c.text(self.left, self.top - 22, title, BLACK, scale=2)
        c.text(self.left, self.top + self.height + 4, _fmt(self.x_min))
        right = _fmt(self.x_max)
        c.text(self.left + self.width - 6 * len(right), self.top + self.height + 4, right)
        c.text(self.left + self.width // 2 - 3 * len(x_label), self.top + self.height + 4, x_label)
        c.text(4, self.top, _fmt(self.y_max))
        c.text(4, self.top + self.height - 8, _fmt(self.y_min))
        c.text(4, self.top + self.height // 2 - 4, y_label[:10])
        if self.y_min < 0 < self.y_max:
            c.rect(self.left, int(self.py(0.0)), self.left + self.width - 1, int(self.py(0.0)), GREY)

    def trace(self, x: np.ndarray, y: np.ndarray, color: tuple[int, int, int] = TRACE) -> None:
        """Draw y(x) with min/max per pixel column (x increasing)."""
        if len(x) == 0:
            return
        cols = np.clip(((x - self.x_min) / (self.x_max - self.x_min) * (self.width - 1)).round().astype(int), 0,
                       self.width - 1)
        lo = np.full(self.width, np.inf)
        hi = np.full(self.width, -np.inf)
        np.minimum.at(lo, cols, y)
        np.maximum.at(hi, cols, y)
        have = np.isfinite(lo)
        if not have.any():
            return
        idx = np.arange(self.width)
        lo = np.interp(idx, idx[have], lo[have])  # columns without a sample: join their neighbours
        hi = np.interp(idx, idx[have], hi[have])
        first, last = idx[have][0], idx[have][-1]
        self.canvas.columns(self.left + first, self.py(hi[first:last + 1]), self.py(lo[first:last + 1]), color)

    def marker(self, x: float, label: str, color: tuple[int, int, int], row: int = 0) -> int | None:
        if not self.x_min <= x <= self.x_max:
            return None
        p = self.px(x)
        self.canvas.vline_dashed(p, self.top, self.top + self.height - 1, color)
        self.canvas.text(min(p + 3, self.left + self.width - 6 * len(label)), self.top + 3 + 10 * row, label, color)
        return p


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write an RGB uint8 array (height, width, 3) as an 8-bit RGB PNG."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (h, w, 3), got {pixels.dtype} {pixels.shape}")
    h, w, _ = pixels.shape
    raw = np.zeros((h, w * 3 + 1), dtype=np.uint8)  # each row: filter type 0, then the pixels
    raw[:, 1:] = pixels.reshape(h, w * 3)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
