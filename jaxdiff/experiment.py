"""From a nanoBragg command line to an :class:`Experiment` and :class:`SimConfig`.

This is the C program's set-up after argument parsing (header files, defaults, conventions,
sampling counts, sources, mosaic domains, structure factors), done once in NumPy. The result is
the same pytrees the library uses, so the command line and the library render the same image.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path

import jax
import numpy as np

from jaxdiff import aot
from jaxdiff import crystal as xtal
from jaxdiff.beam import Beam, divergence_offsets, file_sources
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal
from jaxdiff.detector import CONVENTION_VECTORS, Detector, beam_centre_rule, detector_geometry
from jaxdiff.errors import InputError
from jaxdiff.flags import RTD, Options, parse
from jaxdiff.io import (
    HKLGrid,
    header_float,
    read_fdump,
    read_hkl,
    read_mosflm_matrix,
    read_smv,
    read_sourcefile,
    write_fdump,
)
from jaxdiff.io.dials import DialsExperiment, read_experiment
from jaxdiff.simulate import Experiment, shape_text
from jaxdiff.simulate import steps as nanobragg_steps

FDUMP = "Fdump.bin"
EXPT = "expt"  # the convention of a geometry read from --expt: custom vectors, kept as given

# Set-up evaluates these once per run; compiled whole they cost one (cached) program each
# instead of dozens of small eager operations. The pytrees hold NumPy arrays until the
# finished experiment goes to the device in one transfer.
_detector_geometry = jax.jit(detector_geometry, static_argnames="pivot_sample")
_cell_vectors = jax.jit(xtal.cell_vectors, static_argnames="from_cell")


@dataclasses.dataclass(frozen=True)
class Setup:
    """A fully resolved run: the pytrees, the static configuration, and what the C program
    reports or writes besides the image (header values, output names), the -hkl table to cache
    in Fdump.bin, and the --expt experiment it started from (to write a fit back into); for a
    multi-panel detector, each panel's SMV header values (``header`` is panel 0's)."""

    experiment: Experiment
    config: SimConfig
    options: Options
    header: dict
    steps: int
    hkl_count: int
    hkl_table: HKLGrid | None = None
    expt: DialsExperiment | None = None
    panel_headers: tuple[dict, ...] = ()

    def write_fdump(self, folder: str | os.PathLike = ".") -> None:
        """Write the -hkl table to ``Fdump.bin`` in ``folder``, as the C program does (nothing
        without -hkl)."""
        if self.hkl_table is not None:
            write_fdump(Path(folder) / FDUMP, self.hkl_table)


def _apply_header(o: Options, path: str, mask: bool) -> np.ndarray:
    header, data = read_smv(path)
    o.fpixels, o.spixels = data.shape[1], data.shape[0]

    def val(key):
        return header_float(header, key)

    if (v := val("PIXEL_SIZE")) is not None:
        o.pixel_size = v / 1000.0
    o.detsize_f = o.pixel_size * o.fpixels
    o.detsize_s = o.pixel_size * o.spixels
    if (v := val("DISTANCE")) is not None:
        o.distance = v / 1000.0
    if (v := val("CLOSE_DISTANCE")) is not None:
        o.close_distance = v / 1000.0
    if (v := val("WAVELENGTH")) is not None:
        o.lambda0 = v / 1e10
    if (v := val("BEAM_CENTER_X")) is not None:
        o.Xbeam = v / 1000.0
    if (v := val("BEAM_CENTER_Y")) is not None:
        o.Ybeam = o.detsize_s - v / 1000.0 if mask else v / 1000.0
    if (v := val("ORGX")) is not None:
        o.ORGX = v
    if (v := val("ORGY")) is not None:
        o.ORGY = v
    if (v := val("PHI")) is not None:
        o.phi0 = v / RTD
    if (v := val("OSC_RANGE")) is not None:
        o.osc = v / RTD
    return data


def _steps_logic(rng, step, steps, default_range):
    """nanoBragg's shared rules for (range, step, count) triples given with some missing."""
    if steps <= 0:
        if rng < 0.0:
            if step <= 0.0:
                return 0.0, 0.0, 1
            return step, step, 2
        if step <= 0.0:
            return rng, rng, 2
        return rng, step, int(math.ceil(rng / step))
    if rng < 0.0:
        if step <= 0.0:
            return default_range, default_range / steps, steps
        return step, step, 2
    if step <= 0.0:
        steps = max(steps, 2)
        return rng, rng / (steps - 1), steps
    return rng, step, steps


