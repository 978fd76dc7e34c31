"""The detector: basis vectors, rotations, two-theta swing, pivots, pixel positions,
solid angle and sensor absorption.

Lengths are in metres, angles in radians. The vectors stored in :class:`Detector` are the
convention's unrotated ones; :func:`detector_geometry` applies the rotations and the pivot as
nanoBragg does, so every derived quantity is differentiable with respect to the stored values.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxdiff.rotation import rotate_axis, rotate_xyz

# Tiny positive value used by nanoBragg when the beam is parallel to the detector plane.
_DBL_MIN = 2.2250738585072014e-308


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Detector:
    """Differentiable detector parameters (dxtbx-like names; nanoBragg flag in brackets).

    Attributes:
        fast_axis, slow_axis, normal: (3,) unrotated unit vectors [-fdet/-sdet/-odet_vector].
        beam_f, beam_s: where the direct beam (pivot "beam") or the point nearest the sample
            (pivot "sample") lies along the fast and slow axes, from the first pixel's corner [m].
        distance: sample to detector along the beam [m] [-distance].
        close_distance: sample to detector plane along the normal [m], or NaN to derive it
            from ``distance`` [-close_distance].
        rotations: (3,) rotations about x, y, z [rad] [-detector_rotx/y/z].
        twotheta: swing about ``twotheta_axis`` [rad] [-twotheta].
        twotheta_axis: (3,) unit vector [-twotheta_axis].
        pixel_size: [m] [-pixel].
        layer_thickness: thickness of one sensor layer [m] (0: no absorption model).
        mu: sensor attenuation coefficient [1/m] [-detector_abs gives 1/mu].
    """

    fast_axis: Array
    slow_axis: Array
    normal: Array
    beam_f: Array
    beam_s: Array
    distance: Array
    close_distance: Array
    rotations: Array
    twotheta: Array
    twotheta_axis: Array
    pixel_size: Array
    layer_thickness: Array
    mu: Array


class DetectorGeometry(NamedTuple):
    """Rotated detector frame: unit axes, the first pixel's corner, and distances [m]."""

    fast: Array
    slow: Array
    normal: Array
    pix0: Array
    close_distance: Array
    distance: Array


def detector_geometry(det: Detector, beam_direction: Array, pivot_sample: bool) -> DetectorGeometry:
    """Rotate the detector and place its origin (nanoBragg's detector set-up)."""
    rx, ry, rz = det.rotations[0], det.rotations[1], det.rotations[2]
    ratio = jnp.dot(beam_direction, rotate_xyz(det.normal, rx, ry, rz))
    ratio = jnp.where(ratio == 0.0, _DBL_MIN, ratio)
    close = jnp.where(
        jnp.isnan(det.close_distance), jnp.abs(ratio * det.distance), det.close_distance
    )
    distance = close / ratio

    def orient(v):
        return rotate_axis(rotate_xyz(v, rx, ry, rz), det.twotheta_axis, det.twotheta)

    fast, slow, normal = orient(det.fast_axis), orient(det.slow_axis), orient(det.normal)
    if pivot_sample:
        pix0 = -det.beam_f * det.fast_axis - det.beam_s * det.slow_axis + close * det.normal
        pix0 = orient(pix0)
    else:
        pix0 = -det.beam_f * fast - det.beam_s * slow + distance * beam_direction
    close = jnp.dot(pix0, normal)
    return DetectorGeometry(fast, slow, normal, pix0, close, close / ratio)


def subpixel_index(oversample: int) -> Array:
    """(oversample², 2) integer (slow, fast) sub-pixel indices in nanoBragg's loop order."""
    s, f = jnp.meshgrid(jnp.arange(oversample), jnp.arange(oversample), indexing="ij")
    return jnp.stack([s.ravel(), f.ravel()], axis=-1)


def pixel_positions(
    geom: DetectorGeometry,
    spixel: Array,
    fpixel: Array,
    oversample: int,
    depths: Array,
    pixel_size: Array,
    beam_direction: Array,
    curved: bool,
) -> Array:
    """Positions [m] of sub-pixel centres: (P, layers, oversample², 3) for pixels (P,)."""
    x, y, z = pixel_position_components(
        geom, spixel, fpixel, oversample, depths, pixel_size, beam_direction, curved
    )
    return jnp.moveaxis(jnp.stack([x, y, z], axis=-1), -2, 0)


def pixel_position_components(
    geom: DetectorGeometry,
    spixel: Array,
    fpixel: Array,
    oversample: int,
    depths: Array,
    pixel_size: Array,
    beam_direction: Array,
    curved: bool,
) -> tuple[Array, Array, Array]:
    """x, y, z [m] of sub-pixel centres, each (layers, oversample², P) for pixels (P,).

    ``depths`` is each sensor layer's depth along the normal [m]. With ``curved`` every
    sub-pixel is put at ``distance`` from the sample, its in-plane coordinates taken as angles
    (nanoBragg's -curved_det).
    """
    sub = pixel_size / oversample
    idx = subpixel_index(oversample).astype(pixel_size.dtype)
    s_det = sub * (spixel * oversample + idx[:, 0, None]) + sub / 2.0  # (Sub, P)
    f_det = sub * (fpixel * oversample + idx[:, 1, None]) + sub / 2.0
    o_det = depths[:, None, None]
    comps = tuple(
        f_det * geom.fast[i] + s_det * geom.slow[i] + o_det * geom.normal[i] + geom.pix0[i]
        for i in range(3)
    )
    if curved:
        start = geom.distance * beam_direction
        turned = rotate_axis(start, geom.slow, comps[1] / geom.distance)
        pos = rotate_axis(turned, geom.fast, comps[2] / geom.distance)
        comps = (pos[..., 0], pos[..., 1], pos[..., 2])
    return comps


def solid_angle(pixel_size: Array, airpath: Array, close_distance: Array, point: bool) -> Array:
    """Solid angle [sr] of a pixel seen at ``airpath`` [m] (obliquity included unless ``point``)."""
    if point:
        return 1.0 / (airpath * airpath)
    return pixel_size * pixel_size / airpath / airpath * close_distance / airpath


def capture_from_parallax(layer: Array, layer_thickness: Array, mu: Array, parallax: Array):
    """Absorbed fraction in layer ``layer`` for a ray with cosine ``parallax`` to the normal."""
    depth = layer_thickness * mu / parallax
    return jnp.exp(-layer * depth) - jnp.exp(-(layer + 1) * depth)
