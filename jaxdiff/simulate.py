"""The simulation: the one jit boundary that turns an experiment into a float image.

Per pixel, nanoBragg loops over sensor layers, sub-pixels, sources, φ steps and mosaic
domains. Here those loops are axes of one broadcast evaluation (written for one element and
lifted by broadcasting), pixels are processed in blocks with ``lax.map`` so memory stays bounded,
and the two pieces of sequential state in the C program are explicit:

* the φ carryover (c-parity mode): the working orientation is the carry of a ``lax.scan`` over
  φ steps; the run's first φ loop starts from the unrotated cell and every later loop from the
  orientation the previous loop left, so one pixel (the first rendered) is recomputed with the
  fresh start;
* the tricubic switch-off: the first evaluation (in the C program's raster order) whose
  neighbourhood leaves the table turns interpolation off for the rest of the run; a probe pass
  finds it and the image pass interpolates only before it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxdiff.beam import R_E_SQR, Beam, water_background
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal, cell_vectors, mosaic_matrices, phi_angles, phi_orientations
from jaxdiff.detector import (
    Detector,
    detector_geometry,
)
from jaxdiff.render import probe_block, render_block


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything differentiable about one exposure.

    Attributes:
        beam, crystal, detector: the models.
        fhkl: structure-factor table indexed [h - h_min, k - k_min, l - l_min] (padded by one
            in each axis, as nanoBragg's), or a (1, 1, 1) placeholder without a table.
        default_F: structure factor of reflections not in the table.
        mask: (slow, fast) 1.0 where a pixel is rendered, 0.0 where it is skipped (floating, so
            that a gradient with respect to the whole experiment exists); (panel, slow, fast)
            for a multi-panel detector.
    """

    beam: Beam
    crystal: Crystal
    detector: Detector
    fhkl: Array
    default_F: Array
    mask: Array


def shape_text(shape) -> str:
    """An image shape as fast x slow pixels (and the panel count, for several panels)."""
    if len(shape) == 2:
        return f"{shape[1]}x{shape[0]}"
    return f"{shape[0]} panels of " + shape_text(shape[1:]) if len(shape) == 3 else str(shape)


def check_config(exp: Experiment, cfg: SimConfig) -> None:
    """Raise ValueError where ``cfg`` disagrees with what the models fix: the detector's size
    and pivot, the mask's shape and how the crystal is defined (checked while tracing); and
    for a multi-panel detector, c-parity φ carryover (a single-panel run's sequential state)."""
    fpixels, spixels = exp.detector.image_size
    problems = []
    if (cfg.spixels, cfg.fpixels) != (spixels, fpixels):
        problems.append(
            f"config is {cfg.fpixels}x{cfg.spixels} pixels, the detector {fpixels}x{spixels}"
        )
    if tuple(exp.mask.shape) != exp.detector.shape:
        problems.append(
            f"mask is {shape_text(exp.mask.shape)}, the detector {shape_text(exp.detector.shape)}"
        )
    if exp.detector.panels and cfg.carryover == "c-parity":
        problems.append(
            "c-parity φ carryover is the single-panel C program's run-wide state; "
            f"a {exp.detector.panels}-panel detector renders in spec mode only"
        )
    if cfg.pivot_sample != (exp.detector.pivot == "sample"):
        problems.append(
            f"config pivot_sample={cfg.pivot_sample}, detector pivot {exp.detector.pivot!r}"
        )
    if cfg.from_cell != (exp.crystal.defined_by == "cell"):
        problems.append(
            f"config from_cell={cfg.from_cell}, crystal defined by {exp.crystal.defined_by!r}"
        )
    if problems:
        raise ValueError(
            "experiment and SimConfig disagree: "
            + "; ".join(problems)
            + " (jaxdiff.config_for derives a matching SimConfig)"
        )


class RunInputs(NamedTuple):
    """Per-run quantities every pixel block uses (from :func:`run_inputs`)."""

    geom: object
    depths: Array
    layers: Array
    incident: Array
    wavelengths: Array
    stale: Array
    fresh: Array
    recip: Array
    i_bg: Array
    scale: Array
    pixel_size: Array
    beam_dir: Array


def _orientations(exp: Experiment, cfg: SimConfig):
    """(φ, mosaic, 3, 3) real-space vectors [m] for stale and fresh φ loops, and a*, b*, c*."""
    real0, recip = cell_vectors(exp.crystal, cfg.from_cell)
    phis = phi_angles(exp.crystal, cfg.phisteps)
    carry = cfg.carryover == "c-parity"
    spindle = exp.crystal.spindle
    end, fresh = phi_orientations(real0, spindle, phis, real0, carry)
    _, stale = phi_orientations(real0, spindle, phis, end, carry)
    umats = mosaic_matrices(exp.crystal)
    # a_domain = U · a_phi for each row vector: R_phi @ U^T.
    stale = jnp.einsum("fij,mkj->fmik", stale, umats)
    fresh = jnp.einsum("fij,mkj->fmik", fresh, umats)
    return stale, fresh, recip


