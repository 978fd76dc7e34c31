"""From a nanoBragg command line to an :class:`Experiment` and :class:`SimConfig`.

This is the C program's set-up after argument parsing (header files, defaults, conventions,
sampling counts, sources, mosaic domains, structure factors), done once in NumPy. The result is
the same pytrees the library uses, so the command line and the library render the same image.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import jax
import numpy as np

from jaxdiff import aot
from jaxdiff import crystal as xtal
from jaxdiff.beam import Beam, divergence_offsets, file_sources, generated_sources
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal
from jaxdiff.detector import Detector, detector_geometry
from jaxdiff.errors import InputError
from jaxdiff.flags import RTD, Options, parse
from jaxdiff.io import (
    header_float,
    read_fdump,
    read_hkl,
    read_mosflm_matrix,
    read_smv,
    read_sourcefile,
    write_fdump,
)
from jaxdiff.simulate import Experiment

FDUMP = "Fdump.bin"

# Set-up evaluates these once per run; compiled whole they cost one (cached) program each
# instead of dozens of small eager operations. The pytrees hold NumPy arrays until the
# finished experiment goes to the device in one transfer.
_detector_geometry = jax.jit(detector_geometry, static_argnames="pivot_sample")
_cell_vectors = jax.jit(xtal.cell_vectors, static_argnames="from_cell")

CONVENTION_VECTORS = {
    # beam, fast, slow, normal, twotheta axis, polarization, spindle
    "adxv": ((0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "mosflm": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "denzo": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "xds": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "dials": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)),
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """A fully resolved run: the pytrees, the static configuration, and what the C program
    reports or writes besides the image (header values, output names)."""

    experiment: Experiment
    config: SimConfig
    options: Options
    header: dict
    steps: int
    hkl_count: int


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


def load_options(argv: list[str]) -> tuple[Options, np.ndarray | None]:
    """Parse a command line, reading -mask and -img headers first as the C program does."""
    first = parse(argv)
    base = Options()
    mask = None
    if first.maskfile:
        mask = _apply_header(base, first.maskfile, mask=True)
    if first.imgfile:
        _apply_header(base, first.imgfile, mask=False)
    return parse(argv, base), mask


def build(argv: list[str], cwd: str | os.PathLike | None = None) -> Setup:
    """Resolve a nanoBragg command line into a :class:`Setup` (files relative to ``cwd``)."""
    cwd = Path(cwd or ".")
    old = Path.cwd()
    os.chdir(cwd)
    try:
        o, mask_data = load_options(argv)
        return _resolve(o, mask_data)
    finally:
        os.chdir(old)


def _resolve(o: Options, mask_data) -> Setup:
    if o.pixel_size <= 0.0:
        raise InputError(f"-pixel: pixel size must be positive, got {o.pixel_size * 1e3:g} mm")
    if o.fpixels:
        o.detsize_f = o.pixel_size * o.fpixels
    if o.spixels:
        o.detsize_s = o.pixel_size * o.spixels
    fpixels = int(math.ceil(o.detsize_f / o.pixel_size - 0.5))
    spixels = int(math.ceil(o.detsize_s / o.pixel_size - 0.5))
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
    if not o.matfile and not o.user_cell:
        raise InputError("no crystal: give -cell a b c alpha beta gamma, or -mat FILE")

    fluence = o.fluence
    if o.flux != 0.0 and o.exposure > 0.0 and o.beamsize >= 0:
        fluence = o.flux * o.exposure / o.beamsize / o.beamsize
    sample = list(o.sample_size)
    if o.beamsize >= 0:
        sample[1] = min(sample[1], o.beamsize)
        sample[2] = min(sample[2], o.beamsize)

    # beam centre defaults and conventions
    pix = o.pixel_size
    fclose = (o.ORGX - 0.5) * pix if not math.isnan(o.ORGX) else o.detsize_f / 2.0
    sclose = (o.ORGY - 0.5) * pix if not math.isnan(o.ORGY) else o.detsize_s / 2.0
    xclose = fclose if math.isnan(o.Xclose) else o.Xclose
    yclose = sclose if math.isnan(o.Yclose) else o.Yclose
    xbeam, ybeam = o.Xbeam, o.Ybeam
    fbeam, sbeam = fclose, sclose
    pivot = o.pivot
    conv = o.convention
    vectors = {
        "beam": o.beam,
        "fast": o.fdet,
        "slow": o.sdet,
        "normal": o.odet,
        "twotheta": o.twotheta_axis,
        "polar": o.polar_vector,
        "spindle": o.spindle,
    }
    if conv in CONVENTION_VECTORS:
        keys = ("beam", "fast", "slow", "normal", "twotheta", "polar", "spindle")
        vectors = dict(zip(keys, CONVENTION_VECTORS[conv], strict=True))
    if conv == "adxv":
        xbeam = (o.detsize_f + pix) / 2.0 if math.isnan(xbeam) else xbeam
        ybeam = (o.detsize_s - pix) / 2.0 if math.isnan(ybeam) else ybeam
        fbeam, sbeam, pivot = xbeam, o.detsize_s - ybeam, "beam"
    elif conv in ("mosflm", "denzo"):
        xbeam = (o.detsize_s + pix) / 2.0 if math.isnan(xbeam) else xbeam
        ybeam = (o.detsize_f + pix) / 2.0 if math.isnan(ybeam) else ybeam
        half = 0.5 * pix if conv == "mosflm" else 0.0
        fbeam, sbeam, pivot = ybeam + half, xbeam + half, "beam"
    elif conv in ("xds", "dials"):
        xbeam = xclose if math.isnan(xbeam) else xbeam
        ybeam = yclose if math.isnan(ybeam) else ybeam
        fbeam, sbeam, pivot = xbeam, ybeam, "sample"
    else:
        xbeam = xclose if math.isnan(xbeam) else xbeam
        ybeam = yclose if math.isnan(ybeam) else ybeam
        fbeam, sbeam = xbeam, ybeam
        fclose, sclose = xbeam, ybeam

    beam_dir, _ = _unit(vectors["beam"])
    fast, _ = _unit(vectors["fast"])
    slow, _ = _unit(vectors["slow"])
    normal, mag = _unit(vectors["normal"])
    if mag != 1.0:
        print("WARNING: auto-generating odet_vector")
        normal, _ = _unit(np.cross(fast, slow))
    polar_vec, _ = _unit(vectors["polar"])
    spindle, _ = _unit(vectors["spindle"])
    twotheta_axis = np.asarray(vectors["twotheta"], dtype=float)
    if np.linalg.norm(beam_dir) == 0.0:
        raise InputError("-beam_vector: must not be zero")

    # sampling counts
    osc, phistep, phisteps = _phi_logic(o.osc, o.phistep, o.phisteps)
    hrange, hstep, hsteps = _steps_logic(o.hdivrange, o.hdivstep, o.hdivsteps, 1.0)
    vrange, vstep, vsteps = _steps_logic(o.vdivrange, o.vdivstep, o.vdivsteps, 1.0)
    disp, dstep, dsteps = _steps_logic(o.dispersion, -1.0, o.dispsteps, 1.0)
    thick, thickstep, thicksteps = _thick_logic(o.detector_thick, -1.0, o.detector_thicksteps)
    mu = o.detector_mu
    if thick > 0.0 and mu < 0.0:
        mu = 1.0 / thick
    spread, domains = o.mosaic_spread, o.mosaic_domains
    if domains <= 0:
        spread, domains = (0.0, 1) if spread < 0.0 else (spread, 1 if spread == 0.0 else 10)
    elif spread <= 0.0:
        spread, domains = 0.0, 1
    if hrange <= 0.0 or hstep <= 0.0 or hsteps <= 0:
        hrange, hstep, hsteps = 0.0, 0.0, 1
    if vrange <= 0.0 or vstep <= 0.0 or vsteps <= 0:
        vrange, vstep, vsteps = 0.0, 0.0, 1
    if disp <= 0.0 or dstep <= 0.0 or dsteps <= 0:
        disp, dstep, dsteps = 0.0, 0.0, 1
    if thick <= 0.0 or thickstep <= 0.0 or thicksteps <= 0:
        thick, thickstep, thicksteps = 0.0, 0.0, 1

    pivot_sample = pivot == "sample"
    det = Detector(
        fast_axis=np.asarray(fast),
        slow_axis=np.asarray(slow),
        normal=np.asarray(normal),
        beam_f=np.asarray(fclose if pivot_sample else fbeam),
        beam_s=np.asarray(sclose if pivot_sample else sbeam),
        distance=np.asarray(o.distance),
        close_distance=np.asarray(o.close_distance),
        rotations=np.asarray(o.detector_rot, dtype=float),
        twotheta=np.asarray(o.twotheta),
        twotheta_axis=np.asarray(twotheta_axis),
        pixel_size=np.asarray(pix),
        layer_thickness=np.asarray(thickstep),
        mu=np.asarray(mu),
    )
    geom = aot.call(
        "detector_geometry", _detector_geometry, {"pivot_sample": pivot_sample}, det, beam_dir
    )

    # structure factors
    interpolate = o.interpolate
    if interpolate > 1:
        interpolate = 1 if (o.Na <= 2 or o.Nb <= 2 or o.Nc <= 2) else 0
    grid = None
    if o.hklfile:
        grid = read_hkl(o.hklfile, default_F=o.default_F)
        write_fdump(FDUMP, grid)
    elif Path(FDUMP).exists():
        grid = read_fdump(FDUMP)
    elif o.default_F == 0.0:
        raise InputError("no structure factors: give -hkl FILE or -default_F F")
    hkl_count = grid.count if grid is not None else 0
    if hkl_count == 0:
        interpolate = 0

    # crystal
    nan3 = np.full((3, 3), np.nan)
    recip0 = nan3
    if o.matfile:
        a_s, b_s, c_s = read_mosflm_matrix(o.matfile)
        recip0 = np.stack([a_s, b_s, c_s]) * (1e-10 / o.lambda0)
    cell = np.array(o.cell, dtype=float)
    if o.user_cell:
        if cell[0] <= 0.0:
            raise InputError(f"-cell: cell length must be positive, got {cell[0]:g}")
        cell[1] = cell[0] if cell[1] <= 0.0 else cell[1]
        cell[2] = cell[0] if cell[2] <= 0.0 else cell[2]
        cell[3:] = np.where(cell[3:] <= 0.0, math.pi / 2, cell[3:])
    misset = np.zeros(3)
    if o.misset == "random":
        seed = o.misset_seed if o.misset_seed is not None else (o.seed or -1)
        misset = xtal.random_misset(seed)
    elif o.misset is not None:
        misset = np.asarray(o.misset, dtype=float)
    axes, scale = xtal.mosaic_domain_draws(domains, o.mosaic_seed)
    cryst = Crystal(
        cell=np.asarray(cell),
        recip0=np.asarray(recip0),
        misset=np.asarray(misset),
        rotation=np.zeros(3),
        ncells=np.asarray([o.Na, o.Nb, o.Nc]),
        mosaic_spread=np.asarray(spread),
        mosaic_axes=np.asarray(axes),
        mosaic_scale=np.asarray(scale),
        spindle=np.asarray(spindle),
        phi0=np.asarray(o.phi0),
        phistep=np.asarray(phistep),
        fudge=np.asarray(o.fudge),
    )
    real0, _ = aot.call("cell_vectors", _cell_vectors, {"from_cell": o.user_cell}, cryst)
    real0 = np.asarray(real0)
    ncells = xtal.cells_from_size(real0, np.asarray(sample), np.array([o.Na, o.Nb, o.Nc]))
    cryst = dataclasses.replace(cryst, ncells=np.asarray(ncells))
    xtalsize_max = float(np.max(np.linalg.norm(real0, axis=1) * ncells))
    reciprocal_pixel = o.lambda0 * float(geom.distance) / pix
    recommended = max(int(math.ceil(3.0 * xtalsize_max / reciprocal_pixel)), 1)
    oversample = recommended if o.oversample <= 0 else o.oversample

    # sources
    if o.sourcefile:
        dirs, lams = file_sources(read_sourcefile(o.sourcefile), beam_dir, o.lambda0)
    else:
        offsets = divergence_offsets(hrange, hstep, hsteps, vrange, vstep, vsteps, o.round_div)
        dirs, lams = generated_sources(beam_dir, polar_vec, o.lambda0, offsets, disp, dstep, dsteps)
    if len(dirs) == 0:
        raise InputError("no sources: the divergence settings leave no source point")
    beam = Beam(
        direction=np.asarray(beam_dir),
        source_dirs=np.asarray(dirs),
        wavelengths=np.asarray(lams),
        polar_vector=np.asarray(polar_vec),
        polarization=np.asarray(o.polarization),
        fluence=np.asarray(fluence),
    )

    roi = list(o.roi)
    roi = [
        roi[0] if roi[0] >= 0 else 0,
        roi[1] if roi[1] >= 0 else fpixels,
        roi[2] if roi[2] >= 0 else 0,
        roi[3] if roi[3] >= 0 else spixels,
    ]
    if roi[0] > min(roi[1], fpixels - 1) or roi[2] > min(roi[3], spixels - 1):
        raise InputError(
            f"-roi: {roi[0]} {roi[1]} {roi[2]} {roi[3]} selects no pixel of the "
            f"{fpixels}x{spixels} detector"
        )
    mask = np.ones((spixels, fpixels), dtype=np.uint8)
    if mask_data is not None:
        if mask_data.shape != mask.shape:
            raise InputError(
                f"-mask {o.maskfile}: {mask_data.shape[1]}x{mask_data.shape[0]} pixels, "
                f"but the detector has {fpixels}x{spixels}"
            )
        mask = (mask_data != 0).astype(np.uint8)
    if grid is not None:
        fhkl = np.asarray(grid.F)
        lo = (grid.h_min, grid.k_min, grid.l_min)
        hi = (grid.h_max, grid.k_max, grid.l_max)
    else:
        fhkl, lo, hi = np.zeros((1, 1, 1)), None, None
    if hkl_count == 0:
        lo = hi = None
    exp = _on_device(
        Experiment(
            beam=beam,
            crystal=cryst,
            detector=det,
            fhkl=fhkl,
            default_F=np.asarray(o.default_F),
            mask=np.asarray(mask),
        )
    )
    cfg = SimConfig(
        spixels=spixels,
        fpixels=fpixels,
        roi=tuple(roi),
        oversample=oversample,
        thicksteps=thicksteps,
        absorption=thick > 0.0,
        phisteps=phisteps,
        shape=o.shape,
        from_cell=o.user_cell,
        table_lo=lo,
        table_hi=hi,
        interpolate=bool(interpolate),
        pivot_sample=pivot_sample,
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
    steps = len(dirs) * domains * phisteps * oversample * oversample
    header = _header_values(o, geom, beam_dir, pix, xbeam, ybeam, osc, fpixels, spixels)
    return Setup(exp, cfg, o, header, steps, hkl_count)


def _on_device(tree):
    """Move the leaves to the device without compiling anything (``jnp.asarray`` stages each
    one); floating scalars are weakly typed, like ``jnp.asarray(0.12)``, so a value a user
    swaps in that way does not recompile the simulation."""

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 and np.issubdtype(x.dtype, np.floating):
            return jax.device_put(float(x))
        return jax.device_put(x)

    return jax.tree.map(put, tree)


def _header_values(o, geom, beam_dir, pix, xbeam, ybeam, osc, fpixels, spixels):
    """The geometry the C program reports in its SMV headers, after its detector set-up."""
    pix0 = np.asarray(geom.pix0)
    fast, slow = np.asarray(geom.fast), np.asarray(geom.slow)
    distance = float(geom.distance)
    spot = distance * beam_dir - pix0  # from the first pixel to the direct-beam spot
    fclose = -float(np.dot(pix0, fast))
    sclose = -float(np.dot(pix0, slow))
    return dict(
        fpixels=fpixels,
        spixels=spixels,
        pixel_size=pix,
        distance=distance,
        wavelength=o.lambda0,
        Xbeam=xbeam,
        Ybeam=ybeam,
        Fbeam=float(np.dot(fast, spot)),
        Sbeam=float(np.dot(slow, spot)),
        detsize_s=pix * spixels,
        dials_origin=(1000 * pix0[2], 1000 * pix0[1], -1000 * pix0[0]),
        orgx=fclose / pix + 0.5,
        orgy=sclose / pix + 0.5,
        close_distance=float(geom.close_distance),
        phi0=o.phi0,
        osc=osc,
        twotheta=o.twotheta,
    )
