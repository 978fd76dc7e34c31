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

from jaxdiff import physics
from jaxdiff.beam import R_E_SQR, Beam, water_background
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal, cell_vectors, mosaic_matrices, phi_angles, phi_orientations
from jaxdiff.detector import (
    Detector,
    detector_geometry,
)
from jaxdiff.render import evaluation_geometry, probe_block, render_block


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything differentiable about one exposure.

    Attributes:
        beam, crystal, detector: the models.
        fhkl: structure-factor table indexed [h - h_min, k - k_min, l - l_min] (padded by one
            in each axis, as nanoBragg's), or a (1, 1, 1) placeholder without a table.
        default_F: structure factor of reflections not in the table.
        mask: (slow, fast) pixels to render (nonzero) or skip (zero).
    """

    beam: Beam
    crystal: Crystal
    detector: Detector
    fhkl: Array
    default_F: Array
    mask: Array


class _Shared(NamedTuple):
    """Per-run quantities every pixel block uses."""

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


def _evaluate(sh: _Shared, exp: Experiment, cfg: SimConfig, spix, fpix, rendered, fresh: bool):
    """All per-evaluation quantities for a block of pixels (P,), for the trace.

    Evaluation axes follow nanoBragg's loop order: (P, layer, subpixel, source, φ, mosaic). The
    geometry is the image kernel's own (:func:`jaxdiff.render.evaluation_geometry`), laid out
    pixels first; only the per-orientation quantities are formed here.
    """
    raw = evaluation_geometry(sh, exp, cfg, spix, fpix, rendered)["raw"]

    def pixels_first(parts):  # components (L, Sub[, Src], P) -> (P, L, Sub[, Src], 3)
        v = jnp.stack(parts, axis=-1)
        return jnp.moveaxis(v, -2, 0)

    pos = pixels_first(raw["pos"]).astype(spix.dtype)
    diffracted = pixels_first(raw["diffracted"]).astype(spix.dtype)
    scattering = pixels_first(raw["scattering"]).astype(spix.dtype)
    airpath = jnp.moveaxis(raw["airpath"], -1, 0).astype(spix.dtype)
    omega = jnp.moveaxis(raw["omega"], -1, 0)
    capture = jnp.moveaxis(raw["capture"], -1, 0)
    passes = jnp.moveaxis(raw["passes"], -1, 0)
    polar = jnp.moveaxis(raw["polar"], -1, 0)
    hkl = jnp.einsum("plsxi,fmji->plsxfmj", scattering, sh.stale)
    flat_pass = passes.reshape(passes.shape[0], -1)
    first_loop = jnp.argmax(flat_pass, axis=1)
    any_pass = jnp.any(flat_pass, axis=1)
    if fresh:
        fresh_hkl = jnp.einsum("plsxi,fmji->plsxfmj", scattering, sh.fresh)
        is_first = jax.nn.one_hot(first_loop, flat_pass.shape[1], dtype=bool).reshape(passes.shape)
        hkl = jnp.where(is_first[..., None, None, None], fresh_hkl, hkl)
    f_latt, parts = physics.lattice_factor(
        hkl, exp.crystal.ncells, cfg.shape, exp.crystal.fudge, sh.recip
    )
    executed = passes[..., None, None]
    if cfg.water_size == 0.0:
        executed = executed & (f_latt != 0.0)
    return dict(
        pos=pos,
        airpath=airpath,
        diffracted=diffracted,
        omega=omega,
        capture=capture,
        scattering=scattering,
        passes=passes,
        polar=polar,
        hkl=hkl,
        f_latt=f_latt,
        f_parts=parts,
        executed=executed,
        first_loop=first_loop,
        any_pass=any_pass,
    )


def _structure_factor(ev, exp: Experiment, cfg: SimConfig, use_tri):
    hkl = ev["hkl"]
    have = cfg.table_lo is not None
    f_nn = physics.nearest_F(
        physics.nearest_index(hkl),
        exp.fhkl,
        cfg.table_lo or (0, 0, 0),
        cfg.table_hi or (0, 0, 0),
        exp.default_F,
        have,
    )
    if not (cfg.interpolate and have):
        return f_nn
    f_tri = physics.tricubic_F(hkl, exp.fhkl, cfg.table_lo)
    return jnp.where(use_tri, f_tri, f_nn)


def _blocks(cfg: SimConfig, n_pix: int, per_pixel: int):
    size = max(1, min(n_pix, cfg.chunk // max(per_pixel, 1)))
    n_blocks = -(-n_pix // size)
    return size, n_blocks


def _map_pixels(fn, arrays, n_pix, size, n_blocks):
    """Apply ``fn`` to blocks of ``size`` pixels with lax.map; returns per-pixel outputs."""
    pad = size * n_blocks - n_pix
    padded = [jnp.pad(a, (0, pad)).reshape(n_blocks, size) for a in arrays]
    out = jax.lax.map(lambda args: fn(*args), tuple(padded))
    return jax.tree_util.tree_map(lambda o: o.reshape(-1)[:n_pix], out)


def _cast(exp: Experiment, dtype) -> Experiment:
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, exp)


def _shared(exp: Experiment, cfg: SimConfig) -> _Shared:
    """The per-run quantities of an experiment, in the precision of its leaves."""
    dtype = exp.detector.pixel_size.dtype
    beam, det = exp.beam, exp.detector
    geom = detector_geometry(det, beam.direction, cfg.pivot_sample)
    stale, fresh, recip = _orientations(exp, cfg)
    n_src = beam.source_dirs.shape[0]
    n_mos = exp.crystal.mosaic_axes.shape[0]
    steps = n_src * n_mos * cfg.phisteps * cfg.oversample**2
    layers = jnp.arange(cfg.thicksteps, dtype=dtype)
    i_bg = (
        water_background(cfg.water_size, beam.fluence) if cfg.water_size else jnp.zeros((), dtype)
    )
    return _Shared(
        geom=geom,
        depths=layers * det.layer_thickness,
        layers=layers,
        incident=-beam.source_dirs,
        wavelengths=beam.wavelengths,
        stale=stale,
        fresh=fresh,
        recip=recip,
        i_bg=i_bg,
        scale=R_E_SQR * beam.fluence / steps,
        pixel_size=det.pixel_size,
        beam_dir=beam.direction,
    )


def _roi_pixels(exp: Experiment, cfg: SimConfig):
    """(slow, fast) indices and the render flag of the ROI's pixels, in raster order."""
    fmin, fmax, smin, smax = cfg.roi
    ns, nf = cfg.roi_shape
    s_idx, f_idx = jnp.meshgrid(jnp.arange(ns) + smin, jnp.arange(nf) + fmin, indexing="ij")
    spix, fpix = s_idx.ravel(), f_idx.ravel()
    return spix, fpix, exp.mask[spix, fpix] != 0


def _per_pixel(exp: Experiment, cfg: SimConfig) -> int:
    """Evaluations per pixel: layers × sub-pixels × sources × φ steps × mosaic domains."""
    n_src = exp.beam.source_dirs.shape[0]
    n_mos = exp.crystal.mosaic_axes.shape[0]
    return cfg.thicksteps * cfg.oversample**2 * n_src * cfg.phisteps * n_mos


def _tricubic_cutoff(sh, exp, cfg, spix_d, fpix_d, rendered, size, n_blocks):
    """(pixel, evaluation) where tricubic interpolation switches off, in raster order."""
    n_pix = spix_d.size
    per_pixel = _per_pixel(exp, cfg)
    first_oor, any_pass = _map_pixels(
        lambda s, f, r: probe_block(sh, exp, cfg, s, f, r, False),
        [spix_d, fpix_d, rendered],
        n_pix,
        size,
        n_blocks,
    )
    if cfg.carryover == "c-parity":
        p0 = jnp.argmax(any_pass)
        j0, _ = probe_block(
            sh, exp, cfg, spix_d[p0, None], fpix_d[p0, None], rendered[p0, None], True
        )
        first_oor = first_oor.at[p0].set(jnp.where(any_pass[p0], j0[0], first_oor[p0]))
    hit = first_oor < per_pixel
    tri_p = jnp.where(jnp.any(hit), jnp.argmax(hit), n_pix)
    tri_j = jnp.where(jnp.any(hit), first_oor[jnp.minimum(tri_p, n_pix - 1)], 0)
    return tri_p, tri_j


def _run_precision(sh: _Shared, dtype) -> _Shared:
    """Keep geometry (detector frame, sources) wide; the rest in the run's dtype."""
    return sh._replace(
        stale=sh.stale.astype(dtype),
        fresh=sh.fresh.astype(dtype),
        recip=sh.recip.astype(dtype),
        i_bg=sh.i_bg.astype(dtype),
        scale=sh.scale.astype(dtype),
        layers=sh.layers.astype(dtype),
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def simulate(exp: Experiment, cfg: SimConfig) -> Array:
    """Render the float image (slow, fast) in photons per pixel, as nanoBragg's -floatfile.

    The run's dtype (``cfg.dtype``) is used for the per-evaluation work; detector geometry and
    scattering vectors are formed in float64 whenever JAX has it enabled.
    """
    dtype = jnp.dtype(cfg.dtype)
    wide = jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else dtype
    sh = _run_precision(_shared(_cast(exp, wide), cfg), dtype)
    exp = _cast(exp, dtype)
    spix, fpix, rendered = _roi_pixels(exp, cfg)
    n_pix = spix.size
    pidx = jnp.arange(n_pix)
    per_block = cfg.thicksteps * cfg.oversample**2 * exp.beam.source_dirs.shape[0]
    size, n_blocks = _blocks(cfg, n_pix, per_block)
    spix_d, fpix_d = spix.astype(dtype), fpix.astype(dtype)

    tri = None
    if cfg.interpolate and cfg.table_lo is not None:
        tri = _tricubic_cutoff(sh, exp, cfg, spix_d, fpix_d, rendered, size, n_blocks)

    values, any_pass = _map_pixels(
        lambda s, f, i, r: render_block(sh, exp, cfg, s, f, i, r, tri, False),
        [spix_d, fpix_d, pidx, rendered],
        n_pix,
        size,
        n_blocks,
    )
    if cfg.carryover == "c-parity":
        # the run's first φ loop starts from the unrotated cell: redo that one pixel
        p0 = jnp.argmax(any_pass)
        one = (spix_d[p0, None], fpix_d[p0, None], pidx[p0, None], rendered[p0, None])
        v0, _ = render_block(sh, exp, cfg, *one, tri, True)
        values = values.at[p0].set(jnp.where(any_pass[p0], v0[0], values[p0]))
    image = jnp.zeros((cfg.spixels, cfg.fpixels), dtype)
    return image.at[spix, fpix].set(values)
