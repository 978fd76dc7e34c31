"""The refinement case shared by the library and command-line refinement tests: the A.mat
crystal, the misset the fits start from, the tolerance they must reach and a sweep's frames."""

from __future__ import annotations

import math

import numpy as np

FLAGS = (
    "-mat inputs/A.mat -default_F 100 -N 6 -lambda 1 -distance 50 -pixel 0.4 -detpixels 96 "
    "-oversample 1"
).split()
# The starting model of the library and CLI fits: A.mat turned by this misset [deg].
MISSET = ["-misset", "0.2", "-0.15", "0.1"]
TOLERANCE_DEG = 0.005
# A sweep: each frame 0.5° in two φ steps; the library and CLI sweep fits use these frames.
SWEEP = ["-osc", "0.5", "-phisteps", "2"]
SWEEP_FRAMES = 4


def orientation_error_deg(a_fit: np.ndarray, a_true: np.ndarray) -> float:
    """Angle [deg] of the rotation between two A matrices of the same cell."""
    u = a_fit @ np.linalg.inv(a_true)
    skew = 0.5 * np.array([u[2, 1] - u[1, 2], u[0, 2] - u[2, 0], u[1, 0] - u[0, 1]])
    return math.degrees(math.atan2(np.linalg.norm(skew), 0.5 * (np.trace(u) - 1.0)))
