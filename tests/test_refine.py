"""jaxdiff.refine: losses, masks, parameter groups, A matrices, the orientation search, the
verdict, and the optax driver fitting orientation (one image), orientation with a shared cell
(two images), one orientation shared by the frames of a sweep, and the mosaic spread.

The fits use a 96×96 detector at 50 mm that catches about a hundred reflections of the A.mat
crystal (every F = 100) with Ncells = 6; the observed images have Poisson noise.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import INPUTS
from refinecase import (
    FLAGS,
    MISSET,
    SWEEP,
    SWEEP_FRAMES,
    TOLERANCE_DEG,
    orientation_error_deg,
)

from jaxdiff import Detector
from jaxdiff.experiment import build
from jaxdiff.io import read_mosflm_matrix
from jaxdiff.refine import (
    GROUPS,
    Search,
    Stage,
    a_matrix,
    dilate,
    expected_poisson_nll,
    lattice_cell,
    misorientation,
    oscillation,
    poisson_nll,
    refine,
    spot_pixels,
    sweep_models,
    valid_pixels,
    weighted_least_squares,
)
from jaxdiff.refine.cli import matrix_text
from jaxdiff.refine.driver import _Data, default_optimizer, make_fitter, make_model
from jaxdiff.refine.losses import least_squares_curvature, poisson_curvature
from jaxdiff.refine.params import ROTATION_UNIT, apply_offsets, initial_offsets
from jaxdiff.refine.picture import _stacked_panels, fit_picture, strongest_spots, write_png
from jaxdiff.refine.search import search_orientation
from jaxdiff.simulate import simulate


def workdir(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("refine")
    (cwd / "inputs").symlink_to(INPUTS)
    return cwd


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    cwd = workdir(tmp_path_factory)
    setup = build(FLAGS, cwd)
    image = np.asarray(simulate(setup.experiment, setup.config))
    observed = np.random.default_rng(11).poisson(image).astype(float)
    return setup, image, observed, cwd


@pytest.fixture(scope="module")
def fitted(truth):
    setup, _, observed, cwd = truth
    # Library use: flags to a model, model and image to a fitted orientation.
    start = build(FLAGS + MISSET, cwd)
    result = refine(start, observed)
    return start, result


def undo_rotation(start, truth) -> np.ndarray:
    """The rotation offset (in the optimiser's units) that turns ``start``'s crystal onto
    ``truth``'s: R with recip_start Rᵀ = recip_true."""
    r_t = np.linalg.solve(
        np.asarray(a_matrix(start.experiment.crystal, start.config, 1e-10)).T,
        np.asarray(a_matrix(truth.experiment.crystal, truth.config, 1e-10)).T,
    )
    r = r_t.T
    skew = 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    angle = math.atan2(np.linalg.norm(skew), 0.5 * (np.trace(r) - 1.0))
    return skew / np.linalg.norm(skew) * angle / ROTATION_UNIT


def test_refine_recovers_the_orientation(truth, fitted):
    setup, _, _, _ = truth
    start, result = fitted
    a_true = np.asarray(a_matrix(setup.experiment.crystal, setup.config, 1e-10))
    a_start = np.asarray(a_matrix(start.experiment.crystal, start.config, 1e-10))
    assert orientation_error_deg(a_start, a_true) > 0.2
    assert orientation_error_deg(result.a_matrices[0], a_true) < TOLERANCE_DEG
    assert result.final_loss < result.initial_loss
    assert result.converged and "times what Poisson noise leaves" in result.reason
    assert 0.5 < result.loss_ratio < 1.5
    # The stopping rule does not end the fit above the loss at the true orientation.
    # Typed as refine types them, so that the fit's compiled loss is reused.
    loss = jax.jit(make_model((start.config,), "poisson")[1])
    data = _Data(
        (start.experiment,),
        (jnp.asarray(truth[2]),),
        (jnp.asarray(0.01, jnp.float64),),
        (jnp.ones(truth[2].shape),),
        jnp.asarray(float(truth[2].size), jnp.float64),
    )
    at_truth = {**result.offsets, "rotation": jnp.asarray(undo_rotation(start, setup)[None])}
    one = jnp.ones(())
    assert result.final_loss <= float(loss(at_truth, data, one, one)) + 1e-9
    assert result.values["scale"][0] == pytest.approx(1.0, abs=0.01)
    # The line search never accepts an increase within a stage.
    for s in np.unique(result.stages):
        h = result.history[result.stages == s]
        assert np.all(np.diff(h) <= 1e-12 * np.abs(h[:-1]))
    # The A matrix written and read back in MOSFLM's format is the fitted one.
    path = truth[3] / "fitted.mat"
    path.write_text(matrix_text(result.a_matrices[0]))
    back = np.stack(read_mosflm_matrix(path), axis=1)
    np.testing.assert_allclose(back, result.a_matrices[0], atol=1e-12)


def test_changing_values_does_not_recompile(truth, fitted):
    setup, _, observed, _ = truth
    exp = setup.experiment
    other = dataclasses.replace(
        exp, crystal=dataclasses.replace(exp.crystal, rotation=jnp.asarray([1e-3, 2e-3, -1e-3]))
    )
    short = (Stage(steps=2), Stage(steps=2, ncells_factor=0.7))
    refine(other, observed, config=setup.config, schedule=short)
    fitter = make_fitter((setup.config,), "poisson", default_optimizer())
    sizes = {name: fn._cache_size() for name, fn in fitter._asdict().items()}
    assert sizes == dict.fromkeys(fitter._fields, 1)


def test_two_images_share_the_cell_and_ncells_and_keep_their_orientations(tmp_path_factory):
    cwd = workdir(tmp_path_factory)
    rng = np.random.default_rng(4)
    observed, starts, true_a = [], [], []
    # A stretched and sheared reciprocal lattice to start from: the cell is 0.3% off.
    strain = jnp.eye(3) + jnp.asarray([[6e-3, 1e-3, 0.0], [1e-3, -5e-3, 0.0], [0.0, 0.0, 4e-3]])
    for phi in ("0", "40"):
        setup = build([*FLAGS, "-phi", phi], cwd)
        exp, cfg = setup.experiment, setup.config
        observed.append(rng.poisson(np.asarray(simulate(exp, cfg))).astype(float))
        true_a.append(np.asarray(a_matrix(exp.crystal, cfg, 1e-10)))
        wrong = dataclasses.replace(
            exp.crystal,
            recip0=exp.crystal.recip0 @ strain,
            rotation=jnp.asarray(rng.normal(size=3) * math.radians(0.15)),
        )
        starts.append(dataclasses.replace(exp, crystal=wrong))
    true_cell = lattice_cell(exp.crystal, cfg)
    assert np.max(np.abs(lattice_cell(starts[0].crystal, cfg)[:3] / true_cell[:3] - 1)) > 3e-3
    # Least squares, and Ncells fitted too (held while spots are broadened).
    groups = ("rotation", "cell", "ncells", "scale")
    result = refine(starts, observed, config=cfg, fit=groups, loss="lsq")
    np.testing.assert_allclose(result.values["ncells"], 6.0, rtol=1e-3)
    np.testing.assert_allclose(result.values["cell"][:3], true_cell[:3], rtol=3e-5)
    np.testing.assert_allclose(result.values["cell"][3:], true_cell[3:], atol=5e-5)
    assert result.a_matrices.shape == (2, 3, 3)
    for a_fit, a_true in zip(result.a_matrices, true_a, strict=True):
        np.testing.assert_allclose(a_fit, a_true, rtol=0, atol=3e-5 * np.abs(a_true).max())


def test_loss_gradient_for_every_group_matches_finite_differences(truth):
    # Through the parametrisation: rotation, cell strain, Ncells, scale, distance (whose
    # close_distance is NaN, derived), beam centre; at nonzero offsets and a broadened stage
    # (Ncells 3: an integer, where the lattice transform is smooth at half-integer h). The
    # mosaic spread on a model with three mosaic domains (one has no spread to move).
    setup, _, observed, cwd = truth
    mosaic = build([*FLAGS, "-mosaic", "0.01", "-mosaic_domains", "3"], cwd)
    rng = np.random.default_rng(2)
    offsets = {
        k: jnp.asarray(rng.normal(size=v.shape) * 0.3)
        for k, v in initial_offsets(GROUPS, 1).items()
    }
    factors = (jnp.asarray(0.5), jnp.asarray(1.0))
    assert np.isnan(float(setup.experiment.detector.close_distance))
    checks = [(setup, [g for g in GROUPS if g != "mosaic"]), (mosaic, ["mosaic"])]
    for model, groups in checks:
        _, total, _ = make_model((model.config,), "poisson")
        data = _Data(
            (model.experiment,),
            (jnp.asarray(observed),),
            (jnp.asarray(0.01),),
            (jnp.ones(observed.shape),),
            jnp.asarray(float(observed.size)),
        )
        loss = jax.jit(total)
        grad = jax.jit(jax.grad(total))(offsets, data, *factors)
        for group in groups:
            # The domains' angles are rounded to float32 (as nanoBragg rounds them), 6e-8 of
            # each angle: checked at a spread of 0.01° (as in test_grad.py) with a step of 1%
            # of it, where that rounding stays far below the tolerance.
            h = 0.1 if group == "mosaic" else 1e-4
            u = jnp.asarray(rng.normal(size=offsets[group].shape))

            def at(t, group=group, u=u, loss=loss, data=data):
                return float(loss({**offsets, group: offsets[group] + t * u}, data, *factors))

            fd = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
            assert np.all(np.isfinite(np.asarray(grad[group])))
            assert float(jnp.sum(grad[group] * u)) == pytest.approx(fd, rel=1e-5), group


def test_images_mapped_over_equal_those_rendered_one_by_one(truth):
    # Four images with one configuration are rendered by a lax.map over them.
    setup, _, _, _ = truth
    exps = tuple(
        dataclasses.replace(
            setup.experiment,
            crystal=dataclasses.replace(setup.experiment.crystal, phi0=jnp.asarray(0.3 * i)),
        )
        for i in range(4)
    )
    configs = (setup.config,) * 4
    images, _, _ = make_model(configs, "poisson")
    offsets = initial_offsets(("rotation", "scale"), 4)
    offsets = {**offsets, "rotation": offsets["rotation"].at[2, 1].set(1.5)}
    one = jnp.ones(())
    data = _Data(exps, (), (), (), one)
    mapped = jax.jit(images)(offsets, data, one, one)
    for i, image in enumerate(mapped):
        exp = apply_offsets(offsets, exps[i], i, False)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(simulate(exp, setup.config)))
    assert not np.array_equal(np.asarray(mapped[1]), np.asarray(mapped[2]))


