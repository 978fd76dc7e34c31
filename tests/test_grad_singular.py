"""Gradients through ``simulate`` at the singular points: a pixel exactly on a Bragg peak
(integer h, k, l), the direct-beam pixel (h = k = l = 0, scattering vector zero), zero extra
rotation, zero mosaic spread with several domains; and no NaN or inf in any gradient image over
a sweep of orientations (float64).

The A-matrix crystal is built so that pixel (slow 32, fast 52) sees reflection (1, 0, 0)
exactly: a* is that pixel's scattering vector and b*, c* are perpendicular to it. The beam hits
the centre of pixel (32, 32).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import Checker, make_setup

from jaxdiff.detector import detector_geometry, pixel_positions

ARGS = (
    "-mat inputs/A.mat -default_F 100 -N 5 -lambda 1 -distance 100 -pixel 0.1 -detpixels 64 "
    "-mosaic 0.3 -mosaic_dom 3 -oversample 1"
)
BEAM_PIXEL = (32, 32)
PEAK_PIXEL = (32, 52)
RTOL = 1e-5

PATHS = {
    "rotation": ("crystal", "rotation"),
    "recip0": ("crystal", "recip0"),
    "ncells": ("crystal", "ncells"),
    "mosaic_spread": ("crystal", "mosaic_spread"),
    "distance": ("detector", "distance"),
    "beam_f": ("detector", "beam_f"),
    "beam_s": ("detector", "beam_s"),
    "wavelengths": ("beam", "wavelengths"),
}
STEPS = {
    "rotation": 1e-5,
    "recip0": 1e-6,
    "ncells": 1e-4,
    "mosaic_spread": 2e-5,
    "distance": 1e-7,
    "beam_f": 1e-7,
    "beam_s": 1e-7,
    "wavelengths": 1e-6,
}


def singular_experiment(setup):
    exp, cfg = setup.experiment, setup.config
    det = exp.detector
    pix = float(det.pixel_size)
    det = dataclasses.replace(
        det,
        beam_f=jnp.asarray((BEAM_PIXEL[1] + 0.5) * pix),
        beam_s=jnp.asarray((BEAM_PIXEL[0] + 0.5) * pix),
    )
    beam = exp.beam
    geom = detector_geometry(det, beam.direction, cfg.pivot_sample)
    pos = pixel_positions(
        geom,
        jnp.asarray([float(PEAK_PIXEL[0])]),
        jnp.asarray([float(PEAK_PIXEL[1])]),
        1,
        jnp.zeros(1),
        det.pixel_size,
        beam.direction,
        False,
    )
    diffracted = np.asarray(pos).reshape(3) / np.linalg.norm(np.asarray(pos))
    scattering = (diffracted - np.asarray(beam.direction)) / (float(beam.wavelengths[0]) * 1e10)
    u = scattering / np.linalg.norm(scattering)
    v = np.cross(u, [0.0, 0.0, 1.0])
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    recip0 = np.stack([scattering, v / 40.0, w / 45.0])
    crystal = dataclasses.replace(
        exp.crystal, recip0=jnp.asarray(recip0), mosaic_spread=jnp.asarray(0.0)
    )
    return dataclasses.replace(exp, detector=det, crystal=crystal)


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    setup = make_setup(ARGS, tmp_path_factory)
    return Checker(singular_experiment(setup), setup.config, list(PATHS.values()))


def test_the_construction_puts_the_pixels_on_their_peaks(checker):
    image = np.asarray(checker.image(checker.params))
    # Two of the image's local maxima are the constructed pixels, and both hold the full
    # lattice factor (Na Nb Nc)² with F = 100.
    for pixel in (BEAM_PIXEL, PEAK_PIXEL):
        s, f = pixel
        assert image[s, f] == np.max(image[s - 1 : s + 2, f - 1 : f + 2])
    assert image[PEAK_PIXEL] > 0.0


@pytest.mark.parametrize("pixel", [BEAM_PIXEL, PEAK_PIXEL])
def test_derivatives_at_a_bragg_peak_are_exact(checker, pixel):
    params = checker.params
    zeros = {p: jnp.zeros_like(v) for p, v in params.items()}
    image = np.asarray(checker.image(params))
    for axis in range(3):
        t = zeros[PATHS["ncells"]].at[axis].set(1.0)
        d_n = np.asarray(checker.jvp(params, {**zeros, PATHS["ncells"]: t}))
        # I ∝ (Na Nb Nc)² at the peak, so ∂I/∂N = 2I/N; the Taylor branch of sincg gives it.
        n = float(params[PATHS["ncells"]][axis])
        assert d_n[pixel] == pytest.approx(2.0 * image[pixel] / n, rel=1e-10)
        # The peak is a maximum along any rotation: zero slope there, not NaN.
        t = zeros[PATHS["rotation"]].at[axis].set(1.0)
        d_rot = np.asarray(checker.jvp(params, {**zeros, PATHS["rotation"]: t}))
        assert np.all(np.isfinite(d_rot))
        assert abs(d_rot[pixel]) <= 1e-9 * np.max(np.abs(d_rot))


@pytest.mark.parametrize("name", list(PATHS))
def test_gradients_at_the_singular_point_match_finite_differences(checker, name):
    path, h = PATHS[name], STEPS[name]
    rng = np.random.default_rng(list(PATHS).index(name))
    value = checker.params[path]
    u = rng.normal(size=value.shape) if value.shape else rng.choice([-1.0, 1.0])
    if name in ("recip0", "wavelengths"):
        u = u * np.asarray(value)
    u = jnp.asarray(u, dtype=jnp.float64)
    fwd, fd, fd_2h = checker.along(path, u, h)
    scale = float(np.max(np.abs(fd)))
    assert scale > 0.0
    assert np.all(np.isfinite(fwd))
    # Structure factors are all default_F here: the image is smooth in every pixel.
    assert np.max(np.abs(fd - fd_2h)) <= 1e-6 * scale
    np.testing.assert_allclose(fwd, fd, rtol=0, atol=RTOL * scale)
    weights = np.sign(fd) * rng.uniform(0.5, 1.5, fd.shape)
    expected = float(np.sum(weights * fd))
    assert checker.reverse(path, u, weights) == pytest.approx(expected, rel=RTOL)


def test_no_nan_or_inf_in_gradient_images_over_orientations(checker):
    rng = np.random.default_rng(7)
    axes = rng.normal(size=(4, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    # Zero, the series/closed-form switch of the rotation vector (θ = 1e-6), and spread-out
    # angles up to π; with zero and nonzero mosaic spread.
    angles = [0.0, 1e-12, 1e-6, 1e-3, 0.02, 0.3, 1.5, np.pi]
    rot_path, mos_path = PATHS["rotation"], PATHS["mosaic_spread"]
    zeros = {p: jnp.zeros_like(v) for p, v in checker.params.items()}
    weights = jnp.ones((checker.cfg.spixels, checker.cfg.fpixels))
    checked = 0
    for i, angle in enumerate(angles):
        for spread in (0.0, 5e-3):
            rot = jnp.asarray(axes[i % 4] * angle, dtype=jnp.float64)
            params = {
                **checker.params,
                rot_path: rot,
                mos_path: jnp.asarray(spread, dtype=jnp.float64),
            }
            for axis in range(3):
                t = zeros[rot_path].at[axis].set(1.0)
                image = np.asarray(checker.jvp(params, {**zeros, rot_path: t}))
                assert np.all(np.isfinite(image)), (angle, spread, axis)
            grads = checker.grad(params, weights)
            for path, g in grads.items():
                assert np.all(np.isfinite(np.asarray(g))), (angle, spread, path)
            checked += 1
    assert checked == 2 * len(angles)
