"""nanoBragg's Poisson noise: Numerical Recipes deviates with C's state and rounding.

The pure-Python deviates (jaxdiff.deviates) are the reference; the compiled noise image
(jaxdiff.io.noise.noise_image) must give the same bits for every input.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
from conftest import GOLDEN

from jaxdiff.deviates import Deviates, Ran1, gammln
from jaxdiff.io import (
    noise_image,
    noise_image_reference,
    poisson_deviates,
    read_float_image,
    read_smv,
)


def assert_same_noise(image, seed, adc=40.0, roi=None) -> None:
    """The compiled noise image, photons, overloads and deviates equal the reference's."""
    fast = noise_image(image, seed, adc, roi)
    slow = noise_image_reference(image, seed, adc, roi)
    np.testing.assert_array_equal(fast[0], slow[0])
    assert fast[0].dtype == np.uint16 and fast[0].shape == np.shape(image)
    assert fast[1] == slow[1] or (math.isnan(fast[1]) and math.isnan(slow[1]))
    assert fast[2] == slow[2]
    values = np.asarray(image, dtype=np.float32).ravel()
    inside = np.ones(values.size, bool) if roi is None else np.asarray(roi).ravel()
    deviates = Deviates(seed)
    expected = np.zeros(values.size, np.float32)
    for i in np.flatnonzero(inside):
        expected[i] = deviates.poidev(float(values[i]))
    got = poisson_deviates(image, seed, roi).ravel()
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def mixed_means(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Means in every branch of poidev, with zeros, repeats and non-finite/negative values."""
    n = shape[0] * shape[1]
    kind = rng.integers(0, 7, n)
    means = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
        [
            rng.uniform(0.0, 12.0, n),  # product of uniforms
            rng.uniform(12.0, 3e4, n),  # rejection with the Lorentzian
            rng.uniform(1e6, 1e9, n),  # Gaussian approximation (and overloads)
            np.zeros(n),
            rng.choice([3.0, 25.0, 2e6], n),  # repeated means use poidev's cache
            rng.uniform(11.99, 12.01, n),  # around the branch point
        ],
        default=rng.exponential(2.0, n),
    )
    special = rng.random(n) < 0.02
    means[special] = rng.choice(
        [np.nan, np.inf, -np.inf, -0.5, -800.0, -3e38, 3e38, 1e6, 12.0, 65495.0],
        int(special.sum()),
    )
    return means.reshape(shape).astype(np.float32)


def test_noise_image_is_bit_exact_with_golden() -> None:
    case = GOLDEN / "noise_seed"
    assert case.is_dir(), f"golden data not found at {case}"
    _, golden = read_smv(case / "noise.img")
    photons = read_float_image(case / "float.bin", golden.shape)
    stdout = (case / "stdout.txt").read_text()
    match = re.search(r"^(\d+) photons on noise image \((\d+) overloads\)", stdout, re.M)
    assert match is not None
    # The case ran with "-seed 12345", which C stores as seed = -12345; -adc is the default 40.
    for noisy in (noise_image, noise_image_reference):
        image, total, overloads = noisy(photons, seed=-12345, adc=40.0)
        np.testing.assert_array_equal(image, golden)
        assert f"{total:.0f}" == match.group(1) and overloads == int(match.group(2))
    # The mean of photons above 12 per pixel goes through poidev's rejection branch.
    assert photons.max() > 12.0


def test_pinned_deviates_from_compiled_c() -> None:
    # nanoBragg.c's poidev() compiled with gcc -O2 and called in this order with seed -4242.
    means = [5e6, 2e7, 1.5e6, 3.0, 20.0, 0.5, 1000.0]
    expected = [5000075.0, 20000972.0, 1500786.375, 6.0, 23.0, 1.0, 1046.0]
    deviates = Deviates(-4242)
    assert [deviates.poidev(m) for m in means] == expected
    assert poisson_deviates(np.array([means]), -4242).tolist() == [expected]


@pytest.mark.parametrize("seed", [-1, -12345, -2147483647, 0, 1, 99, 2147483647])
def test_compiled_noise_equals_reference_on_every_branch(seed: int) -> None:
    rng = np.random.default_rng(abs(seed) % 1000)
    image = mixed_means(rng, (40, 150))
    roi = rng.random(image.shape) < 0.8
    assert_same_noise(image, seed, 40.0, roi)
    assert_same_noise(image, seed, 40.0, None)


def test_compiled_noise_equals_reference_on_many_images() -> None:
    rng = np.random.default_rng(2024)
    for _ in range(20):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        image = mixed_means(rng, shape)
        roi = rng.random(shape) < rng.random()
        seed = int(rng.integers(-(2**31) + 1, 2**31))
        adc = float(rng.choice([40.0, 0.0, 10.5, -100.0, 70000.0]))
        assert_same_noise(image, seed, adc, roi)


def test_photons_and_overloads_match_reference_on_finite_images() -> None:
    rng = np.random.default_rng(5)
    image = rng.exponential(30.0, (100, 100)).astype(np.float32)
    image[::7, ::3] = rng.uniform(6e4, 2e5, image[::7, ::3].shape)
    fast = noise_image(image, -77, 40.0)
    slow = noise_image_reference(image, -77, 40.0)
    assert fast[1] == slow[1] and fast[2] == slow[2] > 0
    np.testing.assert_array_equal(fast[0], slow[0])


def test_layout_and_dtype_of_the_input_do_not_matter() -> None:
    rng = np.random.default_rng(8)
    image = rng.uniform(0.0, 40.0, (30, 20))
    roi = rng.random((20, 30)) < 0.5
    direct = noise_image(np.ascontiguousarray(image.T, dtype=np.float32), -3, 40.0, roi)
    strided = noise_image(image.T, -3, 40.0, roi.astype(np.int8))
    np.testing.assert_array_equal(direct[0], strided[0])
    assert direct[1:] == strided[1:]


def test_negative_adc_wraps_like_a_c_unsigned_short() -> None:
    image = np.zeros((2, 3), np.float32)
    for noisy in (noise_image, noise_image_reference):
        counts, total, _ = noisy(image, -9, adc=-100.0)
        assert total == 0.0 and (counts == 65536 - 100).all()


def test_ran1_reseeds_on_nonpositive_seed() -> None:
    first = Ran1(-7)
    a = [first() for _ in range(5)]
    second = Ran1(-7)
    assert [second() for _ in range(5)] == a
    assert all(0.0 < x < 1.0 for x in a)
    # A positive seed on first use becomes 1 (C: -(*idum) < 1 gives *idum = 1), like -1.
    assert Ran1(5)() == Ran1(-1)()
    assert all(x == float(np.float32(x)) for x in a)  # ran1 returns float


def test_seeds_beyond_a_c_int_are_refused() -> None:
    for seed in (2**31, -(2**31), 10**12):
        with pytest.raises(ValueError, match="32-bit C int"):
            Ran1(seed)
        with pytest.raises(ValueError, match="32-bit C int"):
            noise_image(np.ones((2, 2)), seed)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        noise_image(np.ones(4), -1)
    with pytest.raises(ValueError, match="roi_mask shape"):
        noise_image(np.ones((2, 2)), -1, roi_mask=np.ones((2, 3), bool))


def test_missing_compiled_module_says_how_to_build_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "_jaxdiff_noise", None)
    with pytest.raises(ImportError, match="pip install"):
        noise_image(np.ones((2, 2)), -1)


def test_gammln_matches_lgamma_to_float_precision() -> None:
    for x in [0.5, 1.0, 2.0, 3.7, 13.0, 145.1, 1e4]:
        assert gammln(x) == pytest.approx(math.lgamma(x), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("mean", [0.3, 4.0, 11.9, 12.0, 40.0])
def test_poisson_statistics(mean: float) -> None:
    draws = poisson_deviates(np.full((200, 1000), mean), -99).astype(np.float64)
    assert np.all(draws == np.floor(draws)) and draws.min() >= 0
    # 200000 draws: the standard error of the mean is sqrt(mean / 200000), < 5 sigma here.
    assert abs(draws.mean() - mean) < 5 * math.sqrt(mean / draws.size)
    assert draws.var() == pytest.approx(mean, rel=0.03)


def test_roi_pixels_draw_in_raster_order_of_the_roi() -> None:
    rng = np.random.default_rng(3)
    photons = rng.uniform(0, 30, size=(9, 10)).astype(np.float32)
    roi = np.zeros(photons.shape, dtype=bool)
    roi[2:7, 3:8] = True
    full, total, _ = noise_image(photons, seed=-5, adc=10.0, roi_mask=roi)
    crop, crop_total, _ = noise_image(photons[2:7, 3:8], seed=-5, adc=10.0)
    np.testing.assert_array_equal(full[2:7, 3:8], crop)
    assert not full[~roi].any()
    assert total == crop_total
    assert full[roi].min() >= 10


def test_overloads_clip_and_count() -> None:
    photons = np.array([[1e8, 5.0], [70000.0, 65490.0]], dtype=np.float32)
    image, total, overloads = noise_image(photons, seed=-1, adc=40.0)
    assert image[0, 0] == 65535 and image[1, 0] == 65535
    assert overloads >= 2
    assert total > 1e8
