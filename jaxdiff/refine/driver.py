"""The refinement driver: fit orientation (and optionally cell, Ncells, mosaic spread, scale,
distance, beam centre) of one or several images jointly, by gradient on optax, coarse to fine,
after a global orientation search (:mod:`jaxdiff.refine.search`), and judge the result.

A Bragg spot is narrow: a model spot that misses its observed spot sees no gradient towards
it. The schedule therefore starts with broadened spots (fewer unit cells, or a larger mosaic
spread when the experiment has several mosaic domains), where model and observed spots overlap
even from a misorientation of several tenths of a degree, and ends with the real model. The
optimiser's state restarts at each stage because the loss changes. While spots are broadened,
Ncells and the scale are held (the scale at the value that matches the observed total): fitted
there, Ncells would undo the broadening and the scale would fade the mismatched model.

The images of a rotation sweep share one orientation (``orientation="shared"``): each frame's
model is the first frame's with φ moved on by the oscillation (:func:`sweep_models`).

A fit is judged converged from its own evidence (:class:`Criteria`): the loss must be near what
Poisson noise leaves under the fitted model, and the fitted model must account for the
observed counts (a fit that misses the spots lowers the scale to fade its wrong spots).
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
from jaxdiff.refine.losses import expected_poisson_nll, loss_function, poisson_nll, valid_pixels
from jaxdiff.refine.params import (
    ROTATION_UNIT,
    a_matrix,
    apply_offsets,
    check_groups,
    detector_groups,
    initial_offsets,
    physical_values,
)
from jaxdiff.refine.search import Search, SearchResult, search_orientation
from jaxdiff.simulate import Experiment, rotation_frames, simulate


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
            at the stage's start) and the gradient is small (``gtol``).
        gtol: ... and the loss (unnormalised, in units of log-likelihood) is expected to fall
            by less than this with a Newton step, ½|g|² in those units. Small steps with a
            larger gradient restart the optimiser's memory instead of ending the stage.
    """

    steps: int = 100
    ncells_factor: float = 1.0
    mosaic_factor: float = 1.0
    xtol: float = 0.01
    gtol: float = math.inf


DEFAULT_SCHEDULE = (
    Stage(steps=25, ncells_factor=0.25, xtol=0.1),
    Stage(steps=25, ncells_factor=0.5, xtol=0.1),
    Stage(steps=100, xtol=0.01, gtol=0.01),
)

# Restarts of the optimiser's memory in one stage, at most.
_RESTARTS = 3


class Criteria(NamedTuple):
    """When a fit counts as converged.

    Attributes:
        loss_ratio: the Poisson loss of the fitted model, over the loss Poisson noise leaves
            under that model (:func:`jaxdiff.refine.losses.expected_poisson_nll`), at most this.
            About 1 for a right model; a model that misses spots leaves many times more.
        signal_ratio: the fitted model's counts over the observed counts (background
            subtracted), per image, at least this.
    """

    loss_ratio: float = 2.0
    signal_ratio: float = 0.5


