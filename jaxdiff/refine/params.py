"""What a refinement fits: parameter groups, their units, and how they enter an experiment.

The optimiser sees dimensionless offsets from the starting model, one array per fitted group,
in units chosen so that one unit moves a spot by roughly the same amount in every group (a few
tenths of a pixel for a typical cell and detector); the driver further rescales them by their
standard errors. Per-image groups (orientation, scale) have a leading image axis; the others
are shared by all images. An orientation with one row is shared by every image (the frames of
a rotation sweep: one crystal, each frame at its own φ).

Physical values: rotation vector [rad] (applied after the misset, see
:class:`jaxdiff.crystal.Crystal`), cell a, b, c [Å] and α, β, γ [rad], Na, Nb, Nc, scale (a
factor on the fluence), distance [m], beam centre along fast and slow [m], mosaic spread
[rad] (fitted in log, so it stays positive; the model needs several mosaic domains).

The cell of a crystal given by cell constants (``-cell``) is fitted as those constants. The cell
of an A-matrix crystal (``-mat``) is fitted as a symmetric strain of its reciprocal vectors: six
numbers that change the metric and, to first order, not the orientation (the rotation group
covers that), and the reported cell is the fitted lattice's.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal, cell_vectors
from jaxdiff.rotation import rotation_vector_matrix
from jaxdiff.simulate import Experiment

GROUPS = ("rotation", "cell", "ncells", "mosaic", "scale", "distance", "beam_centre")


def detector_groups(groups) -> list[str]:
    """The groups among ``groups`` that move a single-panel detector (sorted): a multi-panel
    detector's panels each have their own position, so these are not fitted for it."""
    return sorted({"distance", "beam_centre"} & set(groups))


ROTATION_UNIT = 1e-3  # rad
CELL_LENGTH_UNIT = 1e-3  # relative
CELL_ANGLE_UNIT = 1e-3  # rad
NCELLS_UNIT = 0.1  # in log N
MOSAIC_UNIT = 0.1  # in log spread
DISTANCE_UNIT = 1e-3  # relative