def _phi_logic(osc, phistep, phisteps):
    if phisteps < 0:
        if osc < 0.0:
            if phistep <= 0.0:
                return 0.0, 0.0, 1
            return phistep, phistep, 2
        if phistep <= 0.0:
            return osc, osc / 2.0, 2
        return osc, phistep, int(math.ceil(osc / phistep))
    phisteps = max(phisteps, 1)
    if osc < 0.0:
        if phistep <= 0.0:
            osc = 1.0 / RTD
            return osc, osc / phisteps, phisteps
        return phistep, phistep, 2
    if phistep < 0.0:
        return osc, osc / phisteps, phisteps
    return osc, phistep, phisteps


def _thick_logic(thick, thickstep, steps):
    if steps <= 0:
        if thick < 0.0:
            return (0.0, 0.0, 1) if thickstep <= 0.0 else (thickstep, thickstep, 2)
        if thickstep <= 0.0:
            return thick, thick / 2, 2
        return thick, thickstep, int(math.ceil(thick / thickstep))
    if thick < 0.0:
        if thickstep <= 0.0:
            return 0.5e-6, 0.5e-6 / steps, steps
        return thickstep, thickstep, 2
    if thickstep <= 0.0:
        steps = max(steps, 2)
        return thick, thick / (steps - 1), steps
    return thick, thickstep, steps


def _unit(v) -> tuple[np.ndarray, float]:
    v = np.asarray(v, dtype=float)
    mag = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v / mag if mag != 0.0 else np.zeros(3)), mag


def _at(cwd: Path | None, path: str | None) -> str | None:
    """A file name from the command line, relative to ``cwd`` (absolute names unchanged)."""
    if path is None or cwd is None:
        return path
    return str(cwd / path)


def load_options(
    argv: list[str], cwd: str | os.PathLike | None = None
) -> tuple[Options, np.ndarray | None, DialsExperiment | None]:
    """Parse a command line, reading the --expt file and the -mask and -img headers first (as
    the C program reads its headers), so that flags add to and override what those say.

    Returns the options, the -mask image and the --expt experiment (None when not given).
    """
    folder = Path(cwd) if cwd is not None else None
    first = parse(argv)
    base = Options()
    mask = expt = None
    if first.expt:
        expt = read_experiment(_at(folder, first.expt))
        _apply_experiment(base, expt)
    if first.maskfile:
        mask = _apply_header(base, _at(folder, first.maskfile), mask=True)
    if first.imgfile:
        _apply_header(base, _at(folder, first.imgfile), mask=False)
    if first.expt or first.maskfile or first.imgfile:  # the flags go on top of the files
        from_file = copy.deepcopy(base)
        o = parse(argv, base)
    else:
        o = first
    if expt is not None and len(expt.panels) > 1:
        _keep_panels(o, from_file, expt)
    for attr in ("matfile", "hklfile", "imgfile", "maskfile", "stolfile", "sourcefile", "expt"):
        setattr(o, attr, _at(folder, getattr(o, attr)))
    return o, mask, expt


# Flags that place or size a single-panel detector (by the Options attribute they set), in
# the order they are named when several are given.
_PANEL_FLAGS = {
    "beam": "-beam_vector",
    "fdet": "-fdet_vector",
    "sdet": "-sdet_vector",
    "odet": "-odet_vector",
    "distance": "-distance",
    "close_distance": "-close_distance",
    "Xbeam": "-Xbeam",
    "Ybeam": "-Ybeam",
    "Xclose": "-Xclose",
    "Yclose": "-Yclose",
    "ORGX": "-ORGX",
    "ORGY": "-ORGY",
    "detector_rot": "-detector_rotx/y/z",
    "twotheta": "-twotheta",
    "twotheta_axis": "-twotheta_axis",
    "pixel_size": "-pixel",
    "fpixels": "-detpixels",
    "spixels": "-detpixels",
    "detsize_f": "-detsize",
    "detsize_s": "-detsize",
    "curved": "-curved_det",
    "maskfile": "-mask",
    "imgfile": "-img",
    # last: the flags above that place the detector set the pivot too
    "convention": "-mosflm/-xds/-adxv/-denzo/-dials",
    "pivot": "-pivot",
}