def test_a_matrix_reproduces_the_mat_file(truth):
    setup, _, _, _ = truth
    # -lambda 1: the file's matrix (a* × λ) comes back unchanged.
    a = np.asarray(a_matrix(setup.experiment.crystal, setup.config, 1e-10))
    np.testing.assert_allclose(a, np.loadtxt(INPUTS / "A.mat"), rtol=0, atol=1e-15)


def test_offsets_have_their_documented_units(truth):
    setup, _, _, _ = truth
    exp = setup.experiment
    zero = initial_offsets(GROUPS, 1)
    same = apply_offsets(zero, exp, 0, False)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(exp), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = apply_offsets({**zero, "rotation": jnp.asarray([[1.0, 0.0, 0.0]])}, exp, 0, False)
    assert float(moved.crystal.rotation[0]) == pytest.approx(ROTATION_UNIT)
    moved = apply_offsets({**zero, "beam_centre": jnp.asarray([2.0, -1.0])}, exp, 0, False)
    pix = float(exp.detector.pixel_size)
    assert float(moved.detector.beam_f - exp.detector.beam_f) == pytest.approx(2.0 * pix)
    assert float(moved.detector.beam_s - exp.detector.beam_s) == pytest.approx(-pix)


def test_bad_arguments_are_refused(truth):
    setup, _, observed, _ = truth
    with pytest.raises(ValueError, match="unknown parameter group 'twist'"):
        refine(setup, observed, fit=("rotation", "twist"))
    with pytest.raises(ValueError, match="shape"):
        refine(setup, observed[:10])
    with pytest.raises(ValueError, match="no pixel"):
        refine(setup, observed, mask=np.zeros_like(observed))
    with pytest.raises(ValueError, match="2 images for 1 models"):
        refine(setup, [observed, observed])
    with pytest.raises(ValueError, match="config"):
        refine(setup.experiment, observed)


