"""Refinement by gradient: losses, masks, parameter groups and the optax driver.

From nanoBragg flags and an observed image (photons per pixel, slow × fast) to an orientation::

    setup = jaxdiff.experiment.build(["-mat", "start.mat", "-hkl", "F.hkl", ...])
    result = jaxdiff.refine.refine(setup, observed)
    result.a_matrices[0], result.values["rotation"], result.history

``refine`` also takes several images (shared cell, Ncells, mosaic spread and detector;
per-image orientation and scale), the frames of a rotation sweep with one shared orientation
(``refine(sweep_models(setup, n), frames, orientation="shared")``), more parameter groups
(``fit=``), the least-squares loss, masks and a schedule. It starts with a global orientation
search and ends with a verdict: ``result.converged`` and ``result.reason``.
"""

from jaxdiff.refine.driver import (
    DEFAULT_SCHEDULE,
    Criteria,
    RefineResult,
    Stage,
    StepInfo,
    broaden,
    default_optimizer,
    oscillation,
    refine,
    sweep_models,
)
from jaxdiff.refine.losses import (
    LOSSES,
    dilate,
    expected_poisson_nll,
    poisson_nll,
    spot_pixels,
    valid_pixels,
    weighted_least_squares,
)
from jaxdiff.refine.params import GROUPS, a_matrix, lattice_cell, misorientation
from jaxdiff.refine.search import Search

__all__ = [
    "DEFAULT_SCHEDULE",
    "GROUPS",
    "Criteria",
    "LOSSES",
    "RefineResult",
    "Search",
    "Stage",
    "StepInfo",
    "a_matrix",
    "broaden",
    "default_optimizer",
    "dilate",
    "expected_poisson_nll",
    "lattice_cell",
    "misorientation",
    "oscillation",
    "poisson_nll",
    "refine",
    "spot_pixels",
    "sweep_models",
    "valid_pixels",
    "weighted_least_squares",
]