def _keep_panels(o: Options, from_file: Options, expt: DialsExperiment) -> None:
    """A multi-panel --expt detector is the file's: flags that would move or resize one panel
    are refused, naming the flag, and so is c-parity φ carryover."""

    def same(a, b):
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)

    for attr, flag in _PANEL_FLAGS.items():
        if not same(getattr(o, attr), getattr(from_file, attr)):
            raise InputError(
                f"{flag}: the --expt file's detector has {len(expt.panels)} panels, whose "
                "geometry is the file's; this flag places a single panel"
            )
    if o.carryover == "c-parity":
        raise InputError(
            "--phi-carryover-mode: c-parity is the single-panel C program's run-wide state; "
            f"the --expt file's {len(expt.panels)}-panel detector renders in spec mode"
        )


def _apply_experiment(o: Options, expt: DialsExperiment) -> None:
    """Options as the --expt file's beam, detector (panel 0 of several), goniometer and scan
    set them."""
    det = expt.panels[0].detector()
    beam_dir = expt.beam_direction
    ratio = float(np.dot(beam_dir, np.asarray(det.normal)))
    if ratio <= 0.0:
        raise InputError(f"{expt.path}: the detector does not face the beam")
    o.lambda0 = expt.wavelength
    o.beam = list(beam_dir)
    o.polar_vector = list(expt.polar_vector)
    o.polarization = expt.polarization
    o.convention = EXPT
    o.pivot = "sample"
    o.fdet, o.sdet, o.odet = (
        list(np.asarray(v)) for v in (det.fast_axis, det.slow_axis, det.normal)
    )
    o.Xbeam, o.Ybeam = float(det.beam_f), float(det.beam_s)
    o.distance = float(det.close_distance) / ratio
    o.close_distance = math.nan
    o.pixel_size = float(det.pixel_size)
    o.fpixels, o.spixels = det.image_size
    o.detsize_f = o.pixel_size * o.fpixels
    o.detsize_s = o.pixel_size * o.spixels
    if expt.thickness > 0.0 and expt.mu > 0.0:  # a sensor without attenuation captures nothing
        o.detector_thick = expt.thickness
        o.detector_mu = expt.mu
    if expt.rotation_axis is not None:
        o.spindle = list(expt.rotation_axis)
    if expt.oscillation is not None:
        o.phi0, o.osc = expt.oscillation


def build(argv: list[str], cwd: str | os.PathLike | None = None) -> Setup:
    """Resolve a nanoBragg command line into a :class:`Setup`.

    Input files are found relative to ``cwd`` (default: the current folder), including an
    ``Fdump.bin`` read when -hkl is absent. Nothing is written: the ``jaxdiff`` command writes
    the structure-factor cache (:meth:`Setup.write_fdump`).
    """
    o, mask_data, expt = load_options(argv, cwd)
    return _resolve(o, mask_data, expt, Path(cwd) if cwd is not None else Path("."))


def assemble(
    beam: Beam,
    crystal: Crystal,
    detector: Detector,
    *,
    default_F: float = 0.0,
    table: HKLGrid | None = None,
    mask: np.ndarray | None = None,
) -> Experiment:
    """An :class:`Experiment` of models built in Python.

    Args:
        default_F: structure factor of reflections not in ``table``.
        table: structure factors (:func:`jaxdiff.io.read_hkl`), or None for ``default_F``
            everywhere.
        mask: (slow, fast) nonzero where a pixel is rendered, (panel, slow, fast) for a
            multi-panel detector; all pixels by default.
    """
    shape = detector.shape
    rendered = np.ones(shape) if mask is None else (np.asarray(mask) != 0).astype(np.float64)
    if rendered.shape != shape:
        raise ValueError(f"mask is {shape_text(rendered.shape)}, the detector {shape_text(shape)}")
    return Experiment(
        beam=beam,
        crystal=crystal,
        detector=detector,
        fhkl=np.asarray(table.F) if table is not None else np.zeros((1, 1, 1)),
        default_F=np.asarray(float(default_F)),
        mask=rendered,
    )


