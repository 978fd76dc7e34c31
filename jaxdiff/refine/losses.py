"""Losses between a model image and an observed one, and the pixel masks they use.

Images are photons per pixel, (slow, fast). A loss sums over the pixels where ``mask`` is
nonzero; ``mask`` may also hold weights in [0, 1]. Masks are built once in NumPy from the
observed image, never traced.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import xlogy

LOSSES = ("poisson", "lsq")


def poisson_nll(
    model: Array, observed: Array, background: Array | float = 0.0, mask: Array | None = None
) -> Array:
    """Poisson negative log-likelihood of ``observed`` counts given ``model`` + ``background``.

    Written as half the Poisson deviance, Σ λ - k + k log(k/λ) with λ = model + background:
    the likelihood up to a constant, zero when λ = k everywhere, and about half the number of
    pixels for a correct model under Poisson noise. ``background`` [photons] is a constant or an
    image; it must keep λ positive wherever k > 0 (a pixel with counts and λ = 0 is infinitely
    unlikely).
    """
    lam = model + background
    k = jnp.maximum(observed, 0.0)
    terms = lam - k + xlogy(k, k) - xlogy(k, lam)
    if mask is not None:
        terms = terms * mask
    return jnp.sum(terms)


def _expected_table(top: float = 1000.0, points: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """log λ and E[half deviance] of one Poisson pixel of mean λ, for λ up to ``top``."""
    lam = np.geomspace(1e-8, top, points)
    kmax = int(top + 12.0 * np.sqrt(top) + 30.0)
    k = np.arange(kmax + 1, dtype=np.float64)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(k[1:]))])
    klogk = np.where(k > 0, k * np.log(np.where(k > 0, k, 1.0)), 0.0)
    log_pmf = k[None, :] * np.log(lam[:, None]) - lam[:, None] - log_fact[None, :]
    # E[λ - k + k log k - k log λ] = E[k log k] - λ log λ, since E[k] = λ.
    expected = np.exp(log_pmf) @ klogk - lam * np.log(lam)
    return np.log(lam), expected


_EXPECTED = _expected_table()


def expected_poisson_nll(lam: np.ndarray) -> np.ndarray:
    """The mean of :func:`poisson_nll`'s per-pixel terms for counts drawn from Poisson(λ):
    what a correct model leaves under shot noise (λ [photons] > 0; about ½ for large λ, about
    λ·log(1/λ) for small λ). NumPy, not traced."""
    lam = np.asarray(lam, dtype=np.float64)
    log_lam, table = _EXPECTED
    inside = np.interp(np.log(np.clip(lam, 1e-8, None)), log_lam, table)
    # Beyond the table: the asymptotic series ½ + 1/(12λ) + 1/(24λ²).
    big = np.maximum(lam, 1.0)
    series = 0.5 + 1.0 / (12.0 * big) + 1.0 / (24.0 * big**2)
    return np.where(lam > np.exp(log_lam[-1]), series, inside)


def _weights(observed: Array, weights: Array | None) -> Array:
    """The least-squares weights: as given, or Poisson's 1 / max(observed, 1)."""
    return 1.0 / jnp.maximum(observed, 1.0) if weights is None else weights


def weighted_least_squares(
    model: Array,
    observed: Array,
    background: Array | float = 0.0,
    mask: Array | None = None,
    weights: Array | None = None,
) -> Array:
    """½ Σ w (model + background - observed)²; by default w = 1 / max(observed, 1), Poisson's."""
    resid = model + background - observed
    terms = _weights(observed, weights) * resid * resid
    if mask is not None:
        terms = terms * mask
    return 0.5 * jnp.sum(terms)


def poisson_curvature(
    model: Array, observed: Array, background: Array | float = 0.0, mask: Array | None = None
) -> Array:
    """Per-pixel Fisher information of :func:`poisson_nll` about the model value, 1/λ."""
    curv = 1.0 / (model + background)
    return curv if mask is None else curv * mask


def least_squares_curvature(
    model: Array,
    observed: Array,
    background: Array | float = 0.0,
    mask: Array | None = None,
    weights: Array | None = None,
) -> Array:
    """Per-pixel second derivative of :func:`weighted_least_squares` about the model, w."""
    curv = jnp.broadcast_to(_weights(observed, weights), jnp.shape(model))
    return curv if mask is None else curv * mask


def loss_function(name: str):
    """``(loss, curvature)`` of the loss called ``name`` ("poisson" or "lsq").

    The curvature is the per-pixel Gauss-Newton weight: Σ_p curvature_p (∂model_p/∂θ)² is the
    expected second derivative of the loss along a parameter θ (the Fisher information for the
    Poisson loss), used to put parameters on a common scale.
    """
    if name == "poisson":
        return poisson_nll, poisson_curvature
    if name == "lsq":
        return weighted_least_squares, least_squares_curvature
    raise ValueError(f"unknown loss {name!r}: choose from {', '.join(LOSSES)}")


def valid_pixels(
    observed: np.ndarray,
    detector_mask: np.ndarray | None = None,
    saturation: float | None = None,
) -> np.ndarray:
    """Pixels that can be fitted: finite, not negative, below ``saturation`` (overloads are
    clipped, so their counts say nothing), and not masked off by ``detector_mask``."""
    obs = np.asarray(observed, dtype=np.float64)
    good = np.isfinite(obs) & (obs >= 0.0)
    if saturation is not None:
        good &= obs < saturation
    if detector_mask is not None:
        good &= np.asarray(detector_mask) != 0
    return good


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean (slow, fast) mask by ``radius`` pixels (a square neighbourhood)."""
    out = np.asarray(mask, dtype=bool)
    for axis in (0, 1):
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, radius + 1):
            if shift >= n:
                break
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def spot_pixels(observed: np.ndarray, threshold: float | None = None, radius: int = 4):
    """Pixels within ``radius`` of a pixel brighter than ``threshold`` [photons].

    The default threshold is the median plus 5 times a robust spread (1.4826 × the median
    absolute deviation, at least 1 photon), which picks Bragg spots over a flat background.
    Restricting a loss to these pixels (plus a margin for how far spots may move) saves nothing
    in rendering but removes the many background pixels from a least-squares fit.
    """
    obs = np.asarray(observed, dtype=np.float64)
    if threshold is None:
        finite = obs[np.isfinite(obs)]
        med = float(np.median(finite))
        spread = max(1.4826 * float(np.median(np.abs(finite - med))), 1.0)
        threshold = med + 5.0 * spread
    return dilate(np.isfinite(obs) & (obs > threshold), radius)
