"""Structure-factor tables: ``-hkl`` text files and nanoBragg's binary ``Fdump.bin`` cache."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io._text import parse_number, read_bytes, read_lines
from jaxdiff.io.atomic import atomic_output

_INDEX_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class HKLGrid:
    """Structure-factor amplitudes on a dense Miller-index grid, laid out as nanoBragg's ``Fhkl``.

    ``F[h - h_min, k - k_min, l - l_min]`` is the amplitude |F| (electrons) of reflection
    (h, k, l). As in C, each axis has one extra trailing plane (shape ``range + 1``) that
    is 0.0: a ``-default_F`` fill covers only indices below the range. ``count`` is the number
    of reflections read (C's ``hkls``); for an ``Fdump.bin`` it is the product of the ranges.
    """

    F: np.ndarray
    h_min: int
    h_max: int
    k_min: int
    k_max: int
    l_min: int
    l_max: int
    count: int

    def __post_init__(self) -> None:
        if self.h_range < 1 or self.k_range < 1 or self.l_range < 1:
            raise ValueError(
                f"empty index range h {self.h_min}..{self.h_max}, k {self.k_min}..{self.k_max}, "
                f"l {self.l_min}..{self.l_max}"
            )
        expected = (self.h_range + 1, self.k_range + 1, self.l_range + 1)
        if self.F.shape != expected:
            raise ValueError(f"F has shape {self.F.shape}, expected {expected}")

    @property
    def h_range(self) -> int:
        """Number of distinct h values, ``h_max - h_min + 1``."""
        return self.h_max - self.h_min + 1

    @property
    def k_range(self) -> int:
        """Number of distinct k values, ``k_max - k_min + 1``."""
        return self.k_max - self.k_min + 1

    @property
    def l_range(self) -> int:
        """Number of distinct l values, ``l_max - l_min + 1``."""
        return self.l_max - self.l_min + 1


def read_hkl(path: str | os.PathLike[str], default_F: float = 0.0) -> HKLGrid:
    """Read a text file of reflections ``h k l F`` into an :class:`HKLGrid`.

    Each non-blank line holds at least four numbers: integer Miller indices h, k, l and the
    amplitude F (electrons). Further columns (sigma, phase, ...) are ignored, but must be
    numbers. Lines whose first non-blank character is ``#`` are comments. Grid points with no
    reflection get ``default_F`` (electrons), except the trailing padding planes, which stay
    0.0 as in nanoBragg. A reflection listed twice takes the later value.

    nanoBragg itself stops at the first token that is not a number, so it reads no reflections
    from a file with a ``#`` header; here such files load.

    Raises:
        InputError: missing file, a line with fewer than four numbers or a non-numeric token,
            a non-integer index, a number too large for a double, or no reflections at all.
            The message names the file and the line.
    """
    hkl: list[tuple[int, int, int]] = []
    amplitudes: list[float] = []
    for number, line in enumerate(read_lines(path, "HKL file"), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path} line {number}"
        tokens = text.split()
        if len(tokens) < 4:
            raise InputError(f"{where}: expected 4 numbers 'h k l F', got '{text}'")
        values = []
        for token in tokens:
            value = parse_number(token)
            if value is None:
                raise InputError(
                    f"{where}: '{token}' is not a number (expected 'h k l F', got '{text}')"
                )
            values.append(value)
        if not all(np.isfinite(values)):
            raise InputError(f"{where}: numbers out of range in '{text}'")
        indices = []
        for name, token, value in zip("hkl", tokens, values, strict=False):
            nearest = round(value)
            if abs(value - nearest) > _INDEX_TOLERANCE:
                raise InputError(f"{where}: Miller index {name} = {token} is not an integer")
            indices.append(int(nearest))
        hkl.append((indices[0], indices[1], indices[2]))
        amplitudes.append(values[3])
    if not hkl:
        raise InputError(f"{path}: no reflections found (expected lines 'h k l F')")

    index = np.array(hkl, dtype=np.int64)
    lo = index.min(axis=0)
    hi = index.max(axis=0)
    ranges = hi - lo + 1
    F = np.zeros(tuple(int(r) + 1 for r in ranges), dtype=np.float64)
    if default_F != 0.0:
        F[: ranges[0], : ranges[1], : ranges[2]] = default_F
    flat = np.ravel_multi_index(tuple((index - lo).T), F.shape)
    # Keep each grid point's last occurrence: later lines overwrite earlier ones, as in C.
    unique, first_from_end = np.unique(flat[::-1], return_index=True)
    last = len(flat) - 1 - first_from_end
    F.flat[unique] = np.asarray(amplitudes, dtype=np.float64)[last]
    return HKLGrid(
        F=F,
        h_min=int(lo[0]),
        h_max=int(hi[0]),
        k_min=int(lo[1]),
        k_max=int(hi[1]),
        l_min=int(lo[2]),
        l_max=int(hi[2]),
        count=len(hkl),
    )


def write_fdump(path: str | os.PathLike[str], grid: HKLGrid) -> None:
    """Write ``grid`` in nanoBragg's ``Fdump.bin`` format (atomically).

    The format is a text line ``h_min h_max k_min k_max l_min l_max``, a newline and a form
    feed, then the padded array as little-endian float64 in [h][k][l] order.
    """
    header = (
        f"{grid.h_min} {grid.h_max} {grid.k_min} {grid.k_max} {grid.l_min} {grid.l_max}\n\f"
    ).encode("ascii")
    data = np.ascontiguousarray(grid.F, dtype="<f8").tobytes()
    with atomic_output(path) as tmp:
        tmp.write_bytes(header + data)


def read_fdump(path: str | os.PathLike[str]) -> HKLGrid:
    """Read a structure-factor cache written by nanoBragg (or :func:`write_fdump`).

    Raises:
        InputError: missing file, a malformed header, an empty index range, or a data block
            whose size does not match the header.
    """
    raw = read_bytes(path, "Fdump file")
    end = raw.find(b"\n\f", 0, 512)
    if end < 0:
        raise InputError(f"{path}: not an Fdump file (no header line ending in newline, form feed)")
    fields = raw[:end].decode("ascii", errors="replace").split()
    bounds = [parse_number(field) for field in fields]
    if len(bounds) != 6 or any(b is None or b != int(b) for b in bounds):
        raise InputError(
            f"{path} line 1: expected 6 integers 'h_min h_max k_min k_max l_min l_max', "
            f"got '{raw[:end].decode('ascii', errors='replace')}'"
        )
    h_min, h_max, k_min, k_max, l_min, l_max = (int(b) for b in bounds)
    ranges = (h_max - h_min + 1, k_max - k_min + 1, l_max - l_min + 1)
    if min(ranges) < 1:
        raise InputError(f"{path} line 1: empty index range in header")
    shape = tuple(r + 1 for r in ranges)
    data = raw[end + 2 :]
    expected = 8 * shape[0] * shape[1] * shape[2]
    if len(data) != expected:
        raise InputError(
            f"{path}: header promises {expected} bytes of float64 data for a grid of shape "
            f"{shape}, found {len(data)}"
        )
    F = np.frombuffer(data, dtype="<f8").reshape(shape).astype(np.float64)
    return HKLGrid(
        F=F,
        h_min=h_min,
        h_max=h_max,
        k_min=k_min,
        k_max=k_max,
        l_min=l_min,
        l_max=l_max,
        count=ranges[0] * ranges[1] * ranges[2],
    )