def test_multi_panel_images_have_the_detector_shape(truth):
    """A two-panel model takes (panel, slow, fast) images, and refuses the single-panel
    groups distance and beam_centre before any work."""
    setup, _, observed, _ = truth
    det = setup.experiment.detector
    two = Detector.from_panels([det, dataclasses.replace(det, beam_f=det.beam_f - 0.05)])
    exp = dataclasses.replace(setup.experiment, detector=two, mask=jnp.ones(two.shape))
    with pytest.raises(ValueError, match=r"\(2, 96, 96\) \(panel, slow, fast\)"):
        refine(exp, observed, config=setup.config)
    pair = np.stack([observed, observed])
    for group in ("distance", "beam_centre"):
        with pytest.raises(ValueError, match=f"{group}: fitted for single-panel detectors only"):
            refine(exp, pair, config=setup.config, fit=("rotation", group))


def test_picture_windows_of_a_multi_panel_image_stay_inside_their_panel():
    image = np.zeros((2, 20, 20))
    image[0, 19, 10] = 9.0  # on panel 0's last row: its window would reach into panel 1
    image[1, 10, 12] = 5.0
    stacked, _, _, inside = _stacked_panels(image, image, image, None, 3)
    assert stacked.shape == (40, 20) and stacked[19, 10] == 9.0
    assert strongest_spots(stacked, 5, 3)[:2] == [(19, 10), (30, 12)]
    kept = strongest_spots(stacked, 5, 3, inside)
    assert kept[0] == (30, 12) and all(3 <= s % 20 < 17 for s, _ in kept)
    picture = fit_picture(np.asarray([2.0, 1.0]), np.asarray([0, 0]), image, image, image)
    assert picture.ndim == 3 and picture.shape[2] == 3


