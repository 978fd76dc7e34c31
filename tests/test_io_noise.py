"""nanoBragg's Poisson noise: Numerical Recipes deviates with C's state and rounding."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from jaxdiff.io import Deviates, Ran1, gammln, noise_image, read_float_image, read_smv


def golden_dir() -> Path:
    """The C program's reference outputs, ../shared/golden from the repository root."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
    if not path.is_dir():
        pytest.skip(f"golden data not found at {path}")
    return path


def test_noise_image_is_bit_exact_with_golden() -> None:
    case = golden_dir() / "noise_seed"
    _, golden = read_smv(case / "noise.img")
    photons = read_float_image(case / "float.bin", golden.shape)
    # The case ran with "-seed 12345", which C stores as seed = -12345; -adc is the default 40.
    image, total, overloads = noise_image(photons, seed=-12345, adc=40.0)
    np.testing.assert_array_equal(image, golden)
    stdout = (case / "stdout.txt").read_text()
    match = re.search(r"^(\d+) photons on noise image \((\d+) overloads\)", stdout, re.M)
    assert match is not None
    assert f"{total:.0f}" == match.group(1) and overloads == int(match.group(2))
    # The mean of photons above 12 per pixel goes through poidev's rejection branch.
    assert photons.max() > 12.0


def test_pinned_deviates_from_compiled_c() -> None:
    # nanoBragg.c's poidev() compiled with gcc -O2 and called in this order with seed -4242.
    deviates = Deviates(-4242)
    means = [5e6, 2e7, 1.5e6, 3.0, 20.0, 0.5, 1000.0]
    assert [deviates.poidev(m) for m in means] == [
        5000075.0, 20000972.0, 1500786.375, 6.0, 23.0, 1.0, 1046.0,
    ]  # fmt: skip


def test_ran1_reseeds_on_nonpositive_seed() -> None:
    first = Ran1(-7)
    a = [first() for _ in range(5)]
    second = Ran1(-7)
    assert [second() for _ in range(5)] == a
    assert all(0.0 < x < 1.0 for x in a)
    # A positive seed on first use becomes 1 (C: -(*idum) < 1 gives *idum = 1), like -1.
    assert Ran1(5)() == Ran1(-1)()
    assert all(x == float(np.float32(x)) for x in a)  # ran1 returns float


def test_gammln_matches_lgamma_to_float_precision() -> None:
    for x in [0.5, 1.0, 2.0, 3.7, 13.0, 145.1, 1e4]:
        assert gammln(x) == pytest.approx(math.lgamma(x), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("mean", [0.3, 4.0, 11.9, 12.0, 40.0])
def test_poisson_statistics(mean: float) -> None:
    deviates = Deviates(-99)
    draws = np.array([deviates.poidev(mean) for _ in range(20000)])
    assert np.all(draws == np.floor(draws)) and draws.min() >= 0
    # 20000 draws: the standard error of the mean is sqrt(mean / 20000), < 5 sigma here.
    assert abs(draws.mean() - mean) < 5 * math.sqrt(mean / 20000)
    assert draws.var() == pytest.approx(mean, rel=0.1)


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
