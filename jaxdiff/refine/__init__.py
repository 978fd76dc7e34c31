"""Refinement by gradient: losses, masks, parameter groups and the optax driver.

From nanoBragg flags and an observed image (photons per pixel, slow × fast) to an orientation::

    setup = jaxdiff.experiment.build(["-mat", "start.mat", "-hkl", "F.hkl", ...])
    result = jaxdiff.refine.refine(setup, observed)
    result.a_matrices[0], result.values["rotation"], result.history

``refine`` also takes several images (shared cell, Ncells and detector; per-image orientation
and scale), more parameter groups (``fit=``), the least-squares loss, masks and a schedule.
"""

from jaxdiff.refine.driver import (
    DEFAULT_SCHEDULE,
    RefineResult,
    Stage,
    StepInfo,
    broaden,
    default_optimizer,
    refine,
)
from jaxdiff.refine.losses import (
    LOSSES,
    dilate,
    poisson_nll,
    spot_pixels,
    valid_pixels,
    weighted_least_squares,
)
from jaxdiff.refine.params import GROUPS, a_matrix, lattice_cell, misorientation

__all__ = [
    "DEFAULT_SCHEDULE",
    "GROUPS",
    "LOSSES",
    "RefineResult",
    "Stage",
    "StepInfo",
    "a_matrix",
    "broaden",
    "default_optimizer",
    "dilate",
    "lattice_cell",
    "misorientation",
    "poisson_nll",
    "refine",
    "spot_pixels",
    "valid_pixels",
    "weighted_least_squares",
]