def rotation_frames(exp: Experiment, count: int, width, start=None) -> list[Experiment]:
    """``count`` consecutive oscillation frames of ``exp``: frame k (from 0) is ``exp`` with the
    crystal's first φ at ``start + k·width`` [rad] (``start``: the crystal's own φ0). The leaf
    keeps its type, so one compiled program renders every frame."""
    phi0 = exp.crystal.phi0
    start = phi0 if start is None else start
    return [
        dataclasses.replace(
            exp,
            crystal=dataclasses.replace(
                exp.crystal, phi0=jax.lax.full_like(phi0, start + k * width)
            ),
        )
        for k in range(count)
    ]


def steps(exp: Experiment, cfg: SimConfig) -> int:
    """nanoBragg's ``steps``, the divisor of a pixel's sum: sub-pixels × sources × φ steps ×
    mosaic domains (sensor layers are not counted)."""
    n_src = exp.beam.source_dirs.shape[0]
    n_mos = exp.crystal.mosaic_axes.shape[0]
    return n_src * n_mos * cfg.phisteps * cfg.oversample**2


def evaluations_per_pixel(exp: Experiment, cfg: SimConfig) -> int:
    """Evaluations per pixel: sensor layers × :func:`steps`."""
    return cfg.thicksteps * steps(exp, cfg)


def _cast(exp: Experiment, dtype) -> Experiment:
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, exp)


def _shared(exp: Experiment, cfg: SimConfig) -> RunInputs:
    """The per-run quantities of an experiment, in the precision of its leaves."""
    dtype = exp.detector.pixel_size.dtype
    beam, det = exp.beam, exp.detector
    geom = detector_geometry(det, beam.direction, cfg.pivot_sample)
    stale, fresh, recip = _orientations(exp, cfg)
    layers = jnp.arange(cfg.thicksteps, dtype=dtype)
    i_bg = (
        water_background(cfg.water_size, beam.fluence) if cfg.water_size else jnp.zeros((), dtype)
    )
    return RunInputs(
        geom=geom,
        depths=layers * det.layer_thickness,
        layers=layers,
        incident=-beam.source_dirs,
        wavelengths=beam.wavelengths,
        stale=stale,
        fresh=fresh,
        recip=recip,
        i_bg=i_bg,
        scale=R_E_SQR * beam.fluence / steps(exp, cfg),
        pixel_size=det.pixel_size,
        beam_dir=beam.direction,
    )


def _widest(exp: Experiment, dtype) -> jnp.dtype:
    """The widest of ``dtype`` and the experiment's floating-point leaves."""
    wide = jnp.dtype(dtype)
    for leaf in jax.tree_util.tree_leaves(exp):
        leaf_dtype = jnp.asarray(leaf).dtype
        if jnp.issubdtype(leaf_dtype, jnp.floating) and leaf_dtype.itemsize > wide.itemsize:
            wide = leaf_dtype
    return wide


def run_inputs(exp: Experiment, cfg: SimConfig) -> tuple[RunInputs, Experiment]:
    """The precision policy of a run: its per-run quantities, and the experiment in the run's
    dtype (``cfg.dtype``).

    Detector geometry, sources and the crystal's orientations are formed in the widest
    precision of the experiment's leaves (float64 for an experiment built with float64 on),
    so the float32 path loses no digits there; the per-run results the per-evaluation work
    reads (orientations, scale, background) are then cast to the run's dtype, while the
    detector frame and sources stay wide for the scattering vectors
    (:func:`jaxdiff.render.evaluation_geometry`).
    """
    dtype = jnp.dtype(cfg.dtype)
    sh = _shared(_cast(exp, _widest(exp, dtype)), cfg)
    sh = sh._replace(
        stale=sh.stale.astype(dtype),
        fresh=sh.fresh.astype(dtype),
        recip=sh.recip.astype(dtype),
        i_bg=sh.i_bg.astype(dtype),
        scale=sh.scale.astype(dtype),
        layers=sh.layers.astype(dtype),
    )
    return sh, _cast(exp, dtype)


def roi_pixels(exp: Experiment, cfg: SimConfig):
    """(slow, fast) indices of the ROI's pixels in raster order, and whether each is rendered
    (the detector mask is nonzero there)."""
    fmin, fmax, smin, smax = cfg.roi
    ns, nf = cfg.roi_shape
    s_idx, f_idx = jnp.meshgrid(jnp.arange(ns) + smin, jnp.arange(nf) + fmin, indexing="ij")
    spix, fpix = s_idx.ravel(), f_idx.ravel()
    return spix, fpix, exp.mask[spix, fpix] != 0


