"""A global orientation search before the local fit: many candidate orientations scored in one
vmapped batch against the observed spots.

A gradient fit only sees a spot it already overlaps, so a start a few degrees off (for a large
cell, more than about one spot width at the edge of the detector) ends in a wrong minimum. The
search needs no rendering: each observed spot (a local maximum well above the background) gives
a scattering vector q, turned back to φ = 0 by its frame's mean φ. For a candidate orientation,
q's fractional Miller index h = a·q is rounded to the nearest reflection, and the spot's
angular residual is ε = |(h - round(h))·(a*, b*, c*)| / |q|, the rotation that would bring the
reflection onto the spot. The score is Σ exp(-ε² / 2τ²) over the spots: a sum of Gaussians in
angle, equally wide for low and high resolution spots and for any cell size. A ball of
candidates on a cubic grid around the start is scored at a tolerance τ of the grid's step, then
a finer ball around the best, and the local fit starts from the winner.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxdiff.config import SimConfig
from jaxdiff.crystal import cell_vectors, phi_angles
from jaxdiff.detector import detector_geometry, pixel_positions
from jaxdiff.rotation import rotate_axis
from jaxdiff.simulate import Experiment


class Search(NamedTuple):
    """How far and how finely the orientation search looks.

    Attributes:
        radius_deg: the candidates fill a ball of this radius [deg] around the start.
        step_deg: grid step of the first pass [deg]; the second pass searches a ball of this
            radius around the first pass's best with a quarter of the step.
        spots: at most this many of the brightest spots per image enter the score.
        min_spots: with fewer spots in all the images together the search is skipped.
    """

    radius_deg: float = 4.0
    step_deg: float = 0.5
    spots: int = 400
    min_spots: int = 8


def find_spots(observed: np.ndarray, mask: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(slow, fast) indices of up to ``count`` brightest local maxima above the background
    (the median plus 5 robust spreads, at least 1 photon above it), among ``mask``'s pixels."""
    obs = np.where(mask, np.asarray(observed, dtype=np.float64), -np.inf)
    finite = obs[np.isfinite(obs)]
    if finite.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    med = float(np.median(finite))
    spread = max(1.4826 * float(np.median(np.abs(finite - med))), 1.0)
    peak = obs > med + 5.0 * spread
    padded = np.pad(obs, 1, constant_values=-np.inf)
    rows, cols = obs.shape
    for ds in (-1, 0, 1):
        for df in (-1, 0, 1):
            if ds or df:
                peak &= obs >= padded[1 + ds : 1 + ds + rows, 1 + df : 1 + df + cols]
    s, f = np.nonzero(peak)
    order = np.argsort(obs[s, f])[::-1][:count]
    return s[order], f[order]


