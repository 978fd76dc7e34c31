"""A picture of a fit, written as PNG with NumPy, zlib and struct only (no plotting library).

Layout, top to bottom: the loss per fitted pixel against the step (log scale, a vertical line
where each stage of the schedule starts, the lowest and highest loss written at the left); then
one column per strong spot, with the observed pixels, the starting model and the fitted model
around it in three rows (the square root of photons, each column scaled to its observed
maximum).
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from jaxdiff.io import atomic_output

# 3×5 glyphs, one string of five rows per character ('#' = ink).
_GLYPHS = {
    "0": "###|#.#|#.#|#.#|###",
    "1": ".#.|##.|.#.|.#.|###",
    "2": "###|..#|###|#..|###",
    "3": "###|..#|.##|..#|###",
    "4": "#.#|#.#|###|..#|..#",
    "5": "###|#..|###|..#|###",
    "6": "###|#..|###|#.#|###",
    "7": "###|..#|.#.|.#.|.#.",
    "8": "###|#.#|###|#.#|###",
    "9": "###|#.#|###|..#|###",
    ".": "...|...|...|...|.#.",
    "-": "...|...|###|...|...",
    "+": "...|.#.|###|.#.|...",
    " ": "...|...|...|...|...",
    "a": "...|##.|.##|#.#|###",
    "b": "#..|#..|###|#.#|###",
    "d": "..#|..#|###|#.#|###",
    "e": "...|###|###|#..|###",
    "f": ".##|#..|###|#..|#..",
    "g": "...|###|#.#|.##|##.",
    "i": ".#.|...|.#.|.#.|.#.",
    "l": "#..|#..|#..|#..|.##",
    "m": "...|###|###|#.#|#.#",
    "n": "...|##.|#.#|#.#|#.#",
    "o": "...|###|#.#|#.#|###",
    "p": "...|###|#.#|###|#..",
    "r": "...|###|#..|#..|#..",
    "s": "...|.##|##.|..#|##.",
    "t": ".#.|###|.#.|.#.|.##",
    "v": "...|#.#|#.#|#.#|.#.",
}
_INK = (20, 20, 20)
_CURVE = (200, 40, 40)
_STAGE = (60, 110, 220)
_GRID = (210, 210, 210)


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an (height, width, 3) uint8 image as an 8-bit RGB PNG, atomically."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    with atomic_output(path) as tmp:
        tmp.write_bytes(png)


def draw_text(canvas: np.ndarray, text: str, row: int, col: int, scale: int = 2) -> None:
    """Write ``text`` (characters of the built-in font) with its top-left corner at (row, col)."""
    for i, char in enumerate(text):
        glyph = _GLYPHS.get(char, _GLYPHS[" "])
        for r, line in enumerate(glyph.split("|")):
            for c, ink in enumerate(line):
                if ink != "#":
                    continue
                y, x = row + r * scale, col + (4 * i + c) * scale
                canvas[y : y + scale, x : x + scale] = _INK


def _line(canvas, y0, x0, y1, x1, color):
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    ys = np.clip(np.round(np.linspace(y0, y1, n)).astype(int), 0, canvas.shape[0] - 1)
    xs = np.clip(np.round(np.linspace(x0, x1, n)).astype(int), 0, canvas.shape[1] - 1)
    canvas[ys, xs] = color


def loss_panel(history: np.ndarray, stages: np.ndarray, width: int, height: int) -> np.ndarray:
    """The loss curve: log10(loss) against the step, stage starts as vertical lines."""
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 70, width - 10, 24, height - 20
    draw_text(panel, "loss", 4, 8)
    draw_text(panel, "step", height - 14, width // 2 - 16)
    for x in (left, right):
        _line(panel, top, x, bottom, x, _GRID)
    for y in (top, bottom):
        _line(panel, y, left, y, right, _GRID)
    values = np.asarray(history, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return panel
    lo, hi = float(values.min()), float(values.max())
    draw_text(panel, f"{hi:.4g}", top, 4)
    draw_text(panel, f"{lo:.4g}", bottom - 10, 4)
    span = max(np.log10(hi) - np.log10(lo), 1e-12)
    n = len(history)
    xs = left + (right - left) * np.arange(n) / max(n - 1, 1)
    ys = bottom - (bottom - top) * (np.log10(np.maximum(history, lo)) - np.log10(lo)) / span
    for k in range(1, n):
        if stages[k] != stages[k - 1]:
            _line(panel, top, xs[k], bottom, xs[k], _STAGE)
    for k in range(1, n):
        _line(panel, ys[k - 1], xs[k - 1], ys[k], xs[k], _CURVE)
    return panel


def _stacked_panels(observed, start, fitted, mask, half: int):
    """Panels one above the other, (panel · slow, fast), and a mask that keeps every spot
    window inside its own panel (no centre within ``half`` rows of a panel's top or bottom)."""
    panels, slow, fast = np.shape(observed)
    inside = np.zeros((panels, slow, fast), dtype=bool)
    inside[:, half : slow - half, :] = True
    if mask is not None:
        inside &= np.broadcast_to(np.asarray(mask) != 0, inside.shape)
    images = (np.reshape(np.asarray(a), (panels * slow, fast)) for a in (observed, start, fitted))
    return (*images, inside.reshape(panels * slow, fast))


def strongest_spots(image: np.ndarray, count: int, half: int, mask=None) -> list[tuple[int, int]]:
    """(slow, fast) of up to ``count`` brightest local maxima, at least 2·half+1 apart and
    ``half`` from the edges."""
    img = np.where(np.isfinite(image), image, -np.inf).astype(float)
    if mask is not None:
        img = np.where(mask, img, -np.inf)
    peak = np.full(img.shape, -np.inf)
    peak[1:-1, 1:-1] = img[1:-1, 1:-1]
    for ds in (-1, 0, 1):
        for df in (-1, 0, 1):
            if ds or df:
                shifted = np.roll(np.roll(img, ds, axis=0), df, axis=1)
                peak = np.where(img >= shifted, peak, -np.inf)
    order = np.argsort(peak, axis=None)[::-1]
    chosen: list[tuple[int, int]] = []
    for flat in order:
        s, f = np.unravel_index(flat, img.shape)
        if not np.isfinite(peak[s, f]) or len(chosen) == count:
            break
        if not (half <= s < img.shape[0] - half and half <= f < img.shape[1] - half):
            continue
        if all(max(abs(s - s2), abs(f - f2)) > 2 * half for s2, f2 in chosen):
            chosen.append((int(s), int(f)))
    return chosen


def fit_picture(
    history: np.ndarray,
    stages: np.ndarray,
    observed: np.ndarray,
    start: np.ndarray,
    fitted: np.ndarray,
    mask: np.ndarray | None = None,
    spots: int = 6,
    half: int = 7,
    zoom: int = 8,
) -> np.ndarray:
    """The RGB picture described in the module docstring, as an (height, width, 3) array.

    Images are (slow, fast), or (panel, slow, fast) for a multi-panel detector: its spots are
    taken from every panel, each window inside one panel."""
    if np.ndim(observed) == 3:
        observed, start, fitted, mask = _stacked_panels(observed, start, fitted, mask, half)
    side = (2 * half + 1) * zoom
    gap = 8
    label = 72
    centres = strongest_spots(observed, spots, half, mask)
    width = max(label + max(len(centres), 1) * (side + gap), 480)
    rows = [loss_panel(history, stages, width, 260)]
    grid = np.full((3 * (side + gap) + gap, width, 3), 255, dtype=np.uint8)
    for r, name in enumerate(("observed", "start", "fitted")):
        draw_text(grid, name, gap + r * (side + gap) + side // 2 - 5, 2)
    for c, (s, f) in enumerate(centres):
        window = (slice(s - half, s + half + 1), slice(f - half, f + half + 1))
        top = max(float(np.max(observed[window])), 1e-30)
        for r, image in enumerate((observed, start, fitted)):
            patch = np.sqrt(np.clip(np.asarray(image[window], dtype=float) / top, 0.0, 1.0))
            gray = (255 * (1.0 - patch)).astype(np.uint8)
            big = np.kron(gray, np.ones((zoom, zoom), dtype=np.uint8))
            y, x = gap + r * (side + gap), label + c * (side + gap)
            grid[y : y + side, x : x + side] = big[..., None]
    rows.append(grid)
    return np.concatenate(rows, axis=0)
