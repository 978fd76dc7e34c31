"""The noise image: Poisson noise and the ADC offset, bit for bit as nanoBragg writes it.

The C program walks the pixels in raster order, draws one Poisson deviate per pixel of the
region of interest from a single generator (:mod:`jaxdiff.deviates`), adds the ADC offset,
clips at 65535 and stores the count as an ``unsigned short``. Every draw depends on the state
the previous one left, and the number of uniforms a pixel consumes depends on its value, so
the walk is sequential: :func:`noise_image` runs it compiled (the ``_jaxdiff_noise`` module
that ``pip install`` builds from src/_jaxdiff_noise.c), and :func:`noise_image_reference` is
the same walk in readable Python over :class:`jaxdiff.deviates.Deviates`, the reference that
the compiled one is tested against.
"""

from __future__ import annotations

import math

import numpy as np

from jaxdiff.deviates import Deviates, check_seed


def noise_image(
    float_image: np.ndarray,
    seed: int,
    adc: float = 40.0,
    roi_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int]:
    """Add Poisson noise and the ADC offset to an image of expected photons, as nanoBragg does.

    Parameters
    ----------
    float_image:
        Expected photons per pixel, shape (slow, fast); rounded to float32 as C stores it.
    seed:
        The ``ran1`` seed variable, a 32-bit int. nanoBragg's ``-seed N`` means ``seed = -N``;
        without the flag C uses ``-time()``.
    adc:
        ADC offset in counts added to every noisy ROI pixel (nanoBragg ``-adc``, default 40).
    roi_mask:
        Boolean (slow, fast), True inside the region of interest; None means every pixel.

    Returns
    -------
    (image, photons, overloads):
        ``image`` uint16 (slow, fast) counts, 0 outside the ROI; ``photons`` the sum of the
        Poisson deviates; ``overloads`` the number of pixels clipped at 65535.
    """
    values, inside, seed = _checked(float_image, seed, roi_mask)
    counts = np.zeros(values.shape, dtype=np.uint16)
    mask = None if inside is None else inside.view(np.uint8)
    photons, overloads = _compiled().noise(values, mask, seed, float(adc), counts, None)
    return counts, photons, overloads


def poisson_deviates(
    float_image: np.ndarray, seed: int, roi_mask: np.ndarray | None = None
) -> np.ndarray:
    """The float32 Poisson deviates behind :func:`noise_image` (0 outside the ROI), compiled.

    The same draws as :func:`noise_image` for the same arguments, before the ADC offset, the
    clip at 65535 and the conversion to integer counts.
    """
    values, inside, seed = _checked(float_image, seed, roi_mask)
    deviates = np.zeros(values.shape, dtype=np.float32)
    counts = np.zeros(values.shape, dtype=np.uint16)
    mask = None if inside is None else inside.view(np.uint8)
    _compiled().noise(values, mask, seed, 0.0, counts, deviates)
    return deviates


def noise_image_reference(
    float_image: np.ndarray,
    seed: int,
    adc: float = 40.0,
    roi_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int]:
    """:func:`noise_image` in plain Python (about 3 µs a pixel): the readable reference."""
    values, inside, seed = _checked(float_image, seed, roi_mask)
    flat_values = values.ravel().tolist()
    flat_inside = [True] * len(flat_values) if inside is None else inside.ravel().tolist()
    out = [0] * len(flat_values)
    poidev = Deviates(seed).poidev
    adc = float(adc)
    photons = 0.0
    overloads = 0
    for index, xm in enumerate(flat_values):
        if not flat_inside[index]:
            continue
        test = poidev(xm)
        photons += test
        test += adc
        if test > 65535.0:
            test = 65535.0
            overloads += 1
        out[index] = _to_ushort(test)
    image = np.array(out, dtype=np.uint16).reshape(values.shape)
    return image, photons, overloads


def _checked(
    float_image: np.ndarray, seed: int, roi_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """The image as contiguous float32, the ROI as contiguous bool (or None), the seed."""
    values = np.ascontiguousarray(float_image, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"float_image must be 2-D (slow, fast), got shape {values.shape}")
    inside = None
    if roi_mask is not None:
        inside = np.ascontiguousarray(roi_mask, dtype=bool)
        if inside.shape != values.shape:
            raise ValueError(f"roi_mask shape {inside.shape} != image shape {values.shape}")
    return values, inside, check_seed(seed)


def _compiled():
    """The compiled noise module, or an ImportError that says how to build it."""
    try:
        import _jaxdiff_noise
    except ImportError as err:
        raise ImportError(
            "jaxdiff's compiled noise module _jaxdiff_noise is missing: install jaxdiff with "
            "pip (pip install . or pip install -e .), which builds it with a C compiler"
        ) from err
    return _jaxdiff_noise


def _to_ushort(value: float) -> int:
    """C's ``(unsigned short) value`` for a double as x86-64 compilers emit it.

    The value is truncated toward zero to a 32-bit int, which is INT_MIN when it does not fit
    (NaN and -inf included), and the low 16 bits are kept.
    """
    if not value > -2147483649.0:
        return 0
    return math.trunc(value) & 0xFFFF
