"""Raw float images, nanoBragg's integer (SMV) conversion and PGM previews."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io._text import read_bytes
from jaxdiff.io.atomic import atomic_output
from jaxdiff.io.smv import fmt_g

_INT_SCALE_TARGET = 55000.0


def write_float_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write an image (photons per pixel) as raw little-endian float32, slow-major, atomically.

    This is nanoBragg's ``-floatfile`` format: no header, ``index = slow * fast_pixels + fast``.
    """
    values = np.asarray(image)
    if values.ndim != 2:
        raise ValueError(f"image must be 2-D (slow, fast), got shape {values.shape}")
    data = np.ascontiguousarray(values, dtype="<f4")
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)  # the array's own buffer: no copy to bytes first


def read_float_image(path: str | os.PathLike[str], shape: Sequence[int]) -> np.ndarray:
    """Read a raw little-endian float32 image of ``shape`` (slow, fast) as native float32.

    Raises:
        InputError: missing file, or a file size that does not match ``shape``.
    """
    slow, fast = (int(n) for n in shape)
    raw = read_bytes(path, "float image")
    if len(raw) != 4 * slow * fast:
        raise InputError(
            f"{path}: expected {4 * slow * fast} bytes for a {slow}x{fast} float32 image, "
            f"found {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(slow, fast).astype(np.float32)


def _roi(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    inside = np.asarray(mask, dtype=bool)
    if inside.shape != shape:
        raise ValueError(f"roi_mask shape {inside.shape} != image shape {shape}")
    return inside


def auto_int_scale(max_I: float) -> float:
    """nanoBragg's default ``-scale``: 55000 / max_I (counts per photon), or 1 if max_I <= 0."""
    return _INT_SCALE_TARGET / max_I if max_I > 0.0 else 1.0


def to_int_image(
    float_image: np.ndarray,
    scale: float,
    adc: float = 40.0,
    roi_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Convert photons to uint16 counts as nanoBragg does for ``-intfile``.

    ``counts = floorf(clip(photons * scale + adc, 0, 65535) + 0.5)``, where the sum is a double
    and the rounding happens in float32 (C passes the double to ``floorf``). ``scale`` is in
    counts per photon (:func:`auto_int_scale` gives C's default), ``adc`` the offset in counts.
    Pixels outside ``roi_mask`` (boolean, True inside) are 0.
    """
    photons = np.asarray(float_image, dtype=np.float32)
    if photons.ndim != 2:
        raise ValueError(f"float_image must be 2-D (slow, fast), got shape {photons.shape}")
    inside = _roi(roi_mask, photons.shape)
    test = photons.astype(np.float64)
    test *= float(scale)
    test += float(adc)
    np.fmax(test, 0.0, out=test)  # fmax: NaN becomes 0 too
    np.minimum(test, 65535.0, out=test)
    test += 0.5
    rounded = test.astype(np.float32)
    np.floor(rounded, out=rounded)
    counts = rounded.astype(np.uint16)
    np.multiply(counts, inside, out=counts)
    return counts


def auto_pgm_scale(rmsd: float, int_scale: float) -> float:
    """nanoBragg's default ``-pgmscale``: 250 / (5 rmsd) grey levels per photon, else int_scale.

    ``rmsd`` is the rms deviation of the ROI pixels from their mean (photons).
    """
    return 250.0 / (5.0 * rmsd) if rmsd > 0.0 else int_scale


def write_pgm(
    path: str | os.PathLike[str],
    float_image: np.ndarray,
    pgm_scale: float,
    roi_mask: np.ndarray | None = None,
) -> None:
    """Write an 8-bit binary PGM (P5) preview as nanoBragg's ``-pgmfile`` (atomically).

    Each grey level is ``min(photons * pgm_scale, 255)`` truncated toward zero; pixels outside
    ``roi_mask`` and negative values (which nanoBragg never produces) are 0.
    """
    photons = np.asarray(float_image, dtype=np.float32)
    if photons.ndim != 2:
        raise ValueError(f"float_image must be 2-D (slow, fast), got shape {photons.shape}")
    inside = _roi(roi_mask, photons.shape)
    test = photons.astype(np.float64) * float(pgm_scale)
    test = np.where(test > 255.0, 255.0, test)
    test = np.where((test > 0.0) & inside, test, 0.0)
    grey = np.trunc(test).astype(np.uint8)
    spixels, fpixels = photons.shape
    header = f"P5\n{fpixels} {spixels}\n# pixels scaled by {fmt_g(pgm_scale)}\n255\n"
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(header.encode("ascii"))
            handle.write(grey.tobytes())
