"""Static simulation configuration: counts, shapes, modes and switches (hashable, jit-static)."""

from __future__ import annotations

import dataclasses

import numpy as np

CARRYOVER_MODES = ("spec", "c-parity")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Everything that fixes the shape of the computation; changing it recompiles.

    Attributes:
        spixels, fpixels: detector size in pixels (slow, fast).
        roi: (fmin, fmax, smin, smax) inclusive pixel bounds that are rendered.
        oversample: sub-pixels per pixel edge.
        thicksteps: sensor layers.
        absorption: model sensor absorption (the sensor has a thickness).
        phisteps: φ steps.
        shape: lattice shape: "square", "round", "gauss" or "tophat".
        from_cell: the crystal is defined by cell constants (else by an A matrix).
        table_lo, table_hi: (h, k, l) bounds of the structure-factor table, or None.
        interpolate: tricubic structure-factor interpolation (with nanoBragg's switch-off).
        pivot_sample: the detector pivots about the sample (else about the beam spot).
        curved, point_pixel, nopolar: nanoBragg's -curved_det, -point_pixel, -nopolar.
        oversample_thick, oversample_polar, oversample_omega: per-sub-pixel factors.
        dmin: resolution cut [m] (0: none).
        water_size: water droplet size [m] (0: no water background).
        carryover: "spec" (φ = 0 uses the unrotated cell) or "c-parity" (the C program's).
        dtype: "float64" (reference) or "float32".
        chunk: per-pixel work items (layer × sub-pixel × source) in one block of pixels; each
            block holds a few arrays of this size while it loops over orientations.
    """

    spixels: int
    fpixels: int
    roi: tuple[int, int, int, int]
    oversample: int = 1
    thicksteps: int = 1
    absorption: bool = False
    phisteps: int = 1
    shape: str = "square"
    from_cell: bool = True
    table_lo: tuple[int, int, int] | None = None
    table_hi: tuple[int, int, int] | None = None
    interpolate: bool = False
    pivot_sample: bool = False
    curved: bool = False
    point_pixel: bool = False
    nopolar: bool = False
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False
    dmin: float = 0.0
    water_size: float = 0.0
    carryover: str = "spec"
    dtype: str = "float64"
    chunk: int = 1 << 18

    def __post_init__(self):
        if self.carryover not in CARRYOVER_MODES:
            raise ValueError(f"carryover must be one of {CARRYOVER_MODES}, not {self.carryover!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32, not {self.dtype!r}")

    @property
    def roi_shape(self) -> tuple[int, int]:
        """(slow, fast) size of the rendered region."""
        fmin, fmax, smin, smax = self.roi
        return (min(smax, self.spixels - 1) - smin + 1, min(fmax, self.fpixels - 1) - fmin + 1)

    def roi_mask(self) -> np.ndarray:
        """(slow, fast) booleans: the pixels inside the ROI."""
        fmin, fmax, smin, smax = self.roi
        inside = np.zeros((self.spixels, self.fpixels), dtype=bool)
        inside[smin : smax + 1, fmin : fmax + 1] = True
        return inside
