"""The incident beam: sources (divergence, dispersion, source files), polarization, fluence."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

# Thomson cross-section r_e² [m²] and Avogadro's number, as nanoBragg uses them.
R_E_SQR = 7.94079248018965e-30
AVOGADRO = 6.02214179e23
# Distance [m] at which generated sources are placed.
SOURCE_DISTANCE = 10.0
# nanoBragg's default fluence [photons/m²].
DEFAULT_FLUENCE = 125932015286227086360700780544.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Beam:
    """Differentiable beam parameters.

    Attributes:
        direction: (3,) unit vector of the incident beam, sample-bound [-beam_vector].
        source_dirs: (n, 3) unit vectors from the sample towards each source.
        wavelengths: (n,) wavelength of each source [m].
        polar_vector: (3,) unit E-vector direction [-polar_vector].
        polarization: Kahn polarization factor [-polar].
        fluence: photons per m² [-fluence, or -flux × -exposure / -beamsize²].

    Build one with :meth:`from_wavelength`, or field by field for sources of your own.
    """

    direction: Array
    source_dirs: Array
    wavelengths: Array
    polar_vector: Array
    polarization: Array
    fluence: Array

    @classmethod
    def from_wavelength(
        cls,
        wavelength: float,
        direction: Sequence[float] = (0.0, 0.0, -1.0),
        *,
        polar_vector: Sequence[float] | None = None,
        polarization: float = 0.0,
        fluence: float = DEFAULT_FLUENCE,
        divergence: Sequence[tuple[float, float]] = ((0.0, 0.0),),
        dispersion: tuple[float, float, int] = (0.0, 0.0, 1),
    ) -> Beam:
        """A beam of ``wavelength`` [m] travelling along ``direction`` (towards the sample;
        DIALS' lab frame by default, beam along −z).

        Args:
            polar_vector: E-vector direction; by default the x axis made perpendicular to the
                beam (DIALS' default plane of polarization).
            polarization: Kahn factor (0: unpolarized; DIALS' polarization fraction f is
                2f − 1).
            fluence: photons per m².
            divergence: (horizontal, vertical) angular offsets [rad] of each source point
                (:func:`divergence_offsets` gives nanoBragg's grids).
            dispersion: (relative range, relative step, count) of wavelengths per point.
        """
        beam = _normalized(direction)
        if not np.any(beam):
            raise ValueError("direction: the beam direction must not be zero")
        if polar_vector is None:
            trial = np.array([1.0, 0.0, 0.0]) if abs(beam[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
            polar_vector = trial - np.dot(trial, beam) * beam
        polar = _normalized(polar_vector)
        span, step, count = dispersion
        dirs, lams = generated_sources(
            beam, polar, float(wavelength), list(divergence), span, step, int(count)
        )
        if len(dirs) == 0:
            raise ValueError("divergence: no source point")
        return cls(
            direction=beam,
            source_dirs=dirs,
            wavelengths=lams,
            polar_vector=polar,
            polarization=np.asarray(float(polarization)),
            fluence=np.asarray(float(fluence)),
        )


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n != 0.0 else np.zeros(3)


def _normalized(v) -> np.ndarray:
    """``v`` / |v| (zero stays zero), with |v| formed as nanoBragg's ``unitize`` forms it."""
    v = np.asarray(v, dtype=float)
    mag = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return v / mag if mag != 0.0 else np.zeros(3)


def divergence_offsets(hrange, hstep, hsteps, vrange, vstep, vsteps, round_div):
    """(h, v) angular offsets [rad] of the divergence grid, corners trimmed when ``round_div``."""
    out = []
    for i in range(hsteps):
        for j in range(vsteps):
            hdiv = hstep * i - hrange / 2.0
            vdiv = vstep * j - vrange / 2.0
            with np.errstate(divide="ignore", invalid="ignore"):
                test = np.float64(hdiv * hdiv - hstep * hstep / 4.0 * (1 - hsteps % 2)) / hrange
                test = test / hrange
                t2 = np.float64(vdiv * vdiv - vstep * vstep / 4.0 * (1 - vsteps % 2)) / vrange
                test = test + t2 / vrange
            if round_div and test * 4.0 > 1.1:
                continue
            out.append((hdiv, vdiv))
    return out


def _rotate_np(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """:func:`jaxdiff.rotation.rotate_axis` in NumPy, for set-up work outside any trace."""
    c, s = np.cos(angle), np.sin(angle)
    return axis * (np.dot(axis, v) * (1.0 - c)) + v * c + np.cross(axis, v) * s


def generated_sources(
    beam_direction: np.ndarray,
    polar_vector: np.ndarray,
    wavelength: float,
    offsets: list[tuple[float, float]],
    dispersion: float,
    dispstep: float,
    dispsteps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Source directions (n, 3) and wavelengths (n,) [m] of nanoBragg's generated sources."""
    vert = _unit(np.cross(beam_direction, polar_vector))
    start = -SOURCE_DISTANCE * beam_direction
    dirs, lams = [], []
    for hdiv, vdiv in offsets:
        v = _rotate_np(_rotate_np(start, polar_vector, vdiv), vert, hdiv)
        for k in range(dispsteps):
            dirs.append(_unit(v))
            lams.append(wavelength * (1.0 + dispstep * k - dispersion / 2.0))
    return np.array(dirs).reshape(-1, 3), np.array(lams)


def file_sources(
    table: dict[str, np.ndarray], beam_direction: np.ndarray, wavelength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Source directions and wavelengths from a -sourcefile table (missing values defaulted).

    The weight column is read but not used: every source counts equally, as in nanoBragg.
    """
    pos = np.stack([table["X"], table["Y"], table["Z"]], axis=-1)
    default = -SOURCE_DISTANCE * beam_direction
    pos = np.where(np.isnan(pos), default, pos)
    lams = np.where(np.isnan(table["lambda"]), wavelength, table["lambda"])
    return np.array([_unit(p) for p in pos]), lams


def water_background(water_size: float, fluence: Array) -> Array:
    """nanoBragg's per-evaluation water term I_bg (F = 2.57, MW 18) for a droplet [m]."""
    # One constant (≈1e-21 m² per photon/m² for a 0.1 µm droplet), so that float32 never forms
    # the intermediate r_e²·size³ (≈1e-50), which underflows.
    per_fluence = 2.57 * 2.57 * R_E_SQR * water_size**3 * 1e6 * AVOGADRO / 18.0
    return fluence * per_fluence


def safe_unit(v: Array) -> Array:
    """``v`` / |v|, or zero where |v| = 0 (as nanoBragg's ``unitize``), with finite gradients."""
    sq = jnp.sum(v * v, axis=-1, keepdims=True)
    zero = sq == 0.0
    return jnp.where(zero, 0.0, v / jnp.sqrt(jnp.where(zero, 1.0, sq)))


def polarization_basis(incident: Array, axis: Array) -> tuple[Array, Array]:
    """The E- and B-directions of an incident beam polarized nearest to ``axis``."""
    b_in = safe_unit(jnp.cross(axis, incident))
    e_in = safe_unit(jnp.cross(incident, b_in))
    return e_in, b_in


def polarization_from_projections(kahn: Array, cos2t: Array, e_out: Array, b_out: Array) -> Array:
    """Polarization factor from cos 2θ and the diffracted ray's E and B components; cos 2ψ is
    formed without atan2 so it has no singular gradient."""
    cos2t_sq = cos2t * cos2t
    r2 = e_out * e_out + b_out * b_out
    zero = r2 == 0.0
    cos_2psi = jnp.where(zero, 1.0, (e_out * e_out - b_out * b_out) / jnp.where(zero, 1.0, r2))
    return 0.5 * (1.0 + cos2t_sq - kahn * cos_2psi * (1.0 - cos2t_sq))


def polarization_factor(kahn: Array, incident: Array, diffracted: Array, axis: Array) -> Array:
    """Polarization factor for unit ``incident`` and ``diffracted`` (nanoBragg
    ``polarization_factor``)."""
    e_in, b_in = polarization_basis(incident, axis)
    return polarization_from_projections(
        kahn,
        jnp.sum(incident * diffracted, axis=-1),
        jnp.sum(diffracted * e_in, axis=-1),
        jnp.sum(diffracted * b_in, axis=-1),
    )


def energy_to_wavelength(energy_ev: float) -> float:
    """Wavelength [m] of a photon energy [eV] with nanoBragg's constant 12398.42 eV·Å."""
    return 12398.42 / energy_ev / 1.0e10
