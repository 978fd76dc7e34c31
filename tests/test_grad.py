"""Gradients through ``simulate``: reverse and forward mode against central finite differences,
for every differentiable parameter group, at generic points (float64).

The experiment renders a 24×24 region with Bragg spots in it and moves one group along a random
direction u. Forward mode gives the derivative image, which must match a fourth-order central
difference in every pixel where the difference is well conditioned (to 1e-5 of the largest
derivative), and the weighted sum of the derivative image with random weights must match reverse
mode (grad · u) and the difference to a relative 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import Checker, make_setup, put

from jaxdiff.experiment import build
from jaxdiff.simulate import simulate

RTOL = 1e-5

# A triclinic cell with misset, structure factors, two mosaic domains and two wavelengths, on a
# rotated, swung detector pivoting about the sample, with sub-pixels and partial polarization.
ARGS = (
    "-cell 30 35 40 80 95 100 -misset 10 20 30 -hkl inputs/scaled.hkl -nointerpolate -N 5 "
    "-lambda 1 -distance 100 -pixel 0.1 -detpixels 512 -roi 416 439 280 303 -detector_rotx 1 "
    "-detector_roty 2 -detector_rotz 3 -twotheta 5 -pivot sample -oversample 2 -polar 0.9 "
    "-mosaic 0.5 -mosaic_dom 2 -dispersion 0.2 -dispsteps 2"
)

# nanoBragg rounds each mosaic domain's angle to float32, a relative 6e-8 that finite differences
# divide by the step: the spread is checked at 0.01°, where that stays below 1e-6 of the result.
SMALL_SPREAD = 1.75e-4

# group: (path in the Experiment, finite-difference step along a unit-scale direction)
GROUPS = {
    "rotation": (("crystal", "rotation"), 1e-5),
    "misset": (("crystal", "misset"), 1e-5),
    "cell_lengths": (("crystal", "cell"), 1e-4),
    "cell_angles": (("crystal", "cell"), 1e-6),
    "ncells": (("crystal", "ncells"), 1e-4),
    "mosaic_spread": (("crystal", "mosaic_spread"), 2e-5),
    "distance": (("detector", "distance"), 1e-7),
    "beam_f": (("detector", "beam_f"), 1e-7),
    "beam_s": (("detector", "beam_s"), 1e-7),
    "detector_rotations": (("detector", "rotations"), 1e-5),
    "twotheta": (("detector", "twotheta"), 1e-5),
    "wavelengths": (("beam", "wavelengths"), 1e-6),
    "fluence": (("beam", "fluence"), 1e-3),
    "fhkl": (("fhkl",), 1e-3),
}


def direction(name: str, value, rng) -> jnp.ndarray:
    """A random direction of unit scale for the group (cell lengths in Å, angles in rad...)."""
    shape = jnp.shape(value)
    u = rng.normal(size=shape) if shape else rng.choice([-1.0, 1.0])
    if name == "cell_lengths":
        u = np.concatenate([u[:3], np.zeros(3)])
    elif name == "cell_angles":
        u = np.concatenate([np.zeros(3), u[3:]])
    elif name == "fhkl":
        u = u * np.asarray(value)
    elif name in ("fluence", "wavelengths"):
        u = u * np.asarray(value) if shape else u * float(value)
    return jnp.asarray(u, dtype=jnp.float64)


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    setup = make_setup(ARGS, tmp_path_factory)
    exp = setup.experiment
    # A generic orientation offset and non-integer Ncells (the continuous generalisation is
    # what a fit moves through).
    exp = put(exp, ("crystal", "rotation"), jnp.asarray([2e-3, -1e-3, 3e-3]))
    exp = put(exp, ("crystal", "ncells"), jnp.asarray([5.3, 4.6, 5.8]))
    paths = list(dict.fromkeys(p for p, _ in GROUPS.values()))
    return Checker(exp, setup.config, paths)


def _check(checker, name, path, h, seed, start=None):
    rng = np.random.default_rng(seed)
    u = direction(name, checker.params[path], rng)
    fwd, fd, fd_2h = checker.along(path, u, h, start)
    fmin, fmax, smin, smax = checker.cfg.roi
    fwd, fd, fd_2h = (a[smin : smax + 1, fmin : fmax + 1] for a in (fwd, fd, fd_2h))
    scale = float(np.max(np.abs(fd)))
    assert scale > 0.0 and np.all(np.isfinite(fwd))
    # Nearest-neighbour structure factors jump where h, k or l crosses a half-integer; a pixel
    # whose stencil straddles a jump has no derivative to compare. Everywhere else the two
    # stencils agree to far better than the tolerance.
    smooth = np.abs(fd - fd_2h) <= 1e-6 * scale
    assert smooth.mean() > 0.9, f"{name}: only {smooth.mean():.0%} of pixels are smooth"
    np.testing.assert_allclose(fwd[smooth], fd[smooth], rtol=0, atol=RTOL * scale)
    # Weights with the sign of the derivative: no cancellation in the sum.
    weights = np.zeros(checker.cfg.roi_shape)
    weights[smooth] = np.sign(fd[smooth]) * rng.uniform(0.5, 1.5, int(smooth.sum()))
    expected = float(np.sum(weights * fd))
    assert float(np.sum(weights * fwd)) == pytest.approx(expected, rel=RTOL), name
    full = np.zeros((checker.cfg.spixels, checker.cfg.fpixels))
    full[smin : smax + 1, fmin : fmax + 1] = weights
    assert checker.reverse(path, u, full, start) == pytest.approx(expected, rel=RTOL), name


@pytest.mark.parametrize("name", list(GROUPS))
def test_group_gradient_matches_finite_differences(checker, name):
    path, h = GROUPS[name]
    start = jnp.asarray(SMALL_SPREAD, dtype=jnp.float64) if name == "mosaic_spread" else None
    _check(checker, name, path, h, seed=list(GROUPS).index(name), start=start)


def test_grad_over_the_whole_experiment(tmp_path):
    """``jax.grad`` with respect to the whole Experiment, as ``build`` makes it: every leaf is
    floating, every gradient finite; the mask only selects pixels (zero gradient)."""
    setup = build(
        "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 5 -lambda 1 -distance 100 "
        "-pixel 0.4 -detpixels 12 -phi 0 -osc 1 -phisteps 2 -mosaic 0.3 -mosaic_dom 2".split(),
        tmp_path,
    )
    exp, cfg = setup.experiment, setup.config
    leaves = jax.tree_util.tree_leaves_with_path(exp)
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for _, x in leaves), [
        (jax.tree_util.keystr(p), x.dtype) for p, x in leaves
    ]
    grad = jax.grad(lambda e: simulate(e, cfg).sum())(exp)
    for path, g in jax.tree_util.tree_leaves_with_path(grad):
        assert np.all(np.isfinite(np.asarray(g))), jax.tree_util.keystr(path)
    assert np.all(np.asarray(grad.mask) == 0.0)
    for moved in (
        grad.detector.distance,
        grad.beam.fluence,
        grad.crystal.cell,
        grad.crystal.ncells,
    ):
        assert np.any(np.asarray(moved) != 0.0)
