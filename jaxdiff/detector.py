"""The detector: basis vectors, rotations, two-theta swing, pivots, pixel positions,
solid angle and sensor absorption.

Lengths are in metres, angles in radians. The vectors stored in :class:`Detector` are the
convention's unrotated ones; :func:`detector_geometry` applies the rotations and the pivot as
nanoBragg does, so every derived quantity is differentiable with respect to the stored values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxdiff.rotation import rotate_axis, rotate_xyz

# Tiny positive value used by nanoBragg when the beam is parallel to the detector plane.
_DBL_MIN = 2.2250738585072014e-308

# nanoBragg's conventions: beam, fast, slow, normal, two-theta axis, polarization, spindle.
CONVENTION_VECTORS = {
    "adxv": ((0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "mosflm": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "denzo": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "xds": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "dials": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)),
}
PIVOTS = ("beam", "sample")


def _static(**kwargs):
    """A dataclass field that is pytree metadata (hashable, part of the jit cache key)."""
    return dataclasses.field(metadata=dict(static=True), **kwargs)


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
        image_size: (fast, slow) pixel counts (static) [-detpixels].
        pivot: "beam" or "sample" (static): what stays fixed when the detector rotates, and
            what ``beam_f``/``beam_s`` locate [-pivot].
        panels: 0 for one panel (nanoBragg's detector: the leaves as above), or the number of
            panels P of a multi-panel detector, whose every leaf has a leading panel axis P
            (static). All panels share ``image_size`` and ``pivot``.

    Build one with :meth:`from_vectors` (dxtbx's panel frame) or :meth:`from_convention`
    (nanoBragg's conventions and beam centre), or field by field; a multi-panel detector with
    :meth:`from_panels`.
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
    image_size: tuple[int, int] = _static()
    pivot: str = _static()
    panels: int = _static(default=0)

    def __post_init__(self):
        if self.pivot not in PIVOTS:
            raise ValueError(f"pivot must be one of {PIVOTS}, not {self.pivot!r}")
        size = tuple(int(n) for n in self.image_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"image_size must be two positive pixel counts, got {size}")
        object.__setattr__(self, "image_size", size)
        if int(self.panels) < 0:
            raise ValueError(f"panels must be 0 (one panel) or a panel count, not {self.panels}")
        object.__setattr__(self, "panels", int(self.panels))

    @property
    def panel_count(self) -> int:
        """How many panels the detector has (1 for a single panel)."""
        return self.panels or 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's shape: (slow, fast) for one panel, (panel, slow, fast) for several."""
        fast, slow = self.image_size
        return (self.panels, slow, fast) if self.panels else (slow, fast)

    def panel(self, index: int) -> Detector:
        """Panel ``index`` of a multi-panel detector as a single-panel :class:`Detector`."""
        if not self.panels:
            raise ValueError("panel(): a single-panel detector has no panel axis")
        if not 0 <= index < self.panels:
            raise ValueError(f"panel index {index} outside 0..{self.panels - 1}")
        leaves = {f.name: getattr(self, f.name)[index] for f in _leaf_fields()}
        return Detector(**leaves, image_size=self.image_size, pivot=self.pivot)

    def unstacked(self) -> Detector:
        """The same leaves (with their panel axis) marked as one panel: what a map over the
        panel axis hands to single-panel code, one panel at a time."""
        return dataclasses.replace(self, panels=0)

    @classmethod
    def from_panels(cls, panels: Sequence[Detector]) -> Detector:
        """A multi-panel detector from single-panel ones (e.g. :meth:`from_vectors` each):
        every leaf stacked along a leading panel axis.

        Raises:
            ValueError: no panels, a panel that is itself multi-panel, or panels that differ
                in image size or pivot.
        """
        panels = list(panels)
        if not panels:
            raise ValueError("from_panels: no panels")
        first = panels[0]
        for i, p in enumerate(panels):
            if p.panels:
                raise ValueError(f"from_panels: panel {i} is itself a multi-panel detector")
            if p.image_size != first.image_size:
                raise ValueError(
                    f"from_panels: panel {i} is {p.image_size[0]}x{p.image_size[1]} pixels, "
                    f"panel 0 {first.image_size[0]}x{first.image_size[1]}; jaxdiff's panels "
                    "share one image size"
                )
            if p.pivot != first.pivot:
                raise ValueError(
                    f"from_panels: panel {i} pivots about the {p.pivot}, panel 0 "
                    f"about the {first.pivot}"
                )
        leaves = {}
        for f in _leaf_fields():
            values = [getattr(p, f.name) for p in panels]
            xp = np if all(isinstance(v, np.ndarray) for v in values) else jnp
            leaves[f.name] = xp.stack(values)
        return cls(**leaves, image_size=first.image_size, pivot=first.pivot, panels=len(panels))

    @classmethod
    def from_vectors(
        cls,
        fast_axis: Sequence[float],
        slow_axis: Sequence[float],
        origin: Sequence[float],
        pixel_size: float | Sequence[float],
        image_size: tuple[int, int],
        *,
        layer_thickness: float = 0.0,
        mu: float = 0.0,
    ) -> Detector:
        """A flat detector from dxtbx's panel frame.

        Args:
            fast_axis, slow_axis: (3,) directions of increasing fast and slow pixel index.
            origin: (3,) the first pixel's outer corner, from the sample [m].
            pixel_size: edge of a square pixel [m] (or an equal (fast, slow) pair).
            image_size: (fast, slow) pixel counts.
            layer_thickness, mu: one sensor layer's thickness [m] and attenuation [1/m].

        The detector pivots about the sample; its normal is the unit fast × slow, turned to
        face away from the sample, and ``close_distance`` (which places it) and ``distance``
        both hold the sample-to-plane distance.
        """
        size = np.broadcast_to(np.asarray(pixel_size, dtype=float), (2,))
        if size[0] != size[1] or not size[0] > 0.0:
            raise ValueError(f"pixel_size: square pixels of positive size only, got {size}")
        fast, slow = _unit_np(fast_axis), _unit_np(slow_axis)
        origin = np.asarray(origin, dtype=float)
        normal = _unit_np(np.cross(fast, slow))
        if np.dot(origin, normal) < 0.0:
            normal = -normal
        # origin = -beam_f·fast - beam_s·slow + close·normal (the sample pivot's first corner)
        beam_f, beam_s, close = np.linalg.solve(np.stack([-fast, -slow, normal], axis=1), origin)
        return cls(
            fast_axis=fast,
            slow_axis=slow,
            normal=normal,
            beam_f=np.asarray(beam_f),
            beam_s=np.asarray(beam_s),
            distance=np.asarray(close),
            close_distance=np.asarray(close),
            rotations=np.zeros(3),
            twotheta=np.asarray(0.0),
            twotheta_axis=np.array([0.0, 1.0, 0.0]),
            pixel_size=np.asarray(float(size[0])),
            layer_thickness=np.asarray(float(layer_thickness)),
            mu=np.asarray(float(mu)),
            image_size=tuple(image_size),
            pivot="sample",
        )

    @classmethod
    def from_convention(
        cls,
        convention: str,
        pixel_size: float,
        image_size: tuple[int, int],
        distance: float,
        beam_centre: tuple[float, float] | None = None,
        *,
        close_centre: tuple[float, float] | None = None,
        origin_pixel: tuple[float, float] | None = None,
        close_distance: float = math.nan,
        rotations: Sequence[float] = (0.0, 0.0, 0.0),
        twotheta: float = 0.0,
        twotheta_axis: Sequence[float] | None = None,
        pivot: str | None = None,
        axes: tuple[Sequence[float], Sequence[float], Sequence[float]] | None = None,
        detector_size: tuple[float, float] | None = None,
        layer_thickness: float = 0.0,
        mu: float = 0.0,
    ) -> Detector:
        """A detector placed the way nanoBragg places it for a convention.

        Args:
            convention: "mosflm", "denzo", "adxv", "xds", "dials" or "custom".
            pixel_size [m], image_size (fast, slow) pixels, distance [m] along the beam.
            beam_centre: (X, Y) beam centre [m] in the convention's own meaning [-Xbeam/-Ybeam].
            close_centre: (X, Y) of the point nearest the sample [m] [-Xclose/-Yclose].
            origin_pixel: (ORGX, ORGY) in pixels, XDS style [-ORGX/-ORGY].
            close_distance: distance along the normal [m] (NaN: derived) [-close_distance].
            rotations (rad, about x, y, z), twotheta (rad), twotheta_axis: the swing.
            pivot: "beam" or "sample"; the convention's own where it forces one.
            axes: (fast, slow, normal) unit vectors for "custom" (else the convention's).
            detector_size: (fast, slow) extent [m] when it is not pixels × pixel size.
            layer_thickness, mu: one sensor layer's thickness [m] and attenuation [1/m].
        """
        centre = beam_centre_rule(
            convention,
            pixel_size,
            detector_size or (pixel_size * image_size[0], pixel_size * image_size[1]),
            beam_centre,
            close_centre,
            origin_pixel,
            pivot,
        )
        if convention in CONVENTION_VECTORS:
            _, fast, slow, normal, default_axis, _, _ = CONVENTION_VECTORS[convention]
        elif axes is not None:
            fast, slow, normal = axes
            default_axis = (0.0, 1.0, 0.0)
        else:
            raise ValueError(f"convention {convention!r} needs the detector axes")
        sample = centre.pivot == "sample"
        return cls(
            fast_axis=_unit_np(fast),
            slow_axis=_unit_np(slow),
            normal=_unit_np(normal),
            beam_f=np.asarray(centre.fclose if sample else centre.fbeam),
            beam_s=np.asarray(centre.sclose if sample else centre.sbeam),
            distance=np.asarray(float(distance)),
            close_distance=np.asarray(float(close_distance)),
            rotations=np.asarray(rotations, dtype=float),
            twotheta=np.asarray(float(twotheta)),
            twotheta_axis=np.asarray(
                default_axis if twotheta_axis is None else twotheta_axis, dtype=float
            ),
            pixel_size=np.asarray(float(pixel_size)),
            layer_thickness=np.asarray(float(layer_thickness)),
            mu=np.asarray(float(mu)),
            image_size=tuple(image_size),
            pivot=centre.pivot,
        )