def check_groups(fit: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The fitted groups in canonical order; ValueError names an unknown one."""
    unknown = [g for g in fit if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter group {unknown[0]!r}: choose from {', '.join(GROUPS)}")
    if not fit:
        raise ValueError("nothing to fit: give at least one parameter group")
    return tuple(g for g in GROUPS if g in fit)


def initial_offsets(
    fit: tuple[str, ...], n_images: int, dtype=jnp.float64, shared_orientation: bool = False
) -> dict[str, Array]:
    """Zero offsets (the starting model) for each fitted group; one orientation for all images
    when ``shared_orientation``."""
    shapes = {
        "rotation": (1 if shared_orientation else n_images, 3),
        "cell": (6,),
        "ncells": (3,),
        "mosaic": (),
        "scale": (n_images,),
        "distance": (),
        "beam_centre": (2,),
    }
    return {g: jnp.zeros(shapes[g], dtype) for g in check_groups(fit)}


def _strain(x: Array) -> Array:
    """I + E for the symmetric E with diagonal x[:3] and off-diagonals x[3:] (yz, zx, xy)."""
    e = jnp.stack(
        [
            jnp.stack([x[0], x[5], x[4]]),
            jnp.stack([x[5], x[1], x[3]]),
            jnp.stack([x[4], x[3], x[2]]),
        ]
    )
    return jnp.eye(3, dtype=x.dtype) + e


def apply_offsets(
    offsets: dict[str, Array], exp: Experiment, image: int | Array, from_cell: bool
) -> Experiment:
    """``exp`` (the starting model of image ``image``) with the fitted offsets applied.

    ``from_cell`` (static, the configuration's) says whether cell constants define the crystal.
    """
    cr, det, beam = exp.crystal, exp.detector, exp.beam
    dtype = cr.rotation.dtype
    if "rotation" in offsets:
        rot = offsets["rotation"]
        row = 0 if rot.shape[0] == 1 else image
        cr = dataclasses.replace(cr, rotation=cr.rotation + ROTATION_UNIT * rot[row].astype(dtype))
    if "cell" in offsets:
        x = offsets["cell"].astype(dtype)
        if from_cell:
            lengths = cr.cell[:3] * (1.0 + CELL_LENGTH_UNIT * x[:3])
            cell = jnp.concatenate([lengths, cr.cell[3:] + CELL_ANGLE_UNIT * x[3:]])
            cr = dataclasses.replace(cr, cell=cell)
        else:
            cr = dataclasses.replace(cr, recip0=cr.recip0 @ _strain(CELL_LENGTH_UNIT * x))
    if "ncells" in offsets:
        cr = dataclasses.replace(
            cr, ncells=cr.ncells * jnp.exp(NCELLS_UNIT * offsets["ncells"].astype(dtype))
        )
    if "mosaic" in offsets:
        factor = jnp.exp(MOSAIC_UNIT * offsets["mosaic"].astype(dtype))
        cr = dataclasses.replace(cr, mosaic_spread=cr.mosaic_spread * factor)
    if "scale" in offsets:
        factor = jnp.exp(offsets["scale"][image].astype(dtype))
        beam = dataclasses.replace(beam, fluence=beam.fluence * factor)
    if "distance" in offsets:
        factor = 1.0 + DISTANCE_UNIT * offsets["distance"].astype(dtype)
        # close_distance is NaN when it is derived from the distance; keep it so, and keep the
        # NaN out of the gradient (0 × NaN is NaN).
        derived = jnp.isnan(det.close_distance)
        close = jnp.where(derived, 0.0, det.close_distance) * factor
        det = dataclasses.replace(
            det,
            distance=det.distance * factor,
            close_distance=jnp.where(derived, det.close_distance, close),
        )
    if "beam_centre" in offsets:
        x = offsets["beam_centre"].astype(dtype) * det.pixel_size
        det = dataclasses.replace(det, beam_f=det.beam_f + x[0], beam_s=det.beam_s + x[1])
    return dataclasses.replace(exp, crystal=cr, detector=det, beam=beam)


def physical_values(
    offsets: dict[str, Array], exps: list[Experiment], configs: list[SimConfig]
) -> dict[str, np.ndarray]:
    """The fitted groups in physical units (see the module docstring), as NumPy arrays."""
    fitted = [
        apply_offsets(offsets, e, i, c.from_cell)
        for i, (e, c) in enumerate(zip(exps, configs, strict=True))
    ]
    out: dict[str, np.ndarray] = {}
    if "rotation" in offsets:
        out["rotation"] = np.stack([np.asarray(e.crystal.rotation) for e in fitted])
    if "cell" in offsets:
        out["cell"] = lattice_cell(fitted[0].crystal, configs[0])
    if "ncells" in offsets:
        out["ncells"] = np.asarray(fitted[0].crystal.ncells)
    if "mosaic" in offsets:
        out["mosaic"] = np.asarray(fitted[0].crystal.mosaic_spread)
    if "scale" in offsets:
        out["scale"] = np.exp(np.asarray(offsets["scale"]))
    if "distance" in offsets:
        out["distance"] = np.asarray(fitted[0].detector.distance)
    if "beam_centre" in offsets:
        d = fitted[0].detector
        out["beam_centre"] = np.array([float(d.beam_f), float(d.beam_s)])
    return out


def lattice_cell(crystal: Crystal, config: SimConfig) -> np.ndarray:
    """The crystal's cell: its ``-cell`` constants, or an A-matrix lattice's constants."""
    if config.from_cell:
        return np.asarray(crystal.cell)
    real, _ = cell_vectors(crystal, False)
    return cell_from_vectors(np.asarray(real) * 1e10)


def cell_from_vectors(real: np.ndarray) -> np.ndarray:
    """Cell constants (a, b, c [Å], α, β, γ [rad]) of real-space rows a, b, c [Å]."""
    lengths = np.linalg.norm(real, axis=1)

    def angle(u, v):
        return math.acos(float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))))

    a, b, c = real
    return np.array([*lengths, angle(b, c), angle(c, a), angle(a, b)])


def a_matrix(crystal: Crystal, config: SimConfig, wavelength: float | Array) -> Array:
    """MOSFLM A matrix of the crystal's orientation: columns a*, b*, c* [1/Å] × λ [Å].

    This is the matrix :func:`jaxdiff.io.read_mosflm_matrix` reads (and ``-mat`` uses):
    misset and the extra rotation included, ``wavelength`` in metres.
    """
    _, recip = cell_vectors(crystal, config.from_cell)
    return recip.T * (jnp.asarray(wavelength) * 1e10)


def misorientation(rot_a: Array, rot_b: Array) -> Array:
    """Angle [rad] of the rotation between two rotation vectors' matrices, R_a R_bᵀ."""
    r = rotation_vector_matrix(rot_a) @ jnp.swapaxes(rotation_vector_matrix(rot_b), -1, -2)
    trace = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    skew = jnp.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]],
        axis=-1,
    )
    # atan2 of |sin θ| and cos θ stays accurate for small angles, where acos does not; the
    # norm is taken with a safe square root so that equal rotations have a finite gradient.
    sq = jnp.sum(skew * skew, axis=-1)
    zero = sq == 0.0
    sin = jnp.where(zero, 0.0, 0.5 * jnp.sqrt(jnp.where(zero, 1.0, sq)))
    return jnp.arctan2(sin, 0.5 * (trace - 1.0))
