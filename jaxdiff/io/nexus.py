"""The NXmx (NeXus for macromolecular crystallography) description of a jaxdiff run.

NeXus places vectors in the McStas frame: +z along the beam, +y up, +x completing a
right-handed set. jaxdiff's lab frame is nanoBragg's, fixed by the convention (MOSFLM: beam along
+x). :func:`lab_to_mcstas` is the frame change: the smallest rotation that turns the beam
direction onto +z (a half turn about y when the beam runs along -z). For the MOSFLM and DENZO
conventions it maps (x, y, z) to (z, y, -x) in McStas, so y (up) stays up; for XDS, DIALS and ADXV
(beam along +z) it is the identity. Readers that work in the imgCIF frame (dxtbx) then flip x and
z: imgCIF = diag(-1, 1, -1) · McStas.

The detector is one NXdetector_module whose pixel (0, 0) has its corner at the end of the chain

    module_offset → distance → rot_x → rot_y → rot_z → two_theta

(each transformation depends on the next): ``distance`` translates along the unrotated
detector normal, ``module_offset`` along the rest of the unrotated offset (in the detector
plane when the convention's axes are orthonormal), then nanoBragg's rotations about x, y and z
and the two-theta swing turn the whole panel about the sample. The fast and slow pixel
directions are the unrotated detector axes, so the composed chain gives back jaxdiff's rotated
fast and slow axes and the first pixel's corner ``pix0``
(:func:`jaxdiff.detector.detector_geometry`) exactly, for either pivot. The sample depends on
one rotation, ``phi``, about the spindle axis, one value per image (the start of its
oscillation) with ``phi_end`` and ``phi_increment_set`` when the images form a rotation scan.

Besides the chain: ``incident_wavelength`` is the mean of the sources' wavelengths (one per
image if they differ), ``flux_integrated`` the fluence, ``beam_center_x/_y`` where the direct
beam meets the detector plane in pixels along fast and slow from the first pixel's corner, and
``pixel_mask`` flags jaxdiff's unrendered pixels (mask 0) with NXmx's user-mask bit. The
detector is flat: ``-curved_det`` has no NXmx form.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import h5py
import numpy as np

from jaxdiff.detector import detector_geometry, panel_geometries

# The NXmx detector (and its chain) for readers that follow it to the pixels.
DETECTOR = "/entry/instrument/detector"
MODULE = DETECTOR + "/module"
DETECTOR_AXES = DETECTOR + "/transformations"
SAMPLE_AXES = "/entry/sample/transformations"
# Bit 8 of the NXmx pixel mask: a user-defined mask (jaxdiff's pixels that are not rendered).
_USER_MASK_BIT = 1 << 8
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])
# NXmx requires a sensor thickness and dxtbx refuses zero: a sensor without thickness (no
# absorption model) is written this thin [m], so the parallax dxtbx models is negligible.
THIN_SENSOR = 1e-9


def lab_to_mcstas(beam_direction) -> np.ndarray:
    """(3, 3) rotation from jaxdiff's lab frame to NeXus' McStas frame (beam along +z)."""
    b = np.asarray(beam_direction, dtype=np.float64)
    b = b / np.linalg.norm(b)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(b, z)
    sin, cos = np.linalg.norm(axis), float(b @ z)
    if sin < 1e-15:
        return np.eye(3) if cos > 0.0 else np.diag([-1.0, 1.0, -1.0])
    k = axis / sin
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + sin * cross + (1.0 - cos) * (cross @ cross)


def _string(group: h5py.Group, name: str, value: str) -> h5py.Dataset:
    return group.create_dataset(name, data=value, dtype=h5py.string_dtype())


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _axis(group, name, values, units, kind, vector, depends_on) -> h5py.Dataset:
    ds = group.create_dataset(name, data=np.atleast_1d(np.asarray(values, dtype=np.float64)))
    ds.attrs["units"] = units
    ds.attrs["transformation_type"] = kind
    ds.attrs["vector"] = np.asarray(vector, dtype=np.float64)
    ds.attrs["offset"] = np.zeros(3)
    ds.attrs["offset_units"] = "m"
    ds.attrs["depends_on"] = depends_on
    return ds


def _per_image(ds: h5py.Dataset, units: str | None = None) -> None:
    """Mark a dataset that holds one value per image (when it is an array) for stack joins."""
    if units is not None:
        ds.attrs["units"] = units
    ds.attrs["per_image"] = ds.ndim == 1


def _unit_or_any(v: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, float]:
    length = float(np.linalg.norm(v))
    return (v / length, length) if length > 0.0 else (fallback, 0.0)


def module_name(panel: int, panels: int) -> str:
    """The NXdetector_module of ``panel`` of a ``panels``-panel detector (zero-padded, so that
    readers that list a group's members by name keep the panel order)."""
    return f"module_{panel:0{len(str(panels - 1))}d}"


def _modules(instrument: h5py.Group, exp, config, to_mcstas: np.ndarray) -> None:
    """A multi-panel detector: one NXdetector_module per panel, panel p's pixels the rows
    p·slow to (p+1)·slow of the image. Each module's chain is one translation to its first
    pixel's corner, and its fast and slow pixel directions are the panel's rotated axes."""
    det = exp.detector
    geom = panel_geometries(det, exp.beam.direction, config.pivot_sample)
    pix0s, fasts, slows = (
        np.asarray(v, dtype=np.float64) for v in (geom.pix0, geom.fast, geom.slow)
    )
    fpixels, spixels = det.image_size
    pixels = np.asarray(det.pixel_size, dtype=np.float64)
    group = _group(instrument, "detector", "NXdetector")
    m = to_mcstas
    for p in range(det.panels):
        name = module_name(p, det.panels)
        module = _group(group, name, "NXdetector_module")
        module.create_dataset("data_origin", data=np.array([p * spixels, 0], dtype=np.int64))
        module.create_dataset("data_size", data=np.array([spixels, fpixels], dtype=np.int64))
        module.create_dataset("data_stride", data=np.array([1, 1], dtype=np.int64))
        where, length = _unit_or_any(pix0s[p], fasts[p])
        _axis(module, "module_offset", length, "m", "translation", m @ where, ".")
        offset = f"{DETECTOR}/{name}/module_offset"
        for axis_name, axis in (
            ("fast_pixel_direction", fasts[p]),
            ("slow_pixel_direction", slows[p]),
        ):
            _axis(module, axis_name, float(pixels[p]), "m", "translation", m @ axis, offset)
    thickness = float(np.max(np.asarray(det.layer_thickness))) * config.thicksteps or THIN_SENSOR
    _string(group, "sensor_material", "Si")
    group.create_dataset("sensor_thickness", data=thickness).attrs["units"] = "m"
    _string(group, "description", f"jaxdiff simulated {det.panels}-panel pixel-array detector")
    _string(group, "type", "pixel")
    mask = np.asarray(exp.mask).reshape(det.panels * spixels, fpixels)
    pixel_mask = np.where(mask == 0, _USER_MASK_BIT, 0).astype(np.int32)
    group.create_dataset("pixel_mask", data=pixel_mask, compression="gzip")
    group.create_dataset("pixel_mask_applied", data=False)


def _detector(instrument: h5py.Group, exp, config, shape, to_mcstas: np.ndarray) -> None:
    det = exp.detector
    if det.panels:
        _modules(instrument, exp, config, to_mcstas)
        return
    geom = detector_geometry(det, exp.beam.direction, config.pivot_sample)
    pix0, fast, slow, normal = (
        np.asarray(v, dtype=np.float64) for v in (geom.pix0, geom.fast, geom.slow, geom.normal)
    )
    rotations = np.asarray(det.rotations, dtype=np.float64)
    twotheta = float(np.asarray(det.twotheta))
    n0 = np.asarray(det.normal, dtype=np.float64)
    f0 = np.asarray(det.fast_axis, dtype=np.float64)
    s0 = np.asarray(det.slow_axis, dtype=np.float64)
    pixel = float(np.asarray(det.pixel_size))

    # pix0 = O · u with O the detector's rotation (two-theta · z · y · x): u is pix0 before it.
    frame = np.stack([fast, slow, normal], axis=1)
    frame0 = np.stack([f0, s0, n0], axis=1)
    turn = frame @ np.linalg.inv(frame0)
    u = np.linalg.solve(turn, pix0)
    along_normal = float(u @ n0)
    offset_dir, offset_len = _unit_or_any(u - along_normal * n0, f0)

    group = _group(instrument, "detector", "NXdetector")
    axes = _group(group, "transformations", "NXtransformations")
    m = to_mcstas
    tt_axis = np.asarray(det.twotheta_axis, dtype=np.float64)
    tt_axis, _ = _unit_or_any(tt_axis, np.array([0.0, 0.0, 1.0]))
    _axis(axes, "two_theta", np.degrees(twotheta), "deg", "rotation", m @ tt_axis, ".")
    above = f"{DETECTOR_AXES}/two_theta"
    for i, name in ((2, "rot_z"), (1, "rot_y"), (0, "rot_x")):
        _axis(axes, name, np.degrees(rotations[i]), "deg", "rotation", m @ np.eye(3)[i], above)
        above = f"{DETECTOR_AXES}/{name}"
    _axis(axes, "distance", along_normal, "m", "translation", m @ n0, above)
    _string(group, "depends_on", f"{DETECTOR_AXES}/distance")

    module = _group(group, "module", "NXdetector_module")
    module.create_dataset("data_origin", data=np.array([0, 0], dtype=np.int64))
    module.create_dataset("data_size", data=np.array(shape, dtype=np.int64))
    module.create_dataset("data_stride", data=np.array([1, 1], dtype=np.int64))
    dist = f"{DETECTOR_AXES}/distance"
    _axis(module, "module_offset", offset_len, "m", "translation", m @ offset_dir, dist)
    _axis(
        module, "fast_pixel_direction", pixel, "m", "translation", m @ f0, MODULE + "/module_offset"
    )
    _axis(
        module, "slow_pixel_direction", pixel, "m", "translation", m @ s0, MODULE + "/module_offset"
    )

    group.create_dataset("distance", data=float(np.asarray(geom.distance))).attrs["units"] = "m"
    group.create_dataset("distance_derived", data=True)
    beam = np.asarray(exp.beam.direction, dtype=np.float64)
    reach = float(beam @ normal)
    if reach != 0.0:
        hit = float(pix0 @ normal) / reach * beam - pix0
        for axis_name, axis in (("beam_center_x", fast), ("beam_center_y", slow)):
            ds = group.create_dataset(axis_name, data=float(hit @ axis) / pixel)
            ds.attrs["units"] = "pixel"
        group.create_dataset("beam_center_derived", data=True)
    thickness = float(np.asarray(det.layer_thickness)) * config.thicksteps or THIN_SENSOR
    _string(group, "sensor_material", "Si")
    group.create_dataset("sensor_thickness", data=thickness).attrs["units"] = "m"
    _string(group, "description", "jaxdiff simulated pixel-array detector")
    _string(group, "type", "pixel")
    mask = np.asarray(exp.mask)
    pixel_mask = np.where(mask == 0, _USER_MASK_BIT, 0).astype(np.int32)
    group.create_dataset("pixel_mask", data=pixel_mask, compression="gzip")
    group.create_dataset("pixel_mask_applied", data=False)


def _wavelength_angstrom(exp) -> float:
    return float(np.mean(np.asarray(exp.beam.wavelengths, dtype=np.float64))) * 1e10


def write_nxmx(
    f: h5py.File,
    experiments: Sequence,
    config,
    *,
    shape: tuple[int, int],
    oscillation: tuple[float, float] | None,
    images: Sequence[tuple[str, type, str]],
) -> dict[str, h5py.Dataset]:
    """Write the NXmx groups of ``len(experiments)`` images of ``shape`` (slow, fast) into ``f``.

    ``experiments``: one per image (a repeated object for a shared model); the detector, beam
    axis and spindle are the first one's, wavelengths and φ are per image. ``oscillation``:
    ``(phi_start, width)`` [rad] of the first image of a rotation scan, or None for stills
    (each image at its crystal's φ0; a zero width is a still too). ``images``: ``(name,
    dtype, long_name)`` of the image datasets to create in /entry/data, the first being the
    signal. Returns them by name, empty, shaped (n, slow, fast), for the caller to fill.
    """
    n = len(experiments)
    first = experiments[0]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = "entry"
    f.attrs["file_time"] = now
    f.attrs["creator"] = "jaxdiff"
    entry = _group(f, "entry", "NXentry")
    entry.attrs["default"] = "data"
    entry.attrs["version"] = "1.0"
    _string(entry, "definition", "NXmx")
    _string(entry, "start_time", now)
    _string(entry, "end_time_estimated", now)
    _string(entry, "program_name", "jaxdiff")
    source = _group(entry, "source", "NXsource")
    _string(source, "name", "jaxdiff simulation")

    to_mcstas = lab_to_mcstas(first.beam.direction)
    instrument = _group(entry, "instrument", "NXinstrument")
    _string(instrument, "name", "jaxdiff")
    _string(instrument, "time_zone", "+00:00")
    beam = _group(instrument, "beam", "NXbeam")
    waves = np.array([_wavelength_angstrom(e) for e in experiments])
    wave = waves[0] if np.all(waves == waves[0]) else waves
    _per_image(beam.create_dataset("incident_wavelength", data=wave), "angstrom")
    fluence = np.array([float(np.asarray(e.beam.fluence)) for e in experiments])
    flux = fluence[0] if np.all(fluence == fluence[0]) else fluence
    _per_image(beam.create_dataset("flux_integrated", data=flux), "1/m^2")
    beam.attrs["flux"] = "flux_integrated"
    _detector(instrument, first, config, shape, to_mcstas)

    sample = _group(entry, "sample", "NXsample")
    _string(sample, "name", "crystal")
    axes = _group(sample, "transformations", "NXtransformations")
    spindle = to_mcstas @ np.asarray(first.crystal.spindle, dtype=np.float64)
    if oscillation is None or float(oscillation[1]) == 0.0:
        phi = np.degrees([float(np.asarray(e.crystal.phi0)) for e in experiments])
        _per_image(_axis(axes, "phi", phi, "deg", "rotation", spindle, "."))
    else:
        start, width = (float(v) for v in oscillation)
        phi = np.degrees(start + width * np.arange(n))
        _per_image(_axis(axes, "phi", phi, "deg", "rotation", spindle, "."))
        _per_image(axes.create_dataset("phi_end", data=phi + np.degrees(width)), "deg")
        axes.create_dataset("phi_increment_set", data=np.degrees(width)).attrs["units"] = "deg"
    _string(sample, "depends_on", f"{SAMPLE_AXES}/phi")

    data = _group(entry, "data", "NXdata")
    shape = (n, *shape)
    created = {}
    for name, dtype, long_name in images:
        ds = data.create_dataset(
            name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), compression="gzip"
        )
        ds.attrs["units"] = "counts"
        ds.attrs["long_name"] = long_name
        created[name] = ds
    signal = images[0][0]
    data.attrs["signal"] = signal
    if len(images) > 1:
        data.attrs["auxiliary_signals"] = [name for name, _, _ in images[1:]]
    f[DETECTOR]["data"] = h5py.SoftLink(created[signal].name)
    return created