def _leaf_fields():
    return [f for f in dataclasses.fields(Detector) if not f.metadata.get("static")]


def _unit_np(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    mag = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return v / mag if mag != 0.0 else np.zeros(3)


class BeamCentre(NamedTuple):
    """Where nanoBragg puts the beam: detector coordinates [m] from the first pixel's corner
    of the direct-beam spot (``fbeam``, ``sbeam``) and of the point nearest the sample
    (``fclose``, ``sclose``), the convention's reported ``xbeam``, ``ybeam``, and the pivot."""

    fbeam: float
    sbeam: float
    fclose: float
    sclose: float
    xbeam: float
    ybeam: float
    pivot: str


def beam_centre_rule(
    convention: str,
    pixel_size: float,
    detector_size: tuple[float, float],
    beam_centre: tuple[float, float] | None,
    close_centre: tuple[float, float] | None,
    origin_pixel: tuple[float, float] | None,
    pivot: str | None,
) -> BeamCentre:
    """nanoBragg's beam-centre rules: which of -Xbeam/-Ybeam, -Xclose/-Yclose and -ORGX/-ORGY
    a convention honours, their defaults, and the pivot the convention forces."""
    nan = math.nan
    xbeam, ybeam = beam_centre if beam_centre is not None else (nan, nan)
    xclose, yclose = close_centre if close_centre is not None else (nan, nan)
    orgx, orgy = origin_pixel if origin_pixel is not None else (nan, nan)
    size_f, size_s = detector_size
    pix = pixel_size
    fclose = (orgx - 0.5) * pix if not math.isnan(orgx) else size_f / 2.0
    sclose = (orgy - 0.5) * pix if not math.isnan(orgy) else size_s / 2.0
    xclose = fclose if math.isnan(xclose) else xclose
    yclose = sclose if math.isnan(yclose) else yclose
    fbeam, sbeam = fclose, sclose
    pivot = pivot or "beam"
    if convention == "adxv":
        xbeam = (size_f + pix) / 2.0 if math.isnan(xbeam) else xbeam
        ybeam = (size_s - pix) / 2.0 if math.isnan(ybeam) else ybeam
        fbeam, sbeam, pivot = xbeam, size_s - ybeam, "beam"
    elif convention in ("mosflm", "denzo"):
        xbeam = (size_s + pix) / 2.0 if math.isnan(xbeam) else xbeam
        ybeam = (size_f + pix) / 2.0 if math.isnan(ybeam) else ybeam
        half = 0.5 * pix if convention == "mosflm" else 0.0
        fbeam, sbeam, pivot = ybeam + half, xbeam + half, "beam"
    elif convention in ("xds", "dials"):
        xbeam = xclose if math.isnan(xbeam) else xbeam
        ybeam = yclose if math.isnan(ybeam) else ybeam
        fbeam, sbeam, pivot = xbeam, ybeam, "sample"
    else:
        xbeam = xclose if math.isnan(xbeam) else xbeam
        ybeam = yclose if math.isnan(ybeam) else ybeam
        fbeam, sbeam = xbeam, ybeam
        fclose, sclose = xbeam, ybeam
    return BeamCentre(fbeam, sbeam, fclose, sclose, xbeam, ybeam, pivot)


class DetectorGeometry(NamedTuple):
    """Rotated detector frame: unit axes, the first pixel's corner, and distances [m]."""

    fast: Array
    slow: Array
    normal: Array
    pix0: Array
    close_distance: Array
    distance: Array


def detector_geometry(
    det: Detector, beam_direction: Array, pivot_sample: bool | None = None
) -> DetectorGeometry:
    """Rotate the detector and place its origin (nanoBragg's detector set-up).

    ``pivot_sample`` defaults to the detector's own pivot.
    """
    if pivot_sample is None:
        pivot_sample = det.pivot == "sample"
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


def panel_geometries(
    det: Detector, beam_direction: Array, pivot_sample: bool | None = None
) -> DetectorGeometry:
    """:func:`detector_geometry` of every panel: each field with a leading panel axis (of
    length 1 for a single-panel detector)."""
    if not det.panels:
        geom = detector_geometry(det, beam_direction, pivot_sample)
        return DetectorGeometry(*(jnp.asarray(x)[None] for x in geom))
    return jax.vmap(lambda d: detector_geometry(d, beam_direction, pivot_sample))(det.unstacked())


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