def config_for(exp: Experiment, table: HKLGrid | None = None, **settings) -> SimConfig:
    """A :class:`SimConfig` whose model-given fields match ``exp``: the detector's size and
    pivot, how the crystal is defined, a full-detector ROI (unless ``roi`` is given) and, with
    ``table`` (the structure factors ``exp`` holds), its index bounds. ``settings`` are the
    other fields (oversample, phisteps, shape, ...)."""
    fpixels, spixels = exp.detector.image_size
    settings.setdefault("roi", (0, fpixels, 0, spixels))
    if table is not None and table.count:
        settings.setdefault("table_lo", (table.h_min, table.k_min, table.l_min))
        settings.setdefault("table_hi", (table.h_max, table.k_max, table.l_max))
    return SimConfig(
        spixels=spixels,
        fpixels=fpixels,
        from_cell=exp.crystal.defined_by == "cell",
        pivot_sample=exp.detector.pivot == "sample",
        **settings,
    )


def _check(o: Options, fpixels: int, spixels: int, have_crystal: bool) -> None:
    """The flags' own consistency: one message naming the flag."""
    if fpixels <= 0 or spixels <= 0:
        raise InputError(f"-detpixels: detector must have pixels, got {fpixels}x{spixels}")
    if o.lambda0 <= 0.0:
        raise InputError(f"-lambda: wavelength must be positive, got {o.lambda0 * 1e10:g} A")
    if o.distance <= 0.0 and math.isnan(o.close_distance):
        raise InputError(f"-distance: must be positive, got {o.distance * 1e3:g} mm")
    for name, n in (("-Na", o.Na), ("-Nb", o.Nb), ("-Nc", o.Nc)):
        if n <= 0:
            raise InputError(f"{name}: number of unit cells must be positive, got {n:g}")
    if o.oversample == 0 or o.oversample < -1:
        raise InputError(f"-oversample: must be a positive whole number, got {o.oversample}")
    if o.matfile and o.user_cell:
        raise InputError("-cell and -mat both give the unit cell: use one of them")
    if not o.matfile and not o.user_cell and not have_crystal:
        raise InputError("no crystal: give -cell a b c alpha beta gamma, -mat FILE or --expt FILE")


def _counts(o: Options) -> dict:
    """nanoBragg's sampling counts: (range, step, count) of φ, divergence, dispersion, sensor
    layers, and the mosaic spread and domain count, with the C program's defaults."""
    phi = _phi_logic(o.osc, o.phistep, o.phisteps)
    hdiv = _steps_logic(o.hdivrange, o.hdivstep, o.hdivsteps, 1.0)
    vdiv = _steps_logic(o.vdivrange, o.vdivstep, o.vdivsteps, 1.0)
    disp = _steps_logic(o.dispersion, -1.0, o.dispsteps, 1.0)
    thick = _thick_logic(o.detector_thick, -1.0, o.detector_thicksteps)
    spread, domains = o.mosaic_spread, o.mosaic_domains
    if domains <= 0:
        spread, domains = (0.0, 1) if spread < 0.0 else (spread, 1 if spread == 0.0 else 10)
    elif spread <= 0.0:
        spread, domains = 0.0, 1

    def off_when_empty(t):
        return (0.0, 0.0, 1) if t[0] <= 0.0 or t[1] <= 0.0 or t[2] <= 0 else t

    mu = o.detector_mu
    if thick[0] > 0.0 and mu < 0.0:
        mu = 1.0 / thick[0]
    hdiv, vdiv, disp, thick = (off_when_empty(t) for t in (hdiv, vdiv, disp, thick))
    return dict(
        phi=phi, hdiv=hdiv, vdiv=vdiv, disp=disp, thick=thick, mu=mu, mosaic=(spread, domains)
    )


def _axes(o: Options) -> dict:
    """The convention's vectors, or the user's (unit length) with odet_vector regenerated from
    fast × slow when it is not of unit length, as the C program does (an --expt file's normal,
    unit to rounding, is kept)."""
    if o.convention in CONVENTION_VECTORS:
        keys = ("beam", "fast", "slow", "normal", "twotheta", "polar", "spindle")
        return dict(zip(keys, CONVENTION_VECTORS[o.convention], strict=True)) | {"custom": None}
    fast, slow = _unit(o.fdet)[0], _unit(o.sdet)[0]
    normal = o.odet
    if _unit(o.odet)[1] != 1.0 and o.convention != EXPT:
        print("WARNING: auto-generating odet_vector")
        normal = np.cross(fast, slow)
    return dict(
        beam=o.beam,
        polar=o.polar_vector,
        spindle=o.spindle,
        twotheta=o.twotheta_axis,
        custom=(o.fdet, o.sdet, normal),
    )


