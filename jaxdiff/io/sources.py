"""Beam source lists (``-sourcefile``)."""

from __future__ import annotations

import os
import re

import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io._text import parse_number, read_lines

SOURCE_COLUMNS = ("X", "Y", "Z", "I", "lambda")
_DELIMITERS = re.compile(r"[ \t,;:!]+")


def read_sourcefile(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a source list: one source per line, columns ``X Y Z I lambda``.

    Columns are separated by any run of spaces, tabs, commas, semicolons, colons or ``!``, as
    in nanoBragg's ``read_text_file``. X, Y, Z give the source position (m) relative to the
    sample (only its direction matters to nanoBragg); I is a relative weight; lambda is the
    wavelength (m). A line may stop early: the missing columns are NaN and the caller applies
    nanoBragg's defaults. Blank lines and lines starting with ``#`` are skipped.

    Returns:
        A dict mapping each of ``X``, ``Y``, ``Z``, ``I``, ``lambda`` to a float64 array with
        one entry per source.

    Raises:
        InputError: missing file, a line with more than five columns or a token that is not a
            number (naming the file and line), or no sources at all.
    """
    rows: list[list[float]] = []
    for number, line in enumerate(read_lines(path, "source file"), start=1):
        tokens = [token for token in _DELIMITERS.split(line.strip()) if token]
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"{path} line {number}"
        if len(tokens) > len(SOURCE_COLUMNS):
            raise InputError(
                f"{where}: expected at most 5 columns 'X Y Z I lambda', got {len(tokens)}: "
                f"'{line.strip()}'"
            )
        row = []
        for token in tokens:
            value = parse_number(token)
            if value is None:
                raise InputError(f"{where}: '{token}' is not a number in '{line.strip()}'")
            row.append(value)
        rows.append(row + [np.nan] * (len(SOURCE_COLUMNS) - len(row)))
    if not rows:
        raise InputError(f"{path}: no sources found (expected lines 'X Y Z I lambda')")
    table = np.array(rows, dtype=np.float64)
    return {name: table[:, column].copy() for column, name in enumerate(SOURCE_COLUMNS)}
