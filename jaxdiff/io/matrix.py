"""MOSFLM orientation matrices (``-mat``)."""

from __future__ import annotations

import math
import os

import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io._text import parse_number, read_lines

_SINGULAR_RELATIVE = 1e-12


def read_mosflm_matrix(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the reciprocal cell vectors a*, b*, c* from a MOSFLM A matrix file.

    The first nine numbers of the file are the matrix, row by row: the first row holds the x
    components of a*, b*, c*, the second the y components, the third the z components. As in
    MOSFLM the vectors are multiplied by the wavelength, so they are dimensionless
    (Å⁻¹ × Å); divide by the wavelength in Å to get Å⁻¹. Anything after the first nine numbers
    (MOSFLM's U matrix, cell and missetting lines) is ignored, as nanoBragg does.

    Returns:
        ``(a_star, b_star, c_star)``, each a float64 array of shape (3,).

    Raises:
        InputError: missing file, a non-numeric token among the first nine, fewer than nine
            numbers, or a singular (or nearly singular) matrix.
    """
    numbers: list[float] = []
    for line_number, line in enumerate(read_lines(path, "matrix file"), start=1):
        for token in line.split():
            if len(numbers) == 9:
                break
            value = parse_number(token)
            if value is None or not math.isfinite(value):
                raise InputError(
                    f"{path} line {line_number}: '{token}' is not a number "
                    "(expected 9 numbers: the 3x3 MOSFLM A matrix)"
                )
            numbers.append(value)
        if len(numbers) == 9:
            break
    if len(numbers) < 9:
        raise InputError(
            f"{path}: expected 9 numbers (the 3x3 MOSFLM A matrix), found {len(numbers)}"
        )
    matrix = np.array(numbers, dtype=np.float64).reshape(3, 3)
    det = float(np.linalg.det(matrix))
    scale = float(np.prod(np.linalg.norm(matrix, axis=0)))
    if not math.isfinite(det) or det == 0.0 or abs(det) < _SINGULAR_RELATIVE * scale:
        raise InputError(
            f"{path}: the A matrix is singular (determinant {det:g}); a*, b*, c* must be "
            "linearly independent"
        )
    return matrix[:, 0].copy(), matrix[:, 1].copy(), matrix[:, 2].copy()