def _resolve(o: Options, mask_data, expt: DialsExperiment | None, cwd: Path) -> Setup:
    """The C program's set-up: flags mapped onto the models' constructors."""
    fpixels, spixels = _detector_pixels(o)
    _check(o, fpixels, spixels, expt is not None and expt.real_space is not None)
    n = _counts(o)
    axes = _axes(o)
    beam = _beam(o, n, axes)
    beam_dir = np.asarray(beam.direction)
    det = _detector(o, n, axes, (fpixels, spixels))
    geom = aot.call(
        "detector_geometry",
        _detector_geometry,
        {"pivot_sample": det.pivot == "sample"},
        det,
        beam_dir,
        device=aot.setup_device(),
    )
    grid, interpolate = _structure_factors(o, cwd)
    hkl_count = grid.count if grid is not None else 0
    cryst, xtalsize = _sized_crystal(o, _crystal(o, n, axes, expt))
    recommended = max(
        int(math.ceil(3.0 * xtalsize / (o.lambda0 * float(geom.distance) / o.pixel_size))), 1
    )
    mask = _mask(o, mask_data, det)
    panel_headers = ()
    if expt is not None and len(expt.panels) > 1:
        det, mask, panel_headers = _panels(o, n, expt, beam_dir, _centre(o))
    exp = _on_device(assemble(beam, cryst, det, default_F=o.default_F, table=grid, mask=mask))
    cfg = config_for(
        exp,
        grid,
        roi=_roi(o, fpixels, spixels),
        oversample=recommended if o.oversample <= 0 else o.oversample,
        thicksteps=n["thick"][2],
        absorption=n["thick"][0] > 0.0,
        phisteps=n["phi"][2],
        shape=o.shape,
        interpolate=bool(interpolate) and hkl_count > 0,
        curved=o.curved,
        point_pixel=o.point_pixel,
        nopolar=o.nopolar,
        oversample_thick=o.oversample_thick,
        oversample_polar=o.oversample_polar,
        oversample_omega=o.oversample_omega,
        dmin=o.dmin,
        water_size=o.water_size,
        carryover=o.carryover,
        dtype=o.dtype,
    )
    steps = nanobragg_steps(exp, cfg)
    centre = _centre(o)
    header = _header_values(o, geom, beam_dir, centre, n["phi"][0], fpixels, spixels, expt)
    return Setup(
        exp, cfg, o, header, steps, hkl_count, grid if o.hklfile else None, expt, panel_headers
    )


def _panels(o: Options, n: dict, expt: DialsExperiment, beam_dir, centre):
    """The --expt file's multi-panel detector (with the flags' sensor layers), its mask (every
    pixel rendered) and each panel's SMV header values."""
    panels = []
    for p in expt.panels:
        panels.append(
            Detector.from_vectors(
                p.fast_axis,
                p.slow_axis,
                p.origin,
                p.pixel_size,
                p.image_size,
                layer_thickness=n["thick"][1],
                mu=n["mu"],
            )
        )
    try:
        det = Detector.from_panels(panels)
    except ValueError as err:
        raise InputError(f"--expt {expt.path}: {err}") from None
    fpixels, spixels = det.image_size
    headers = []
    for p in panels:
        geom = detector_geometry(p, beam_dir)
        where = centre._replace(xbeam=float(p.beam_f), ybeam=float(p.beam_s))
        headers.append(
            _header_values(o, geom, beam_dir, where, n["phi"][0], fpixels, spixels, expt)
        )
    return det, np.ones(det.shape), tuple(headers)


def _detector_pixels(o: Options) -> tuple[int, int]:
    """(fast, slow) pixel counts from -detpixels or -detsize and -pixel, as the C program."""
    if o.pixel_size <= 0.0:
        raise InputError(f"-pixel: pixel size must be positive, got {o.pixel_size * 1e3:g} mm")
    if o.fpixels:
        o.detsize_f = o.pixel_size * o.fpixels
    if o.spixels:
        o.detsize_s = o.pixel_size * o.spixels
    return (
        int(math.ceil(o.detsize_f / o.pixel_size - 0.5)),
        int(math.ceil(o.detsize_s / o.pixel_size - 0.5)),
    )