def test_poisson_nll_is_the_likelihood_up_to_a_constant():
    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.poisson(3.0, 50).astype(float))
    lam1 = jnp.asarray(rng.uniform(0.5, 6.0, 50))
    lam2 = jnp.asarray(rng.uniform(0.5, 6.0, 50))

    def exact(lam):
        return float(jnp.sum(lam - k * jnp.log(lam)))

    assert float(poisson_nll(k, k)) == 0.0
    diff = float(poisson_nll(lam1, k) - poisson_nll(lam2, k))
    assert diff == pytest.approx(exact(lam1) - exact(lam2), rel=1e-12)
    # ∂/∂λ = 1 - k/λ; the background adds to the model; zero counts are fine.
    grad = jax.grad(poisson_nll)(lam1, k, 0.5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(1.0 - k / (lam1 + 0.5)), rtol=1e-12)
    zeros = jnp.zeros(3)
    assert float(poisson_nll(jnp.asarray([1.0, 2.0, 3.0]), zeros)) == 6.0
    mask = jnp.asarray((rng.uniform(size=50) > 0.5).astype(float))
    masked = float(poisson_nll(lam1, k, 0.0, mask))
    assert masked == pytest.approx(float(poisson_nll(lam1 * mask + k * (1 - mask), k)))
    np.testing.assert_allclose(np.asarray(poisson_curvature(lam1, k, 0.5)), 1 / (lam1 + 0.5))


