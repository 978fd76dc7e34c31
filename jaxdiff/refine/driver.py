"""The refinement driver: fit orientation (and optionally cell, Ncells, scale, distance, beam
centre) of one or several images jointly, by gradient on optax, coarse to fine.

A Bragg spot is narrow: a model spot that misses its observed spot sees no gradient towards
it. The schedule therefore starts with broadened spots (fewer unit cells, or a larger mosaic
spread when the experiment has several mosaic domains), where model and observed spots overlap
even from a misorientation of several tenths of a degree, and ends with the real model. The
optimiser's state restarts at each stage because the loss changes. While spots are broadened,
Ncells and the scale are held (the scale at the value that matches the observed total): fitted
there, Ncells would undo the broadening and the scale would fade the mismatched model.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.flatten_util import ravel_pytree

from jaxdiff.config import SimConfig
from jaxdiff.refine.losses import loss_function, valid_pixels
from jaxdiff.refine.params import (
    a_matrix,
    apply_offsets,
    check_groups,
    initial_offsets,
    physical_values,
)
from jaxdiff.simulate import Experiment, simulate


class Stage(NamedTuple):
    """One pass of the schedule.

    Attributes:
        steps: most optimiser steps in this stage.
        ncells_factor: Na, Nb, Nc are multiplied by this (below 1: broader spots), see
            :func:`broaden`.
        mosaic_factor: the mosaic spread is multiplied by this (only has an effect with several
            mosaic domains).
        xtol: the stage ends when two successive steps each move every fitted value by less than
            this many of its standard errors (square roots of the Fisher information's diagonal
            at the stage's start).
    """

    steps: int = 100
    ncells_factor: float = 1.0
    mosaic_factor: float = 1.0
    xtol: float = 0.01


DEFAULT_SCHEDULE = (
    Stage(steps=25, ncells_factor=0.25, xtol=0.1),
    Stage(steps=25, ncells_factor=0.5, xtol=0.1),
    Stage(steps=100, xtol=0.01),
)


class StepInfo(NamedTuple):
    """What a progress callback receives after every optimiser step."""

    stage: int
    step: int
    loss: float
    seconds: float


class RefineResult(NamedTuple):
    """A finished fit.

    Attributes:
        experiments: the fitted experiment of each image (start values with the fit applied).
        configs: each image's configuration.
        values: fitted groups in physical units (see :mod:`jaxdiff.refine.params`); per-image
            groups have a leading image axis.
        offsets: the optimiser's dimensionless parameters.
        a_matrices: (images, 3, 3) fitted MOSFLM A matrices (columns a*, b*, c* × λ, the mean
            wavelength of the sources).
        history: loss (per fitted pixel) where each step started.
        stages: the stage of each entry of ``history``.
        initial_loss: loss of the starting model under the final (real) model, per pixel.
        final_loss: loss of the fitted model, per pixel.
        seconds: wall time of the fit.
    """

    experiments: tuple[Experiment, ...]
    configs: tuple[SimConfig, ...]
    values: dict[str, np.ndarray]
    offsets: dict[str, Array]
    a_matrices: np.ndarray
    history: np.ndarray
    stages: np.ndarray
    initial_loss: float
    final_loss: float
    seconds: float


class _Data(NamedTuple):
    """Traced inputs of the loss: start models, observations, backgrounds, masks (one per image)."""

    experiments: tuple[Experiment, ...]
    observed: tuple[Array, ...]
    background: tuple[Array, ...]
    mask: tuple[Array, ...]
    norm: Array


def broaden(exp: Experiment, ncells_factor: Array, mosaic_factor: Array) -> Experiment:
    """``exp`` with broader spots: Ncells × ``ncells_factor`` (at least 1), mosaic spread ×
    ``mosaic_factor``, and structure factors raised by the square root of the lost crystal
    volume, so that integrated Bragg intensities stay put (and a water background too)."""
    cr = exp.crystal
    ncells = jnp.maximum(cr.ncells * ncells_factor, 1.0)
    gain = jnp.sqrt(jnp.prod(cr.ncells / ncells))
    cr = dataclasses.replace(cr, ncells=ncells, mosaic_spread=cr.mosaic_spread * mosaic_factor)
    return dataclasses.replace(
        exp, crystal=cr, fhkl=exp.fhkl * gain, default_F=exp.default_F * gain
    )


def default_optimizer() -> optax.GradientTransformationExtraArgs:
    """L-BFGS with a zoom line search: few, well-scaled steps for a handful of parameters."""
    return _DEFAULT_OPTIMIZER


# The parameters are in units of their standard errors (see make_fitter), so the first step
# needs no rescaling of its own.
_DEFAULT_OPTIMIZER = optax.lbfgs(scale_init_precond=False)


# From this many images on, images that can share one compiled simulation are mapped over
# rather than unrolled: a map compiles in constant time, but for two images it takes about twice
# as long to compile as two unrolled copies.
_MAP_FROM = 4


def _uniform(configs: tuple[SimConfig, ...], experiments: tuple[Experiment, ...]) -> bool:
    """Whether the images are rendered by one function mapped over them."""
    if len(configs) < _MAP_FROM or any(c != configs[0] for c in configs):
        return False
    shapes = [jax.tree_util.tree_map(jnp.shape, e) for e in experiments]
    return all(s == shapes[0] for s in shapes)


@functools.lru_cache(maxsize=16)
def make_model(configs: tuple[SimConfig, ...], loss: str):
    """``(images, total, fisher)`` for images rendered with ``configs``, as functions of
    ``(offsets, data, ncells_factor, mosaic_factor)``.

    ``images`` gives the model image of each image; ``total`` the loss per fitted pixel;
    ``fisher`` each image's Gauss-Newton diagonal of the (unnormalised) loss, (images, elements
    of the flattened offsets), and the model images. Four or more images that share a
    configuration and array shapes are rendered by one ``lax.map`` over them (one compiled
    simulation, one image's memory at a time); otherwise each image has its own.
    """
    per_image, curvature = loss_function(loss)

    def render(offsets, exp, image, cfg, ncells_factor, mosaic_factor):
        exp = apply_offsets(offsets, exp, image, cfg.from_cell)
        exp = broaden(exp, ncells_factor, mosaic_factor)
        return simulate(exp, cfg)

    def images(offsets, data: _Data, ncells_factor, mosaic_factor):
        if _uniform(configs, data.experiments):
            stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *data.experiments)
            index = jnp.arange(len(configs))
            out = jax.lax.map(
                lambda args: render(offsets, *args, configs[0], ncells_factor, mosaic_factor),
                (stacked, index),
            )
            return tuple(out[i] for i in range(len(configs)))
        return tuple(
            render(offsets, data.experiments[i], i, cfg, ncells_factor, mosaic_factor)
            for i, cfg in enumerate(configs)
        )

    def total(offsets, data: _Data, ncells_factor, mosaic_factor):
        models = images(offsets, data, ncells_factor, mosaic_factor)
        value = jnp.zeros((), data.norm.dtype)
        for i, model in enumerate(models):
            value = value + per_image(model, data.observed[i], data.background[i], data.mask[i])
        return value / data.norm

    def fisher(offsets, data: _Data, ncells_factor, mosaic_factor):
        flat, unravel = ravel_pytree(offsets)

        def rendered(v):
            models = images(unravel(v), data, ncells_factor, mosaic_factor)
            return models, models

        jacobians, models = jax.jacfwd(rendered, has_aux=True)(flat)
        info = []
        for i, (m, jac) in enumerate(zip(models, jacobians, strict=True)):
            curv = curvature(m, data.observed[i], data.background[i], data.mask[i])
            info.append(jnp.einsum("sf,sfp->p", curv, jac * jac))
        return jnp.stack(info), models

    return images, total, fisher


def _optax_promotion():
    """optax's L-BFGS mixes int32 and int64 counters; let JAX promote them even where the
    caller asked for strict dtype promotion (our own code is strict-clean)."""
    return jax.numpy_dtype_promotion("standard")


class Fitter(NamedTuple):
    """The jitted functions of one fit (see :func:`make_fitter`)."""

    init: Callable
    step: Callable
    prepare: Callable
    loss: Callable


@functools.lru_cache(maxsize=16)
def make_fitter(configs: tuple[SimConfig, ...], loss: str, optimizer) -> Fitter:
    """Jitted functions of the optimiser on the model's loss, cached per configuration.

    The optimiser works on z = (x - x0) · d, the flattened offsets x from the stage's start x0
    in units of d = √(Fisher diagonal) (standard errors, for the Poisson loss), so that every
    parameter has about unit curvature whatever its physical unit.

    * ``prepare(x0, data, ncells_factor, mosaic_factor)`` gives d and, per image, the log of
      the factor on its model that makes its total equal the observed counts (the Poisson
      optimum of the scale alone, without background; d is given for that scale).
    * ``step(z, state, x0, d, free, data, ncells_factor, mosaic_factor)`` returns the new z,
      state and the loss per fitted pixel at the z it was given; ``free`` is 1 for the elements
      this stage fits and 0 for those it holds.
    * ``loss(offsets, data, ncells_factor, mosaic_factor)`` is the loss per fitted pixel.
    """
    _, total, fisher = make_model(configs, loss)
    tx = optax.with_extra_args_support(optimizer)

    @jax.jit
    def init(z):
        # Strongly typed leaves, as ``update`` returns them, so that ``step`` compiles once.
        with _optax_promotion():
            state = tx.init(z)
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype), state)

    @jax.jit
    def step(z, state, x0, d, free, data, ncells_factor, mosaic_factor):
        flat0, unravel = ravel_pytree(x0)

        # The unnormalised loss: in z its Hessian is about the identity, so the first step,
        # -gradient, is already a diagonal Gauss-Newton step. Held elements (free = 0) have
        # zero gradient and so never move.
        def fn(v):
            x = unravel(flat0 + free * v / d)
            return total(x, data, ncells_factor, mosaic_factor) * data.norm

        if optax.tree.get(state, "value") is not None:
            value, grad = optax.value_and_grad_from_state(fn)(z, state=state)
        else:
            value, grad = jax.value_and_grad(fn)(z)
        with _optax_promotion():
            updates, state = tx.update(grad, state, z, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(z, updates), state, value / data.norm

    @jax.jit
    def prepare(x0, data, ncells_factor, mosaic_factor):
        info, models = fisher(x0, data, ncells_factor, mosaic_factor)
        ratios = []
        for i, m in enumerate(models):
            signal = jnp.sum((data.observed[i] - data.background[i]) * data.mask[i])
            ratios.append(signal / jnp.sum(m * data.mask[i]))
        ratio = jnp.stack(ratios)
        ok = ratio > 0.0
        log_ratio = jnp.where(ok, jnp.log(jnp.where(ok, ratio, 1.0)), 0.0)
        if "scale" in x0:
            # Scaling a model by r scales its Fisher information by about r.
            info = info * jnp.exp(log_ratio)[:, None]
        info = jnp.sum(info, axis=0)
        top = jnp.max(info)
        # A parameter the image does not constrain keeps its own unit.
        d = jnp.where(info > 1e-12 * top, jnp.sqrt(jnp.where(info > 0.0, info, 1.0)), 1.0)
        return d, log_ratio

    return Fitter(init, step, prepare, jax.jit(total))


def _as_models(models, config) -> tuple[list[Experiment], list[SimConfig]]:
    items = models if isinstance(models, (list, tuple)) else [models]
    exps, cfgs = [], []
    for item in items:
        if isinstance(item, Experiment):
            if config is None:
                raise ValueError("an Experiment needs config=SimConfig(...)")
            exps.append(item)
            cfgs.append(config)
        else:
            exps.append(item.experiment)
            cfgs.append(item.config if config is None else config)
    return exps, cfgs


def _roi_mask(cfg: SimConfig) -> np.ndarray:
    fmin, fmax, smin, smax = cfg.roi
    inside = np.zeros((cfg.spixels, cfg.fpixels), dtype=bool)
    inside[smin : smax + 1, fmin : fmax + 1] = True
    return inside


def _per_image(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} given for {n} images")
        return list(value)
    return [value] * n


def refine(
    models,
    observed: np.ndarray | Sequence[np.ndarray],
    *,
    config: SimConfig | None = None,
    fit: Sequence[str] = ("rotation", "scale"),
    loss: str = "poisson",
    background: float | np.ndarray | Sequence = 0.01,
    mask: np.ndarray | Sequence[np.ndarray] | None = None,
    schedule: Sequence[Stage] = DEFAULT_SCHEDULE,
    optimizer: optax.GradientTransformation | None = None,
    progress: Callable[[StepInfo], None] | None = None,
) -> RefineResult:
    """Fit the models of one or several images to observed images.

    Args:
        models: a :class:`jaxdiff.experiment.Setup`, an :class:`Experiment` (with ``config``),
            or a list of them, one per image. Their values are the starting point. Images share
            cell, Ncells, distance and beam centre; orientation and scale are per image.
        observed: photons per pixel (slow, fast) of each image (ADC offset removed).
        config: the static configuration, when ``models`` are bare experiments.
        fit: parameter groups to fit, from ``jaxdiff.refine.GROUPS``.
        loss: "poisson" (negative log-likelihood) or "lsq" (Poisson-weighted least squares).
        background: photons per pixel added to the model (a constant or an image, or one per
            image); keeps the Poisson likelihood finite between spots.
        mask: pixels to fit (nonzero), per image or shared; always limited to the rendered
            region, the experiment's detector mask and :func:`valid_pixels`.
        schedule: the coarse-to-fine stages.
        optimizer: an optax transformation (default :func:`default_optimizer`).
        progress: called after every step with a :class:`StepInfo`.

    Returns:
        A :class:`RefineResult`.
    """
    start = time.perf_counter()
    exps, cfgs = _as_models(models, config)
    n = len(exps)
    obs_list = list(observed) if isinstance(observed, (list, tuple)) else [observed]
    if len(obs_list) != n:
        raise ValueError(f"observed: {len(obs_list)} images for {n} models")
    groups = check_groups(tuple(fit))
    backgrounds = _per_image(background, n, "background")
    masks = _per_image(mask, n, "mask")
    dtype = jnp.dtype(cfgs[0].dtype)
    obs_j, bg_j, mask_j = [], [], []
    for i, (exp, cfg) in enumerate(zip(exps, cfgs, strict=True)):
        obs = np.asarray(obs_list[i], dtype=np.float64)
        if obs.shape != (cfg.spixels, cfg.fpixels):
            raise ValueError(
                f"observed image {i}: shape {obs.shape}, but the model has "
                f"{(cfg.spixels, cfg.fpixels)} (slow, fast) pixels"
            )
        use = valid_pixels(obs, np.asarray(exp.mask)) & _roi_mask(cfg)
        if masks[i] is not None:
            use &= np.asarray(masks[i]) != 0
        obs_j.append(jnp.asarray(np.where(use, obs, 0.0), dtype))
        bg_j.append(jnp.asarray(backgrounds[i], dtype))
        mask_j.append(jnp.asarray(use, dtype))
    n_pixels = float(sum(float(np.sum(np.asarray(m))) for m in mask_j))
    if n_pixels == 0:
        raise ValueError("no pixel to fit: the masks leave none")
    data = _Data(
        tuple(exps), tuple(obs_j), tuple(bg_j), tuple(mask_j), jnp.asarray(n_pixels, dtype)
    )

    optimizer = optimizer if optimizer is not None else default_optimizer()
    fitter = make_fitter(tuple(cfgs), loss, optimizer)
    offsets = initial_offsets(groups, n, dtype)
    one = jnp.ones((), dtype)
    initial_loss = float(fitter.loss(offsets, data, one, one))
    history, stages = [], []
    for s, stage in enumerate(schedule):
        nf = jnp.asarray(stage.ncells_factor, dtype)
        mf = jnp.asarray(stage.mosaic_factor, dtype)
        d, log_ratio = fitter.prepare(offsets, data, nf, mf)
        if "scale" in offsets:
            offsets = {**offsets, "scale": offsets["scale"] + log_ratio}
        broadened = stage.ncells_factor != 1.0 or stage.mosaic_factor != 1.0
        held = ("ncells", "scale") if broadened else ()
        free, _ = ravel_pytree(
            {g: jnp.full(v.shape, 0.0 if g in held else 1.0, dtype) for g, v in offsets.items()}
        )
        flat0, unravel = ravel_pytree(offsets)
        z = jnp.zeros_like(flat0)
        state = fitter.init(z)
        small = 0
        for k in range(stage.steps):
            new, state, value = fitter.step(z, state, offsets, d, free, data, nf, mf)
            moved = float(jnp.max(jnp.abs(new - z)))
            z = new
            history.append(float(value))
            stages.append(s)
            if progress is not None:
                progress(StepInfo(s, k, float(value), time.perf_counter() - start))
            small = small + 1 if moved < stage.xtol else 0
            if small >= 2:
                break
        offsets = unravel(flat0 + free * z / d)
    final_loss = float(fitter.loss(offsets, data, one, one))
    fitted = tuple(
        apply_offsets(offsets, e, i, c.from_cell)
        for i, (e, c) in enumerate(zip(exps, cfgs, strict=True))
    )
    mats = np.stack(
        [
            np.asarray(a_matrix(e.crystal, c, jnp.mean(e.beam.wavelengths)))
            for e, c in zip(fitted, cfgs, strict=True)
        ]
    )
    return RefineResult(
        experiments=fitted,
        configs=tuple(cfgs),
        values=physical_values(offsets, exps, cfgs),
        offsets=offsets,
        a_matrices=mats,
        history=np.asarray(history),
        stages=np.asarray(stages, dtype=int),
        initial_loss=initial_loss,
        final_loss=final_loss,
        seconds=time.perf_counter() - start,
    )