def _beam(o: Options, n: dict, axes: dict) -> Beam:
    """The beam of -lambda, the divergence and dispersion grids (or -sourcefile), -polar and
    the fluence (-fluence, or -flux × -exposure / -beamsize²)."""
    if _unit(axes["beam"])[1] == 0.0:
        raise InputError("-beam_vector: must not be zero")
    fluence = o.fluence
    if o.flux != 0.0 and o.exposure > 0.0 and o.beamsize >= 0:
        fluence = o.flux * o.exposure / o.beamsize / o.beamsize
    offsets = divergence_offsets(*n["hdiv"], *n["vdiv"], o.round_div)
    if not offsets and not o.sourcefile:
        raise InputError("no sources: the divergence settings leave no source point")
    beam = Beam.from_wavelength(
        o.lambda0,
        axes["beam"],
        polar_vector=axes["polar"],
        polarization=o.polarization,
        fluence=fluence,
        divergence=offsets or [(0.0, 0.0)],
        dispersion=n["disp"],
    )
    if o.sourcefile:
        table = read_sourcefile(o.sourcefile)
        dirs, lams = file_sources(table, np.asarray(beam.direction), o.lambda0)
        if len(dirs) == 0:
            raise InputError(f"-sourcefile {o.sourcefile}: no sources")
        beam = dataclasses.replace(beam, source_dirs=dirs, wavelengths=lams)
    return beam


def _centre(o: Options):
    """The convention's beam-centre rules applied to -Xbeam/-Ybeam, -Xclose/-Yclose, -ORGX/-ORGY."""
    return beam_centre_rule(
        o.convention,
        o.pixel_size,
        (o.detsize_f, o.detsize_s),
        (o.Xbeam, o.Ybeam),
        (o.Xclose, o.Yclose),
        (o.ORGX, o.ORGY),
        o.pivot,
    )


def _detector(o: Options, n: dict, axes: dict, pixels: tuple[int, int]) -> Detector:
    return Detector.from_convention(
        o.convention,
        o.pixel_size,
        pixels,
        o.distance,
        (o.Xbeam, o.Ybeam),
        close_centre=(o.Xclose, o.Yclose),
        origin_pixel=(o.ORGX, o.ORGY),
        close_distance=o.close_distance,
        rotations=o.detector_rot,
        twotheta=o.twotheta,
        twotheta_axis=None if axes["custom"] is None else axes["twotheta"],
        pivot=o.pivot,
        axes=axes["custom"],
        detector_size=(o.detsize_f, o.detsize_s),
        layer_thickness=n["thick"][1],
        mu=n["mu"],
    )


def _sized_crystal(o: Options, cryst: Crystal) -> tuple[Crystal, float]:
    """The crystal with Na, Nb, Nc from -xtalsize/-samplesize (capped by -beamsize) where
    given, and its largest extent [m]."""
    from_cell = {"from_cell": cryst.defined_by == "cell"}
    real0, _ = aot.call("cell_vectors", _cell_vectors, from_cell, cryst, device=aot.setup_device())
    real0 = np.asarray(real0)
    sample = list(o.sample_size)
    if o.beamsize >= 0:
        sample[1] = min(sample[1], o.beamsize)
        sample[2] = min(sample[2], o.beamsize)
    ncells = xtal.cells_from_size(real0, np.asarray(sample), np.array([o.Na, o.Nb, o.Nc]))
    extent = float(np.max(np.linalg.norm(real0, axis=1) * ncells))
    return dataclasses.replace(cryst, ncells=np.asarray(ncells)), extent


def _roi(o: Options, fpixels: int, spixels: int) -> tuple[int, int, int, int]:
    roi = (
        o.roi[0] if o.roi[0] >= 0 else 0,
        o.roi[1] if o.roi[1] >= 0 else fpixels,
        o.roi[2] if o.roi[2] >= 0 else 0,
        o.roi[3] if o.roi[3] >= 0 else spixels,
    )
    if roi[0] > min(roi[1], fpixels - 1) or roi[2] > min(roi[3], spixels - 1):
        raise InputError(
            f"-roi: {roi[0]} {roi[1]} {roi[2]} {roi[3]} selects no pixel of the "
            f"{fpixels}x{spixels} detector"
        )
    return roi


def _structure_factors(o: Options, cwd: Path):
    """The -hkl table (or the Fdump.bin cache in ``cwd``) and the tricubic switch."""
    interpolate = o.interpolate
    if interpolate > 1:
        interpolate = 1 if (o.Na <= 2 or o.Nb <= 2 or o.Nc <= 2) else 0
    grid = None
    if o.hklfile:
        grid = read_hkl(o.hklfile, default_F=o.default_F)
    elif (cwd / FDUMP).exists():
        grid = read_fdump(cwd / FDUMP)
    elif o.default_F == 0.0:
        raise InputError("no structure factors: give -hkl FILE or -default_F F")
    return grid, interpolate