DEFAULT_CRITERIA = Criteria()
DEFAULT_SEARCH = Search()


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
        converged: the verdict (see :class:`Criteria`).
        reason: why, in words.
        loss_ratio: the fitted model's Poisson loss over what Poisson noise leaves.
        signal_ratios: per image, the fitted model's counts over the observed counts.
        search: what the orientation search found (None when it did not run).
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
    converged: bool
    reason: str
    loss_ratio: float
    signal_ratios: np.ndarray
    search: SearchResult | None


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
            info.append(jnp.einsum("...,...p->p", curv, jac * jac))
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
    images: Callable


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
      state, the loss per fitted pixel at the z it was given and the expected decrease of the
      unnormalised loss by a Newton step from there, ½|g|²; ``free`` is 1 for the elements
      this stage fits and 0 for those it holds.
    * ``loss(offsets, data, ncells_factor, mosaic_factor)`` is the loss per fitted pixel.
    * ``images(offsets, data, ncells_factor, mosaic_factor)``: the model image of each image.
    """
    images, total, fisher = make_model(configs, loss)
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
        # The Newton decrement in z, where the Hessian is about the identity.
        decrement = 0.5 * jnp.sum(grad * grad)
        return optax.apply_updates(z, updates), state, value / data.norm, decrement

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

    return Fitter(init, step, prepare, jax.jit(total), jax.jit(images))


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


def _per_image(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} given for {n} images")
        return list(value)
    return [value] * n


def oscillation(exp: Experiment, config: SimConfig) -> float:
    """The φ range [rad] one image covers: φ steps × φ step, as the model renders it."""
    return float(exp.crystal.phistep) * config.phisteps


def sweep_models(model, frames: int, config: SimConfig | None = None) -> list:
    """The models of ``frames`` consecutive frames of a rotation sweep whose first frame is
    ``model`` (a :class:`jaxdiff.experiment.Setup`, or an :class:`Experiment` with ``config``):
    frame k (from 0) starts at φ0 + k × the oscillation (:func:`oscillation`)."""
    if frames < 1:
        raise ValueError(f"frames: need at least 1, got {frames}")
    is_exp = isinstance(model, Experiment)
    if is_exp and config is None:
        raise ValueError("an Experiment needs config=SimConfig(...)")
    exp = model if is_exp else model.experiment
    cfg = config if config is not None else model.config
    series = rotation_frames(exp, frames, oscillation(exp, cfg))
    return series if is_exp else [dataclasses.replace(model, experiment=e) for e in series]


def _verdict(
    models, data: _Data, background: list[np.ndarray], criteria: Criteria
) -> tuple[bool, str, float, np.ndarray]:
    """(converged, reason, loss ratio, signal ratios) of the fitted model images."""
    nll = expected = 0.0
    signal = []
    for i, model in enumerate(models):
        m = np.asarray(model, dtype=np.float64)
        obs = np.asarray(data.observed[i], dtype=np.float64)
        use = np.asarray(data.mask[i], dtype=np.float64)
        lam = np.broadcast_to(m + background[i], m.shape)
        nll += float(poisson_nll(m, obs, background[i], use))
        expected += float(np.sum(expected_poisson_nll(np.maximum(lam, 1e-300)) * use))
        observed_signal = float(np.sum((obs - background[i]) * use))
        model_signal = float(np.sum(m * use))
        signal.append(model_signal / observed_signal if observed_signal > 0.0 else 1.0)
    ratios = np.asarray(signal)
    ratio = nll / expected if expected > 0.0 else math.inf
    if not math.isfinite(nll):
        return False, "the loss is not finite", ratio, ratios
    if ratio > criteria.loss_ratio:
        return (
            False,
            f"the loss is {ratio:.3g} times what Poisson noise leaves under the fitted model "
            f"(a converged fit: at most {criteria.loss_ratio:g}); the model misses the data",
            ratio,
            ratios,
        )
    worst = int(np.argmin(ratios))
    if ratios[worst] < criteria.signal_ratio:
        return (
            False,
            f"the fitted model holds {ratios[worst]:.0%} of the observed counts of image "
            f"{worst} (a converged fit: at least {criteria.signal_ratio:.0%}); the fit faded "
            "spots it could not match",
            ratio,
            ratios,
        )
    return (
        True,
        f"the loss is {ratio:.3g} times what Poisson noise leaves under the fitted model and "
        f"the model holds {float(np.min(ratios)):.0%} or more of the observed counts",
        ratio,
        ratios,
    )


def refine(
    models,
    observed: np.ndarray | Sequence[np.ndarray],
    *,
    config: SimConfig | None = None,
    fit: Sequence[str] = ("rotation", "scale"),
    orientation: str = "per_image",
    loss: str = "poisson",
    background: float | np.ndarray | Sequence = 0.01,
    mask: np.ndarray | Sequence[np.ndarray] | None = None,
    schedule: Sequence[Stage] = DEFAULT_SCHEDULE,
    search: Search | None = DEFAULT_SEARCH,
    criteria: Criteria = DEFAULT_CRITERIA,
    optimizer: optax.GradientTransformation | None = None,
    progress: Callable[[StepInfo], None] | None = None,
) -> RefineResult:
    """Fit the models of one or several images to observed images.

    Args:
        models: a :class:`jaxdiff.experiment.Setup`, an :class:`Experiment` (with ``config``),
            or a list of them, one per image (for a rotation sweep, :func:`sweep_models`). Their
            values are the starting point. Images share cell, Ncells, mosaic spread, distance
            and beam centre; the scale is per image.
        observed: photons per pixel of each image (ADC offset removed), in the shape of its
            detector (:attr:`jaxdiff.Detector.shape`): (slow, fast), or (panel, slow, fast)
            for a multi-panel detector.
        config: the static configuration, when ``models`` are bare experiments.
        fit: parameter groups to fit, from ``jaxdiff.refine.GROUPS`` (distance and
            beam_centre: single-panel detectors only).
        orientation: "per_image" (separate crystals or stills) or "shared" (one crystal: the
            frames of a sweep, each at its own φ).
        loss: "poisson" (negative log-likelihood) or "lsq" (Poisson-weighted least squares).
        background: photons per pixel added to the model (a constant or an image, or one per
            image); keeps the Poisson likelihood finite between spots.
        mask: pixels to fit (nonzero), per image or shared; always limited to the rendered
            region, the experiment's detector mask and :func:`valid_pixels`.
        schedule: the coarse-to-fine stages.
        search: the global orientation search run before the schedule when the orientation is
            fitted (None: start the schedule from the given orientation).
        criteria: when the fit counts as converged.
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
    if orientation not in ("per_image", "shared"):
        raise ValueError(f"orientation: {orientation!r}; choose per_image or shared")
    if "mosaic" in groups and any(
        e.crystal.mosaic_axes.shape[0] < 2 or float(e.crystal.mosaic_spread) <= 0.0 for e in exps
    ):
        raise ValueError(
            "mosaic: the model has no mosaic spread to fit; give it a spread and several "
            "domains (-mosaic, -mosaic_domains)"
        )
    moved = detector_groups(groups)
    if moved and any(e.detector.panels for e in exps):
        raise ValueError(
            f"{', '.join(moved)}: fitted for single-panel detectors only; each panel of a "
            "multi-panel detector has its own position"
        )
    backgrounds = _per_image(background, n, "background")
    masks = _per_image(mask, n, "mask")
    dtype = jnp.dtype(cfgs[0].dtype)
    obs_np, use_np, obs_j, bg_j, mask_j = [], [], [], [], []
    for i, (exp, cfg) in enumerate(zip(exps, cfgs, strict=True)):
        obs = np.asarray(obs_list[i], dtype=np.float64)
        if obs.shape != exp.detector.shape:
            axes = "panel, slow, fast" if exp.detector.panels else "slow, fast"
            raise ValueError(
                f"observed image {i}: shape {obs.shape}, but the model has "
                f"{exp.detector.shape} ({axes}) pixels"
            )
        use = valid_pixels(obs, np.asarray(exp.mask)) & cfg.roi_mask()
        if masks[i] is not None:
            use &= np.asarray(masks[i]) != 0
        obs_np.append(np.where(use, obs, 0.0))
        use_np.append(use)
        obs_j.append(jnp.asarray(obs_np[-1], dtype))
        bg_j.append(jnp.asarray(backgrounds[i], dtype))
        mask_j.append(jnp.asarray(use, dtype))
    n_pixels = float(sum(float(np.sum(m)) for m in use_np))
    if n_pixels == 0:
        raise ValueError("no pixel to fit: the masks leave none")
    data = _Data(
        tuple(exps), tuple(obs_j), tuple(bg_j), tuple(mask_j), jnp.asarray(n_pixels, dtype)
    )

    optimizer = optimizer if optimizer is not None else default_optimizer()
    fitter = make_fitter(tuple(cfgs), loss, optimizer)
    offsets = initial_offsets(groups, n, dtype, orientation == "shared")
    one = jnp.ones((), dtype)
    initial_loss = float(fitter.loss(offsets, data, one, one))
    found = None
    if search is not None and "rotation" in offsets:
        if orientation == "shared":
            found = search_orientation(exps, cfgs, obs_np, use_np, search)
            rows = found.offset[None]
        else:
            each = [
                search_orientation([e], [c], [o], [u], search)
                for e, c, o, u in zip(exps, cfgs, obs_np, use_np, strict=True)
            ]
            rows = np.stack([f.offset for f in each])
            found = SearchResult(
                rows,
                sum(f.start_score for f in each),
                sum(f.best_score for f in each),
                sum(f.spots for f in each),
            )
        offsets = {**offsets, "rotation": jnp.asarray(rows / ROTATION_UNIT, dtype)}
    history, stages = [], []
    for s, stage in enumerate(schedule):
        nf = jnp.asarray(stage.ncells_factor, dtype)
        mf = jnp.asarray(stage.mosaic_factor, dtype)
        d, log_ratio = fitter.prepare(offsets, data, nf, mf)
        if "scale" in offsets:
            offsets = {**offsets, "scale": offsets["scale"] + log_ratio}
        broadened = stage.ncells_factor != 1.0 or stage.mosaic_factor != 1.0
        held = ("ncells", "mosaic", "scale") if broadened else ()
        free, _ = ravel_pytree(
            {g: jnp.full(v.shape, 0.0 if g in held else 1.0, dtype) for g, v in offsets.items()}
        )
        flat0, unravel = ravel_pytree(offsets)
        z = jnp.zeros_like(flat0)
        state = fitter.init(z)
        small = restarts = 0
        for k in range(stage.steps):
            new, state, value, decrement = fitter.step(z, state, offsets, d, free, data, nf, mf)
            moved = float(jnp.max(jnp.abs(new - z)))
            z = new
            history.append(float(value))
            stages.append(s)
            if progress is not None:
                progress(StepInfo(s, k, float(value), time.perf_counter() - start))
            small = small + 1 if moved < stage.xtol else 0
            if small >= 2:
                if float(decrement) <= stage.gtol or restarts == _RESTARTS:
                    break
                # Short steps on a slope: the line search is stuck on an outdated curvature
                # model; start the memory afresh from here.
                state = fitter.init(z)
                small, restarts = 0, restarts + 1
        offsets = unravel(flat0 + free * z / d)
    final_loss = float(fitter.loss(offsets, data, one, one))
    converged, reason, loss_ratio, signal_ratios = _verdict(
        fitter.images(offsets, data, one, one),
        data,
        [np.asarray(b, dtype=np.float64) for b in bg_j],
        criteria,
    )
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
        converged=converged,
        reason=reason,
        loss_ratio=loss_ratio,
        signal_ratios=signal_ratios,
        search=found,
    )