def map_pixels(fn, arrays, exp: Experiment, cfg: SimConfig):
    """``fn(*blocks)`` over blocks of pixels (each array (P,), in raster order) with
    ``lax.map``; a block holds ``cfg.chunk`` work items (layer × sub-pixel × source per pixel),
    the last block is padded. Returns the per-pixel outputs (P, ...)."""
    n_pix = arrays[0].shape[0]
    per_pixel = cfg.thicksteps * cfg.oversample**2 * exp.beam.source_dirs.shape[0]
    size = max(1, min(n_pix, cfg.chunk // max(per_pixel, 1)))
    n_blocks = -(-n_pix // size)
    pad = size * n_blocks - n_pix
    padded = [jnp.pad(a, (0, pad)).reshape(n_blocks, size) for a in arrays]
    out = jax.lax.map(lambda args: fn(*args), tuple(padded))
    return jax.tree_util.tree_map(lambda o: o.reshape(-1)[:n_pix], out)


def tricubic_cutoff(sh: RunInputs, exp: Experiment, cfg: SimConfig, spix, fpix, rendered):
    """(pixel, evaluation) where tricubic interpolation switches off, in raster order: the
    first evaluation whose neighbourhood leaves the table (pixel = the pixel count if none).

    ``spix``, ``fpix`` (P,) in the run's dtype and ``rendered`` (P,) as from
    :func:`roi_pixels`; ``sh`` and ``exp`` as from :func:`run_inputs`.
    """
    n_pix = spix.size
    per_pixel = evaluations_per_pixel(exp, cfg)
    first_oor, any_pass = map_pixels(
        lambda s, f, r: probe_block(sh, exp, cfg, s, f, r, False),
        [spix, fpix, rendered],
        exp,
        cfg,
    )
    if cfg.carryover == "c-parity":
        p0 = jnp.argmax(any_pass)
        j0, _ = probe_block(sh, exp, cfg, spix[p0, None], fpix[p0, None], rendered[p0, None], True)
        first_oor = first_oor.at[p0].set(jnp.where(any_pass[p0], j0[0], first_oor[p0]))
    hit = first_oor < per_pixel
    tri_p = jnp.where(jnp.any(hit), jnp.argmax(hit), n_pix)
    tri_j = jnp.where(jnp.any(hit), first_oor[jnp.minimum(tri_p, n_pix - 1)], 0)
    return tri_p, tri_j


@functools.partial(jax.jit, static_argnames=("cfg",))
def simulate(exp: Experiment, cfg: SimConfig) -> Array:
    """Render the float image (slow, fast) in photons per pixel, as nanoBragg's -floatfile;
    (panel, slow, fast) for a multi-panel detector.

    The run's dtype (``cfg.dtype``) is used for the per-evaluation work; detector geometry and
    scattering vectors are formed in the widest precision of the experiment's leaves
    (:func:`run_inputs`). ``cfg`` must match the models (:func:`check_config`). The panels of
    a multi-panel detector are rendered one after another (``lax.map``, so memory is that of
    one panel), each as a single-panel detector with its own mask; ``cfg``'s ROI applies to
    every panel, and the tricubic switch-off is each panel's own.
    """
    check_config(exp, cfg)
    if not exp.detector.panels:
        return _render(exp, cfg)

    def one(panel):
        det, mask = panel
        return _render(dataclasses.replace(exp, detector=det, mask=mask), cfg)

    return jax.lax.map(one, (exp.detector.unstacked(), exp.mask))


def _render(exp: Experiment, cfg: SimConfig) -> Array:
    """The image of a single-panel experiment."""
    dtype = jnp.dtype(cfg.dtype)
    sh, exp = run_inputs(exp, cfg)
    spix, fpix, rendered = roi_pixels(exp, cfg)
    pidx = jnp.arange(spix.size)
    spix_d, fpix_d = spix.astype(dtype), fpix.astype(dtype)

    tri = None
    if cfg.interpolate and cfg.table_lo is not None:
        tri = tricubic_cutoff(sh, exp, cfg, spix_d, fpix_d, rendered)

    values, any_pass = map_pixels(
        lambda s, f, i, r: render_block(sh, exp, cfg, s, f, i, r, tri, False),
        [spix_d, fpix_d, pidx, rendered],
        exp,
        cfg,
    )
    if cfg.carryover == "c-parity":
        # the run's first φ loop starts from the unrotated cell: redo that one pixel
        p0 = jnp.argmax(any_pass)
        one = (spix_d[p0, None], fpix_d[p0, None], pidx[p0, None], rendered[p0, None])
        v0, _ = render_block(sh, exp, cfg, *one, tri, True)
        values = values.at[p0].set(jnp.where(any_pass[p0], v0[0], values[p0]))
    # the ROI is a rectangle in raster order: padding (not a scatter) places it in the image,
    # so that the reverse pass slices the image's cotangent instead of gathering from it
    fmin, _, smin, _ = cfg.roi
    ns, nf = cfg.roi_shape
    block = values.reshape(ns, nf).astype(dtype)
    return jnp.pad(block, ((smin, cfg.spixels - smin - ns), (fmin, cfg.fpixels - fmin - nf)))