def _crystal(o: Options, n: dict, axes: dict, expt: DialsExperiment | None) -> Crystal:
    """The crystal of -cell, -mat or the --expt file, with the flags' orientation and size."""
    misset = np.zeros(3)
    if o.misset == "random":
        seed = o.misset_seed if o.misset_seed is not None else (o.seed or -1)
        misset = xtal.random_misset(seed)
    elif o.misset is not None:
        misset = np.asarray(o.misset, dtype=float)
    spread, domains = n["mosaic"]
    common = dict(
        misset=misset,
        ncells=(o.Na, o.Nb, o.Nc),
        mosaic_spread=spread,
        mosaic_domains=domains,
        mosaic_seed=o.mosaic_seed,
        rotation_axis=axes["spindle"],
        phi0=o.phi0,
        phistep=n["phi"][1],
        fudge=o.fudge,
    )
    if o.user_cell:
        cell = np.array(o.cell, dtype=float)
        if cell[0] <= 0.0:
            raise InputError(f"-cell: cell length must be positive, got {cell[0]:g}")
        cell[1] = cell[0] if cell[1] <= 0.0 else cell[1]
        cell[2] = cell[0] if cell[2] <= 0.0 else cell[2]
        cell[3:] = np.where(cell[3:] <= 0.0, math.pi / 2, cell[3:])
        return Crystal.from_cell(cell, **common)
    if o.matfile:
        a_s, b_s, c_s = read_mosflm_matrix(o.matfile)
        return Crystal.from_a_matrix(
            np.stack([a_s, b_s, c_s], axis=1) * (1e-10 / o.lambda0), **common
        )
    return Crystal.from_real_space_vectors(*expt.real_space, **common)


def _mask(o: Options, mask_data, det: Detector) -> np.ndarray | None:
    """The -mask image, checked against the detector's size."""
    fpixels, spixels = det.image_size
    if mask_data is not None and mask_data.shape != (spixels, fpixels):
        raise InputError(
            f"-mask {o.maskfile}: {mask_data.shape[1]}x{mask_data.shape[0]} pixels, "
            f"but the detector has {fpixels}x{spixels}"
        )
    return mask_data


def _on_device(tree):
    """Move the leaves to the device without compiling anything (``jnp.asarray`` stages each
    one); floating scalars are weakly typed, like ``jnp.asarray(0.12)``, so a value a user
    swaps in that way does not recompile the simulation."""

    def prepared(x):
        x = np.asarray(x)
        return float(x) if x.ndim == 0 and np.issubdtype(x.dtype, np.floating) else x

    leaves, structure = jax.tree.flatten(tree)
    # one call for every leaf: a transfer per leaf costs tens of microseconds each
    return jax.tree.unflatten(structure, jax.device_put([prepared(x) for x in leaves]))


def _header_values(o, geom, beam_dir, centre, osc, fpixels, spixels, expt):
    """The geometry the C program reports in its SMV headers, after its detector set-up."""
    pix = o.pixel_size
    pix0 = np.asarray(geom.pix0)
    fast, slow = np.asarray(geom.fast), np.asarray(geom.slow)
    distance = float(geom.distance)
    spot = distance * beam_dir - pix0  # from the first pixel to the direct-beam spot
    fclose = -float(np.dot(pix0, fast))
    sclose = -float(np.dot(pix0, slow))
    # the C program turns its MOSFLM frame into DIALS'; an --expt geometry is in DIALS' already
    dials = 1000 * pix0 if expt is not None else (1000 * pix0[2], 1000 * pix0[1], -1000 * pix0[0])
    return dict(
        fpixels=fpixels,
        spixels=spixels,
        pixel_size=pix,
        distance=distance,
        wavelength=o.lambda0,
        Xbeam=centre.xbeam,
        Ybeam=centre.ybeam,
        Fbeam=float(np.dot(fast, spot)),
        Sbeam=float(np.dot(slow, spot)),
        detsize_s=pix * spixels,
        dials_origin=tuple(float(x) for x in dials),
        orgx=fclose / pix + 0.5,
        orgy=sclose / pix + 0.5,
        close_distance=float(geom.close_distance),
        phi0=o.phi0,
        osc=osc,
        twotheta=o.twotheta,
    )