def image_spots(
    observed: np.ndarray, mask: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(panel, slow, fast) indices of up to ``count`` brightest spots of an image, (slow, fast)
    (panel 0) or (panel, slow, fast): :func:`find_spots` on each panel, the brightest kept."""
    obs = np.asarray(observed, dtype=np.float64)
    use = np.broadcast_to(np.asarray(mask), obs.shape)
    if obs.ndim == 2:
        s, f = find_spots(obs, use, count)
        return np.zeros_like(s), s, f
    found = [find_spots(obs[p], use[p], count) for p in range(obs.shape[0])]
    panel = np.concatenate([np.full(s.size, p, dtype=int) for p, (s, _) in enumerate(found)])
    s = np.concatenate([s for s, _ in found]).astype(int)
    f = np.concatenate([f for _, f in found]).astype(int)
    order = np.argsort(obs[panel, s, f], kind="stable")[::-1][:count]
    return panel[order], s[order], f[order]


def panel_spot_vectors(
    exp: Experiment, cfg: SimConfig, panel: np.ndarray, spix: np.ndarray, fpix: np.ndarray
) -> Array:
    """:func:`spot_vectors` of pixels on the panels ``panel`` of a multi-panel detector (on
    the one panel of a single-panel detector, ``panel`` all zero)."""
    if not exp.detector.panels:
        return spot_vectors(exp, cfg, spix, fpix)
    parts, where = [], []
    for p in np.unique(panel):
        sel = np.flatnonzero(panel == p)
        one = dataclasses.replace(exp, detector=exp.detector.panel(int(p)), mask=exp.mask[p])
        parts.append(spot_vectors(one, cfg, spix[sel], fpix[sel]))
        where.append(sel)
    return jnp.concatenate(parts)[np.argsort(np.concatenate(where))]


def spot_vectors(exp: Experiment, cfg: SimConfig, spix: np.ndarray, fpix: np.ndarray) -> Array:
    """Scattering vectors [1/Å] of pixel centres (P,), turned back to φ = 0 by the frame's
    mean φ: the vectors a reflection must match at φ = 0 (mean source, mean wavelength)."""
    beam, det = exp.beam, exp.detector
    dtype = det.pixel_size.dtype
    geom = detector_geometry(det, beam.direction, cfg.pivot_sample)
    pos = pixel_positions(
        geom,
        jnp.asarray(spix, dtype),
        jnp.asarray(fpix, dtype),
        1,
        jnp.zeros(1, dtype),
        det.pixel_size,
        beam.direction,
        cfg.curved,
    )[:, 0, 0]
    out = pos / jnp.linalg.norm(pos, axis=-1, keepdims=True)
    incident = -jnp.mean(beam.source_dirs, axis=0)
    incident = incident / jnp.linalg.norm(incident)
    q = (out - incident) / (jnp.mean(beam.wavelengths) * 1e10)
    phi = jnp.mean(phi_angles(exp.crystal, cfg.phisteps))
    return rotate_axis(q, exp.crystal.spindle, -phi)


def lattice_score(real: Array, recip: Array, q: Array, weight: Array, tol: Array) -> Array:
    """Σ weight · exp(-ε²/2tol²) of the spots' angular residuals ε [rad] to the lattice with
    real rows a, b, c [Å] and reciprocal rows a*, b*, c* [1/Å]; q (P, 3) [1/Å]."""
    h = q @ real.T
    dq = (h - jnp.round(h)) @ recip
    eps2 = jnp.sum(dq * dq, axis=-1) / jnp.sum(q * q, axis=-1)
    return jnp.sum(weight * jnp.exp(-0.5 * eps2 / (tol * tol)))


def ball(radius: float, step: float) -> np.ndarray:
    """Points of a cubic grid of ``step`` inside a ball of ``radius``, the centre first."""
    n = int(math.floor(radius / step))
    axis = np.arange(-n, n + 1) * step
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.sum(grid * grid, axis=1) <= radius * radius + 1e-12]
    order = np.argsort(np.sum(grid * grid, axis=1), kind="stable")
    return grid[order]


def _scores(crystal, from_cell: bool, candidates, q, weight, tol):
    def one(rotation):
        real, recip = cell_vectors(dataclasses.replace(crystal, rotation=rotation), from_cell)
        return lattice_score(real * 1e10, recip, q, weight, tol)

    return jax.lax.map(one, crystal.rotation + candidates, batch_size=256)


_scores_jit = jax.jit(_scores, static_argnums=1)


class SearchResult(NamedTuple):
    """The orientation search's answer: the rotation-vector offset [rad] to start from, the
    scores at the start and at that offset (tolerance of the finer pass), and the spot count."""

    offset: np.ndarray
    start_score: float
    best_score: float
    spots: int


def search_orientation(
    experiments: list[Experiment],
    configs: list[SimConfig],
    observed: list[np.ndarray],
    masks: list[np.ndarray],
    search: Search,
) -> SearchResult:
    """The best rotation offset, shared by the images (each at its own φ), in the ball of
    ``search`` around the first experiment's orientation; zero when too few spots are found."""
    qs, weights = [], []
    for exp, cfg, obs, mask in zip(experiments, configs, observed, masks, strict=True):
        panel, spix, fpix = image_spots(obs, mask, search.spots)
        # A fixed number of spots per image (the missing ones with weight 0), so that the
        # scoring compiles once per configuration.
        n = spix.size
        pad = np.zeros(search.spots - n, int)
        panel, spix, fpix = (np.concatenate([a, pad]) for a in (panel, spix, fpix))
        qs.append(panel_spot_vectors(exp, cfg, panel, spix, fpix))
        weights.append(np.arange(search.spots) < n)
    weight_np = np.concatenate(weights)
    n_spots = int(np.sum(weight_np))
    zero = np.zeros(3)
    if n_spots < search.min_spots:
        return SearchResult(zero, 0.0, 0.0, n_spots)
    q = jnp.concatenate(qs)
    dtype = q.dtype
    weight = jnp.asarray(weight_np, dtype)
    crystal = experiments[0].crystal
    from_cell = configs[0].from_cell
    step = math.radians(search.step_deg)
    coarse = jnp.asarray(ball(math.radians(search.radius_deg), step), dtype)
    scores = _scores_jit(crystal, from_cell, coarse, q, weight, jnp.asarray(step, dtype))
    best = np.asarray(coarse[int(jnp.argmax(scores))])
    fine = jnp.asarray(best + ball(step, step / 4.0), dtype)
    tol = jnp.asarray(step / 4.0, dtype)
    scores = _scores_jit(crystal, from_cell, fine, q, weight, tol)
    i = int(jnp.argmax(scores))
    start = float(_scores_jit(crystal, from_cell, jnp.zeros((1, 3), dtype), q, weight, tol)[0])
    if float(scores[i]) <= start:
        return SearchResult(zero, start, start, n_spots)
    return SearchResult(np.asarray(fine[i]), start, float(scores[i]), n_spots)