def test_weighted_least_squares():
    model = jnp.asarray([1.0, 4.0, 10.0])
    obs = jnp.asarray([0.0, 2.0, 10.0])
    # Default weights 1/max(obs, 1): ½(1/1 + 4/2 + 0).
    assert float(weighted_least_squares(model, obs)) == pytest.approx(1.5)
    w = jnp.asarray([2.0, 1.0, 1.0])
    assert float(weighted_least_squares(model, obs, 1.0, None, w)) == pytest.approx(
        0.5 * (2 * 4 + 9 + 1)
    )
    curv = least_squares_curvature(model, obs, 0.0, jnp.asarray([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(curv), [1.0, 0.0, 0.1])


def test_masks():
    obs = np.zeros((20, 20))
    obs[5, 5] = 500.0
    obs[15, 12] = 70000.0
    obs[0, 0] = np.nan
    obs[1, 0] = -1.0
    detector = np.ones((20, 20))
    detector[19, :] = 0
    good = valid_pixels(obs, detector, saturation=65535.0)
    assert not good[0, 0] and not good[1, 0] and not good[15, 12] and not good[19, 3]
    assert good[5, 5] and good.sum() == 400 - 2 - 1 - 20
    spots = spot_pixels(np.nan_to_num(obs), radius=2)
    assert spots[5, 5] and spots[3, 7] and not spots[2, 5] and spots[15, 12]
    grown = dilate(np.eye(4, dtype=bool)[:1], 1)
    assert grown.tolist()[0] == [True, True, False, False]


def test_png_picture(tmp_path):
    image = np.zeros((40, 40))
    image[10, 10], image[30, 25], image[11, 11] = 5.0, 9.0, 4.0
    # (11, 11) is no local maximum; the flat zeros are not spots.
    assert strongest_spots(image, 5, 3)[:2] == [(30, 25), (10, 10)]
    picture = fit_picture(
        np.asarray([3.0, 2.0, 1.0, 0.9]), np.asarray([0, 0, 1, 1]), image, image * 0.5, image
    )
    path = tmp_path / "fit.png"
    write_png(path, picture)
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    assert (height, width) == picture.shape[:2]
    idat = raw.index(b"IDAT")
    length = int.from_bytes(raw[idat - 4 : idat], "big")
    rows = zlib.decompress(raw[idat + 4 : idat + 4 + length])
    assert len(rows) == height * (1 + 3 * width)


def test_a_fit_started_far_off_is_judged_not_converged(truth):
    setup, _, observed, cwd = truth
    far = build([*FLAGS, "-misset", "6", "-5", "4"], cwd)
    result = refine(far, observed, search=None)
    a_true = np.asarray(a_matrix(setup.experiment.crystal, setup.config, 1e-10))
    assert orientation_error_deg(result.a_matrices[0], a_true) > 1.0
    assert not result.converged
    assert result.loss_ratio > 2.0 and "the model misses the data" in result.reason


def test_search_brings_a_start_3_degrees_off_into_the_basin(truth):
    setup, _, observed, cwd = truth
    a_true = np.asarray(a_matrix(setup.experiment.crystal, setup.config, 1e-10))
    rng = np.random.default_rng(3)
    for _ in range(2):
        axis = rng.normal(size=3)
        turn = axis / np.linalg.norm(axis) * math.radians(3.0)
        start = dataclasses.replace(
            setup.experiment,
            crystal=dataclasses.replace(setup.experiment.crystal, rotation=jnp.asarray(turn)),
        )
        use = np.ones(observed.shape, bool)
        found = search_orientation([start], [setup.config], [observed], [use], Search())
        assert found.spots >= Search().min_spots and found.best_score > found.start_score
        moved = jnp.asarray(turn + found.offset)
        error = math.degrees(float(misorientation(moved, setup.experiment.crystal.rotation)))
        assert error < 1.0
        # From there the local fit converges.
        result = refine(start, observed, config=setup.config)
        a_fit = result.a_matrices[0]
        assert orientation_error_deg(a_fit, a_true) < TOLERANCE_DEG and result.converged
    # Too few spots: the search keeps the start.
    empty = np.zeros_like(observed)
    kept = search_orientation([start], [setup.config], [empty], [use], Search())
    assert kept.spots == 0 and np.all(kept.offset == 0.0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The frames of a sweep (true model, noisy frames) and the start: frame 1's flags with the
    misset of the single-image fits."""
    cwd = workdir(tmp_path_factory)
    setup = build([*FLAGS, *SWEEP], cwd)
    rng = np.random.default_rng(8)
    frames = [
        rng.poisson(np.asarray(simulate(f.experiment, f.config))).astype(float)
        for f in sweep_models(setup, SWEEP_FRAMES)
    ]
    return setup, frames, build([*FLAGS, *SWEEP, *MISSET], cwd)


def test_sweep_models_step_phi_by_the_oscillation(sweep):
    setup, frames, _ = sweep
    models = sweep_models(setup, SWEEP_FRAMES)
    assert oscillation(setup.experiment, setup.config) == pytest.approx(math.radians(0.5))
    for k, m in enumerate(models):
        assert float(m.experiment.crystal.phi0) == pytest.approx(k * math.radians(0.5))
    # Different φ, different spots.
    assert np.sum(np.abs(frames[0] - frames[3])) > 0.5 * np.sum(frames[0])
    with pytest.raises(ValueError, match="frames"):
        sweep_models(setup, 0)


def test_sweep_refinement_recovers_one_shared_orientation(sweep):
    setup, frames, start = sweep
    models = sweep_models(start, SWEEP_FRAMES)
    result = refine(models, frames, orientation="shared")
    assert result.offsets["rotation"].shape == (1, 3)
    assert result.values["scale"].shape == (SWEEP_FRAMES,)
    a_true = np.asarray(a_matrix(setup.experiment.crystal, setup.config, 1e-10))
    for a_fit in result.a_matrices:
        assert orientation_error_deg(a_fit, a_true) < TOLERANCE_DEG
    np.testing.assert_allclose(result.values["scale"], 1.0, atol=0.02)
    assert result.converged
    with pytest.raises(ValueError, match="orientation"):
        refine(models, frames, orientation="one")


def test_mosaic_spread_is_fitted_where_the_model_has_domains(truth):
    setup, _, observed, cwd = truth
    mosaic = ["-mosaic", "0.8", "-mosaic_domains", "4"]
    image = np.asarray(simulate(*_pair(build([*FLAGS, *mosaic], cwd))))
    noisy = np.random.default_rng(6).poisson(image).astype(float)
    start = build([*FLAGS, "-mosaic", "0.5", "-mosaic_domains", "4"], cwd)
    result = refine(start, noisy, fit=("mosaic", "scale"), schedule=(Stage(steps=40),))
    assert result.values["mosaic"] == pytest.approx(math.radians(0.8), rel=0.03)
    assert result.converged
    with pytest.raises(ValueError, match="no mosaic spread to fit"):
        refine(setup, observed, fit=("rotation", "mosaic"))


def _pair(setup):
    return setup.experiment, setup.config


def test_expected_poisson_nll_is_the_mean_under_poisson_noise():
    rng = np.random.default_rng(1)
    for lam in (0.003, 0.2, 1.0, 7.0, 80.0, 3000.0):
        k = rng.poisson(lam, 200_000).astype(float)
        terms = np.asarray(poisson_nll(jnp.full(k.shape, lam), jnp.asarray(k))) / k.size
        # The terms' spread is below 0.8 for any λ: four standard errors of the mean.
        assert float(expected_poisson_nll(lam)) == pytest.approx(terms, abs=4 * 0.8 / 447), lam
    assert float(expected_poisson_nll(1e6)) == pytest.approx(0.5, abs=1e-6)
