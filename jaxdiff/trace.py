"""Per-pixel traces: every quantity nanoBragg's instrumented build prints for one pixel.

:func:`trace_pixel` returns the quantities as a record of arrays (one entry per sensor layer,
sub-pixel, source, φ step and mosaic domain where they vary), differentiable with respect to the
experiment. :func:`trace_lines` prints the record, and the set-up lines of the detector, as
``TRACE_PY`` lines with the names, order and number formatting of the C program's ``TRACE_C``
lines, so that the two traces line up (``jaxdiff-trace`` compares them).

Where the C program prints a quantity under a misleading name, the record and the lines hold
the quantity the C program prints, so that the two can be compared value for value:

* ``rot_a_star_A_inv`` (and b*, c*) are the unrotated reciprocal vectors [1/Å] (the C program
  recomputes a*, b*, c* only for its integral form); the rotated ones are in the record as
  ``a_star_rotated`` (and b, c), and are not printed.
* ``scattering_vec_A_inv`` is the scattering vector in 1/m, as the C program stores it.
* In the beam-pivot set-up, ``*_after_rotz`` are the detector axes after the two-theta swing
  as well (the C program prints them once the detector is fully oriented).

Where the C program prints a constant in its beam-pivot set-up (``detector_convention=MOSFLM``,
MOSFLM's ``initial_*`` axes and its ``convention_mapping``), jaxdiff prints the run's own
convention, axes and mapping; ``jaxdiff-trace`` reports those lines as caveats.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxdiff import physics
from jaxdiff.beam import R_E_SQR
from jaxdiff.config import SimConfig
from jaxdiff.crystal import phi_angles
from jaxdiff.io.smv import fmt_g as _fmt_g
from jaxdiff.render import (
    evaluation_geometry,
    held_factors,
    miller_indices,
    pixel_values,
    structure_factor,
)
from jaxdiff.rotation import rotate_axis, rotate_xyz
from jaxdiff.simulate import (
    Experiment,
    RunInputs,
    evaluations_per_pixel,
    map_pixels,
    roi_pixels,
    run_inputs,
    steps,
    tricubic_cutoff,
)

RTD = 180.0 / math.pi
PREFIX = "TRACE_PY"


def _g(x) -> str:
    """A trace value as the C program prints it: ``%.15g``."""
    return _fmt_g(x, 15)


def _context(exp: Experiment, cfg: SimConfig, spixel, fpixel):
    """The run-wide facts a pixel's trace depends on, where they need a pass over the detector.

    Returns ``(first, tri_limit)``: the raster index (slow·fast_pixels + fast) of the pixel that
    runs the run's first φ loop, or None when the mask and ROI alone decide it (no -dmin cut);
    and how many of the pixel's evaluations, in loop order, interpolate F before the tricubic
    switch-off, or None without interpolation.
    """
    need_first = cfg.carryover == "c-parity" and cfg.dmin > 0.0
    need_tri = cfg.interpolate and cfg.table_lo is not None
    if not (need_first or need_tri):
        return None, None
    return _context_pass(exp, cfg, jnp.asarray(spixel), jnp.asarray(fpixel), need_first, need_tri)


@functools.partial(jax.jit, static_argnames=("cfg", "need_first", "need_tri"))
def _context_pass(exp, cfg, spixel, fpixel, need_first, need_tri):
    dtype = jnp.dtype(cfg.dtype)
    sh, exp = run_inputs(exp, cfg)
    spix, fpix, rendered = roi_pixels(exp, cfg)
    spix_d, fpix_d = spix.astype(dtype), fpix.astype(dtype)
    first = tri_limit = None
    if need_first:
        any_pass = map_pixels(
            lambda s, f, r: jnp.any(evaluation_geometry(sh, exp, cfg, s, f, r)["passes"], 0),
            [spix_d, fpix_d, rendered],
            exp,
            cfg,
        )
        p0 = jnp.argmax(any_pass)
        first = jnp.where(any_pass[p0], spix[p0] * cfg.fpixels + fpix[p0], -1)
    if need_tri:
        tri_p, tri_j = tricubic_cutoff(sh, exp, cfg, spix_d, fpix_d, rendered)
        fmin, _, smin, _ = cfg.roi
        pidx = (spixel - smin) * cfg.roi_shape[1] + (fpixel - fmin)
        tri_p, tri_j = tri_p.astype(pidx.dtype), tri_j.astype(pidx.dtype)
        per_pixel = evaluations_per_pixel(exp, cfg)
        tri_limit = jnp.where(pidx < tri_p, per_pixel, jnp.where(pidx == tri_p, tri_j, 0))
    return first, tri_limit


def _kernel_config(cfg: SimConfig) -> SimConfig:
    """``cfg`` without what only matters for a pass over the detector (its size, ROI, chunk), so
    that runs differing only there share one compiled trace."""
    return dataclasses.replace(cfg, spixels=1, fpixels=1, roi=(0, 0, 0, 0), chunk=1)


def select_panel(exp: Experiment, panel: int | None) -> Experiment:
    """The single-panel experiment of panel ``panel`` of a multi-panel detector (``exp``
    itself for a single panel, where ``panel`` must be None or 0).

    Raises:
        ValueError: a multi-panel detector without ``panel``, or ``panel`` out of range.
    """
    det = exp.detector
    if not det.panels:
        if panel not in (None, 0):
            raise ValueError(f"panel {panel}: the detector has one panel (panel 0)")
        return exp
    if panel is None:
        raise ValueError(f"the detector has {det.panels} panels: say which panel to trace")
    if not 0 <= int(panel) < det.panels:
        raise ValueError(f"panel {panel} outside 0..{det.panels - 1} (the detector's panels)")
    return dataclasses.replace(exp, detector=det.panel(int(panel)), mask=exp.mask[int(panel)])


def trace_pixel(
    exp: Experiment, cfg: SimConfig, spixel, fpixel, panel: int | None = None
) -> dict[str, Array]:
    """The C program's trace quantities for pixel (``spixel``, ``fpixel``) as arrays; of
    panel ``panel`` for a multi-panel detector (:func:`select_panel`).

    Axes: L sensor layers, S sub-pixels (slow-major), X sources, Φ φ steps, M mosaic domains,
    in nanoBragg's loop order. Lengths in m unless the name says Å; angles in degrees.

    Per pixel: ``pix0_vector_meters``, ``fdet_vec``, ``sdet_vec`` (3,),
    ``close_distance_meters``. Per (L, S): ``pixel_pos_meters`` (…, 3), ``R_distance_meters``,
    ``solid_angle_sr`` (each sub-pixel's), ``omega_pixel_sr`` (the value the C program holds
    there: the first sub-pixel's unless -oversample_omega), ``obliquity_factor``,
    ``diffracted_vec`` (…, 3), ``capture`` (each sub-pixel's capture fraction). Per source X:
    ``incident_vec``, ``lambda_meters``, ``lambda_angstroms``. Per (L, S, X):
    ``scattering_vec_A_inv`` [1/m] (…, 3), ``passes`` (the -dmin cut), ``polar_factor``.
    Per (L, S, X, Φ, M): ``rot_a_angstroms``, ``rot_b_angstroms``, ``rot_c_angstroms``,
    ``a_star_rotated``, ``b_star_rotated``, ``c_star_rotated`` [1/Å] (…, 3), ``hkl_frac``,
    ``hkl_rounded`` (…, 3), ``F_latt_a``, ``F_latt_b``, ``F_latt_c`` (square shape; ones
    otherwise), ``F_latt``, ``F_cell``, ``tricubic`` (whether F_cell was interpolated),
    ``executed`` (the evaluation adds to the pixel), ``I_contribution`` (F_cell² F_latt²).
    Per Φ: ``phi_deg``. ``rot_a_star_A_inv`` etc. (3,): the unrotated reciprocal vectors.
    Scalars, as the C program holds them after its loops: ``I_before_scaling``, ``r_e_meters``,
    ``r_e_sqr``, ``fluence_photons_per_m2``, ``steps``, ``oversample_thick``,
    ``oversample_polar``, ``oversample_omega``, ``capture_fraction``, ``polar``, ``omega_pixel``,
    ``cos_2theta``, ``I_pixel_final``, ``floatimage_accumulated`` (float32 of the final value),
    and ``rendered`` (inside the ROI and mask), ``fresh`` (this pixel runs the run's first φ
    loop, where c-parity starts from the unrotated cell).

    Differentiable with respect to the floating-point leaves of ``exp`` (the discrete choices,
    which pixel is fresh and where tricubic interpolation switches off, carry no gradient).
    """
    exp = select_panel(exp, panel)
    first, tri_limit = _context(exp, cfg, spixel, fpixel)
    spixel, fpixel = jnp.asarray(spixel), jnp.asarray(fpixel)
    render_map = jnp.asarray(cfg.roi_mask()) & (exp.mask != 0)
    rendered, fresh = _pixel_flags(render_map, spixel, fpixel, first, cfg.carryover == "c-parity")
    # The kernel does not read the mask; leaving it out lets detectors of any size share it.
    placeholder = jnp.zeros((1, 1), exp.mask.dtype)
    return _trace_kernel(
        dataclasses.replace(exp, mask=placeholder),
        _kernel_config(cfg),
        spixel,
        fpixel,
        rendered,
        fresh,
        tri_limit,
    )


@functools.partial(jax.jit, static_argnames=("c_parity",))
def _pixel_flags(render_map, spixel, fpixel, first, c_parity):
    """Whether the pixel is rendered (``render_map``: in the ROI and the mask), and whether it
    is the one that runs the run's first φ loop (the first rendered pixel unless ``first`` says
    otherwise)."""
    n_slow, n_fast = render_map.shape
    render_map = render_map.ravel()
    inside = (spixel >= 0) & (spixel < n_slow) & (fpixel >= 0) & (fpixel < n_fast)
    here = jnp.clip(spixel, 0, n_slow - 1) * n_fast + jnp.clip(fpixel, 0, n_fast - 1)
    rendered = inside & render_map[here]
    if not c_parity:
        return rendered, jnp.zeros((), bool)
    if first is None:
        first = jnp.where(jnp.any(render_map), jnp.argmax(render_map), -1)
    return rendered, rendered & (here == first)


def _evaluations(sh: RunInputs, exp: Experiment, cfg: SimConfig, g, fresh_first: bool):
    """Every per-evaluation quantity of one pixel, from the image kernel's geometry ``g`` of a
    block of that one pixel, with axes in nanoBragg's loop order: (layer, sub-pixel[, source
    [, φ, mosaic]]). Positions and directions are in the run's wide precision, as the image
    kernel forms them; the scattering vector and all that follows in the run's dtype."""
    raw = g["raw"]
    dtype = sh.stale.dtype

    def one(a):  # (L, Sub[, Src], 1) -> (L, Sub[, Src])
        return a[..., 0]

    def vec(parts):  # components (L, Sub[, Src], 1) -> (L, Sub[, Src], 3)
        return jnp.stack([one(c) for c in parts], axis=-1)

    scattering = tuple(one(c).astype(dtype) for c in raw["scattering"])  # (L, Sub, Src) each
    passes = one(raw["passes"])
    flat_pass = passes.ravel()
    first_loop = jnp.argmax(flat_pass)
    any_pass = jnp.any(flat_pass)
    n_phi, n_mos = sh.stale.shape[:2]
    orient = jnp.broadcast_to(sh.stale, (*passes.shape, n_phi, n_mos, 3, 3))
    if fresh_first:
        is_first = jax.nn.one_hot(first_loop, passes.size, dtype=bool).reshape(passes.shape)
        fresh = jnp.broadcast_to(sh.fresh, orient.shape)
        orient = jnp.where(is_first[..., None, None, None, None], fresh, orient)
    # the image kernel's own Miller indices: components (L, Sub, Src, Φ, M)
    rows = jnp.moveaxis(orient, (-2, -1), (0, 1))  # (3, 3, L, Sub, Src, Φ, M)
    s5 = tuple(c[..., None, None] for c in scattering)
    hkl = miller_indices(s5, rows)
    f_latt, parts = physics.lattice_factor(
        jnp.stack(hkl, axis=-1), exp.crystal.ncells, cfg.shape, exp.crystal.fudge, sh.recip
    )
    executed = passes[..., None, None]
    if cfg.water_size == 0.0:
        executed = executed & (f_latt != 0.0)
    return dict(
        pos=vec(raw["pos"]),
        airpath=one(raw["airpath"]),
        diffracted=vec(raw["diffracted"]),
        omega=one(raw["omega"]),
        capture=one(raw["capture"]),
        scattering=jnp.stack(scattering, axis=-1),
        passes=passes,
        polar=one(raw["polar"]),
        orient=orient,
        hkl=hkl,
        f_latt=f_latt,
        f_parts=parts,
        executed=jnp.broadcast_to(executed, f_latt.shape),
        first_loop=first_loop,
        any_pass=any_pass,
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def _trace_kernel(exp, cfg, spixel, fpixel, rendered, fresh, tri_limit):
    dtype = jnp.dtype(cfg.dtype)
    sh, exp = run_inputs(exp, cfg)
    c_parity = cfg.carryover == "c-parity"
    if c_parity:
        # A pixel that is not the fresh one sees the stale orientations everywhere.
        sh = sh._replace(fresh=jnp.where(fresh, sh.fresh, sh.stale))
    s, f, r = spixel.astype(dtype)[None], fpixel.astype(dtype)[None], rendered[None]
    g = evaluation_geometry(sh, exp, cfg, s, f, r)
    ev = _evaluations(sh, exp, cfg, g, c_parity)
    # the pixel as the image renders it: a block of this one pixel, index 0 of the tricubic
    # count (interpolating its first ``tri_limit`` evaluations)
    pidx = jnp.zeros((1,), jnp.int32 if tri_limit is None else tri_limit.dtype)
    tri = None if tri_limit is None else (pidx[0], tri_limit.astype(jnp.int32))
    final, total = pixel_values(sh, exp, cfg, g, pidx, r, tri, c_parity)
    held = [x[0] for x in held_factors(cfg, g, jnp.argmax(g["passes"], axis=0))]

    f_latt = ev["f_latt"]
    use_tri = None
    if tri_limit is not None:
        n_eval = math.prod(f_latt.shape)
        use_tri = (jnp.arange(n_eval, dtype=tri_limit.dtype) < tri_limit).reshape(f_latt.shape)
    f_cell = jnp.broadcast_to(structure_factor(ev["hkl"], exp, cfg, use_tri), f_latt.shape)
    executed = ev["executed"]
    contribution = jnp.where(executed, f_cell * f_cell * f_latt * f_latt, 0.0)

    # the factors as the C program holds them after its loops: with -oversample_* the last
    # evaluation's (the last that passed -dmin, for the polarization)
    passes = ev["passes"]
    capture = ev["capture"][-1, -1] if cfg.oversample_thick else held[0]
    if cfg.oversample_polar:
        last = passes.size - 1 - jnp.argmax(jnp.flip(passes.ravel()))
        none = jnp.asarray(1.0 if cfg.nopolar else 0.0, dtype)
        polar = jnp.where(ev["any_pass"], ev["polar"].ravel()[last], none)
    else:
        polar = held[1]
    omega_held = (
        ev["omega"] if cfg.oversample_omega else jnp.broadcast_to(held[2], ev["omega"].shape)
    )

    geom = sh.geom
    orient = ev["orient"]
    rot = orient * 1e10
    recip_rot = jnp.stack(
        [
            jnp.cross(orient[..., 1, :], orient[..., 2, :]),
            jnp.cross(orient[..., 2, :], orient[..., 0, :]),
            jnp.cross(orient[..., 0, :], orient[..., 1, :]),
        ],
        axis=-2,
    )
    volume = jnp.sum(orient[..., 0, :] * recip_rot[..., 0, :], axis=-1)[..., None, None]
    recip_rot = recip_rot / volume * 1e-10
    if cfg.shape == "square":
        fa, fb, fc = ev["f_parts"]
    else:
        fa = fb = fc = jnp.ones_like(f_latt)
    airpath = ev["airpath"]
    hkl = jnp.stack(ev["hkl"], axis=-1)
    return dict(
        rendered=rendered,
        fresh=fresh,
        pix0_vector_meters=geom.pix0,
        fdet_vec=geom.fast,
        sdet_vec=geom.slow,
        pixel_pos_meters=ev["pos"],
        R_distance_meters=airpath,
        solid_angle_sr=ev["omega"],
        omega_pixel_sr=omega_held,
        close_distance_meters=geom.close_distance,
        obliquity_factor=geom.close_distance / airpath,
        diffracted_vec=ev["diffracted"],
        capture=ev["capture"],
        incident_vec=sh.incident,
        lambda_meters=sh.wavelengths,
        lambda_angstroms=sh.wavelengths * 1e10,
        scattering_vec_A_inv=ev["scattering"],
        passes=passes,
        polar_factor=ev["polar"],
        rot_a_angstroms=rot[..., 0, :],
        rot_b_angstroms=rot[..., 1, :],
        rot_c_angstroms=rot[..., 2, :],
        rot_a_star_A_inv=sh.recip[0],
        rot_b_star_A_inv=sh.recip[1],
        rot_c_star_A_inv=sh.recip[2],
        a_star_rotated=recip_rot[..., 0, :],
        b_star_rotated=recip_rot[..., 1, :],
        c_star_rotated=recip_rot[..., 2, :],
        hkl_frac=hkl,
        hkl_rounded=jnp.ceil(hkl - 0.5),
        F_latt_a=fa,
        F_latt_b=fb,
        F_latt_c=fc,
        F_latt=f_latt,
        F_cell=f_cell,
        tricubic=jnp.zeros(f_latt.shape, bool) if use_tri is None else use_tri,
        executed=executed,
        I_contribution=contribution,
        phi_deg=phi_angles(exp.crystal, cfg.phisteps) * RTD,
        I_before_scaling=total[0],
        r_e_meters=jnp.sqrt(jnp.asarray(R_E_SQR, dtype)),
        r_e_sqr=jnp.asarray(R_E_SQR, dtype),
        fluence_photons_per_m2=exp.beam.fluence,
        steps=jnp.asarray(steps(exp, cfg)),
        oversample_thick=jnp.asarray(int(cfg.oversample_thick)),
        oversample_polar=jnp.asarray(int(cfg.oversample_polar)),
        oversample_omega=jnp.asarray(int(cfg.oversample_omega)),
        capture_fraction=capture,
        polar=polar,
        omega_pixel=omega_held[-1, -1],
        cos_2theta=jnp.dot(sh.incident[-1], ev["diffracted"][-1, -1]),
        I_pixel_final=final[0],
        floatimage_accumulated=final[0].astype(jnp.float32).astype(dtype),
    )


def _values(*xs) -> str:
    flat = np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in xs])
    return " ".join(_g(v) for v in flat)


def _ints(*xs) -> str:
    flat = np.concatenate([np.ravel(np.asarray(x)) for x in xs])
    return " ".join(str(int(v)) for v in flat)


def _matmul3(a, b):
    """3×3 product in the C program's summation order (so that signed zeros print alike)."""
    out = [[0.0] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(3):
            for k in range(3):
                out[i][j] += a[i][k] * b[k][j]
    return out


def _matrix(m) -> str:
    return "[" + "; ".join(" ".join(_g(v) for v in row) for row in m) + "]"


CONVENTION_MAPPING = {
    "mosflm": "Fbeam←Ybeam_mm(+0.5px),Sbeam←Xbeam_mm(+0.5px),beam_vec=[1 0 0]",
    "denzo": "Fbeam←Ybeam_mm,Sbeam←Xbeam_mm,beam_vec=[1 0 0]",
    "adxv": "Fbeam←Xbeam_mm,Sbeam←detsize_s-Ybeam_mm,beam_vec=[0 0 1]",
}


def setup_lines(setup, prefix: str = PREFIX) -> list[str]:
    """The C program's detector set-up trace lines (``TRACE_C:name=value``) for a run.

    ``setup`` is a :class:`jaxdiff.experiment.Setup`. The beam-pivot and sample-pivot branches
    print different lines, as the C program does.
    """
    o, cfg = setup.options, setup.config
    det, beam = setup.experiment.detector, setup.experiment.beam
    out = []

    def vec(name, v):
        out.append(f"{prefix}:{name}={_values(v)}")

    def scalar(name, v):
        out.append(f"{prefix}:{name}={_g(v)}")

    rx, ry, rz = (float(v) for v in np.asarray(det.rotations))
    twotheta = float(det.twotheta)
    axis = np.asarray(det.twotheta_axis)
    f0, s0, n0 = (np.asarray(v) for v in (det.fast_axis, det.slow_axis, det.normal))
    rotz = [np.asarray(rotate_xyz(jnp.asarray(v), rx, ry, rz)) for v in (f0, s0, n0)]
    final = [np.asarray(rotate_axis(jnp.asarray(v), jnp.asarray(axis), twotheta)) for v in rotz]
    beam_dir = np.asarray(beam.direction)
    ratio = float(np.dot(beam_dir, rotz[2]))
    ratio = ratio if ratio != 0.0 else 2.2250738585072014e-308
    close = float(det.close_distance)
    close = abs(ratio * float(det.distance)) if math.isnan(close) else close
    distance = close / ratio
    pixel_mm = float(det.pixel_size) * 1000.0
    angles = f"rotx:{_g(rx)} roty:{_g(ry)} rotz:{_g(rz)} "
    angles += f"twotheta:{_g(twotheta)}"
    beam_f, beam_s = float(det.beam_f), float(det.beam_s)

    def common():
        for name, v in zip(("fdet", "sdet", "odet"), rotz, strict=True):
            vec(f"{name}_after_rotz", v)
        vec("twotheta_axis", axis)
        for name, v in zip(("fdet", "sdet", "odet"), final, strict=True):
            vec(f"{name}_after_twotheta", v)

    if cfg.pivot_sample:
        pix = float(det.pixel_size)
        fclose0 = (o.ORGX - 0.5) * pix if not math.isnan(o.ORGX) else o.detsize_f / 2.0
        sclose0 = (o.ORGY - 0.5) * pix if not math.isnan(o.ORGY) else o.detsize_s / 2.0
        xclose = fclose0 if math.isnan(o.Xclose) else o.Xclose
        yclose = sclose0 if math.isnan(o.Yclose) else o.Yclose
        out.append(f"{prefix}:detector_convention={o.convention.upper()}")
        out.append(f"{prefix}:angles_rad={angles}")
        out.append(
            f"{prefix}:beam_center_m=Xclose:{_g(xclose / 1000.0)} "
            f"Yclose:{_g(yclose / 1000.0)} pixel_mm:{_g(pixel_mm)}"
        )
        for name, v in zip(("fdet", "sdet", "odet"), (f0, s0, n0), strict=True):
            vec(f"initial_{name}", v)
        scalar("Fclose_m", beam_f)
        scalar("Sclose_m", beam_s)
        scalar("close_distance_m", close)
        scalar("ratio", ratio)
        scalar("distance_m", distance)
        terms = (-beam_f * f0, -beam_s * s0, close * n0)
        vec("term_fast_before_rot", terms[0])
        vec("term_slow_before_rot", terms[1])
        vec("term_close_before_rot", terms[2])
        pix0 = terms[0] + terms[1] + terms[2]
        vec("pix0_before_rotation", pix0)
        pix0 = np.asarray(rotate_xyz(jnp.asarray(pix0), rx, ry, rz))
        vec("pix0_after_rotz", pix0)
        pix0 = np.asarray(rotate_axis(jnp.asarray(pix0), jnp.asarray(axis), twotheta))
        vec("pix0_after_twotheta", pix0)
        common()
        return out

    common()
    out.append(f"{prefix}:detector_convention={o.convention.upper()}")
    out.append(f"{prefix}:angles_rad={angles}")
    xbeam, ybeam = setup.header["Xbeam"], setup.header["Ybeam"]
    out.append(
        f"{prefix}:beam_center_m=X:{_g(xbeam / 1000.0)} Y:{_g(ybeam / 1000.0)} "
        f"pixel_mm:{_g(pixel_mm)}"
    )
    for name, v in zip(("fdet", "sdet", "odet"), (f0, s0, n0), strict=True):
        vec(f"initial_{name}", v)
    cx, sx, cy, sy = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry)
    cz, sz = math.cos(rz), math.sin(rz)
    mx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]]
    my = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]]
    mz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]]
    for name, m in (
        ("Rx", mx),
        ("Ry", my),
        ("Rz", mz),
        ("R_total", _matmul3(mz, _matmul3(my, mx))),
    ):
        out.append(f"{prefix}:{name}={_matrix(m)}")
    # The C program prints the fully oriented axes (after two-theta) under these names here.
    for name, v in zip(("fdet", "sdet", "odet"), final, strict=True):
        vec(f"{name}_after_rotz", v)
    vec("twotheta_axis", axis)
    for name, v in zip(("fdet", "sdet", "odet"), final, strict=True):
        vec(f"{name}_after_twotheta", v)
    mapping = CONVENTION_MAPPING.get(o.convention)
    if mapping is None:
        mapping = f"Fbeam←Xbeam_mm,Sbeam←Ybeam_mm,beam_vec=[{_values(beam_dir)}]"
    out.append(f"{prefix}:convention_mapping={mapping}")
    scalar("Fbeam_m", beam_f)
    scalar("Sbeam_m", beam_s)
    scalar("distance_m", distance)
    vec("term_fast", -beam_f * final[0])
    vec("term_slow", -beam_s * final[1])
    vec("term_beam", distance * beam_dir)
    vec("pix0_vector", -beam_f * final[0] - beam_s * final[1] + distance * beam_dir)
    return out


def pixel_lines(record: dict, cfg: SimConfig, prefix: str = PREFIX) -> list[str]:
    """The C program's per-pixel trace lines for a :func:`trace_pixel` record, in its order.

    The lines of the first block repeat for every layer and sub-pixel (source 0); the lattice
    lines come from source 0, φ step 0 and mosaic domain 0; one ``_PHI`` line per φ step (square
    shape only); ``F_cell`` only where the evaluation goes on (F_latt ≠ 0 or water); the
    ``_SOURCE2`` lines from source 2; the scaling lines once. A pixel outside the ROI or the
    mask prints nothing, as in the C program.
    """
    r = {k: np.asarray(v) for k, v in record.items()}
    if not bool(r["rendered"]):
        return []
    out = []
    n_layer, n_sub = r["R_distance_meters"].shape
    n_src = r["incident_vec"].shape[0]
    n_phi, n_mos = r["F_latt"].shape[-2:]
    square = cfg.shape == "square"

    def line(name, text):
        out.append(f"{prefix}: {name} {text}")

    for lay in range(n_layer):
        for sub in range(n_sub):
            for src in range(n_src):
                at = (lay, sub, src)
                if src == 0:
                    line("pix0_vector_meters", _values(r["pix0_vector_meters"]))
                    line("fdet_vec", _values(r["fdet_vec"]))
                    line("sdet_vec", _values(r["sdet_vec"]))
                    line("pixel_pos_meters", _values(r["pixel_pos_meters"][lay, sub]))
                    line("R_distance_meters", _values(r["R_distance_meters"][lay, sub]))
                    line("omega_pixel_sr", _values(r["omega_pixel_sr"][lay, sub]))
                    line("close_distance_meters", _values(r["close_distance_meters"]))
                    line("obliquity_factor", _values(r["obliquity_factor"][lay, sub]))
                    line("diffracted_vec", _values(r["diffracted_vec"][lay, sub]))
                    line("incident_vec", _values(r["incident_vec"][0]))
                    line("lambda_meters", _values(r["lambda_meters"][0]))
                    line("lambda_angstroms", _values(r["lambda_angstroms"][0]))
                    line("scattering_vec_A_inv", _values(r["scattering_vec_A_inv"][at]))
                if not r["passes"][at]:
                    continue
                for phi in range(n_phi):
                    for mos in range(n_mos):
                        ev = at + (phi, mos)
                        first = src == 0 and phi == 0 and mos == 0
                        if first:
                            for axis in "abc":
                                line(
                                    f"rot_{axis}_angstroms", _values(r[f"rot_{axis}_angstroms"][ev])
                                )
                            for axis in "abc":
                                line(f"rot_{axis}_star_A_inv", _values(r[f"rot_{axis}_star_A_inv"]))
                            line("hkl_frac", _values(r["hkl_frac"][ev]))
                            line("hkl_rounded", _ints(r["hkl_rounded"][ev]))
                        if square and first:
                            for name in ("F_latt_a", "F_latt_b", "F_latt_c", "F_latt"):
                                line(name, _values(r[name][ev]))
                        if square and src == 0 and mos == 0:
                            out.append(
                                f"{prefix}_PHI phi_tic={phi} phi_deg={_g(r['phi_deg'][phi])} "
                                f"k_frac={_g(r['hkl_frac'][ev][1])} "
                                f"F_latt_b={_g(r['F_latt_b'][ev])} "
                                f"F_latt={_g(r['F_latt'][ev])}"
                            )
                        if not r["executed"][ev]:
                            continue
                        if first:
                            line("F_cell", _values(r["F_cell"][ev]))
                        if src == 2 and phi == 0 and mos == 0:
                            out.extend(_source2_lines(r, cfg, ev, prefix))
    for name in ("I_before_scaling", "r_e_meters", "r_e_sqr", "fluence_photons_per_m2"):
        line(name, _values(r[name]))
    for name in ("steps", "oversample_thick", "oversample_polar", "oversample_omega"):
        line(name, _ints(r[name]))
    for name in ("capture_fraction", "polar", "omega_pixel", "cos_2theta", "I_pixel_final"):
        line(name, _values(r[name]))
    line("floatimage_accumulated", _values(r["floatimage_accumulated"]))
    return out


def _source2_lines(r: dict, cfg: SimConfig, ev: tuple, prefix: str) -> list[str]:
    """The C program's per-source diagnostic for source 2 (φ step 0, mosaic domain 0)."""
    lay, sub, src = ev[:3]
    if cfg.oversample_polar:
        polar = r["polar_factor"][lay, sub, src]
    else:
        polar = r["polar"]
    f_cell, f_latt = r["F_cell"][ev], r["F_latt"][ev]
    cos2t = float(np.dot(r["incident_vec"][src], r["diffracted_vec"][lay, sub]))
    values = (
        ("F_cell", f_cell),
        ("F_latt", f_latt),
        ("F_cell_squared", f_cell * f_cell),
        ("F_latt_squared", f_latt * f_latt),
        ("I_contribution", f_cell * f_cell * f_latt * f_latt),
        ("polar", polar),
        ("cos2theta", cos2t),
        ("lambda_angstroms", r["lambda_angstroms"][src]),
    )
    out = [f"{prefix}_SOURCE2: {name} {_g(v)}" for name, v in values]
    out.append(f"{prefix}_SOURCE2: source_index {src}")
    return out


def trace_lines(
    setup, spixel: int, fpixel: int, prefix: str = PREFIX, panel: int | None = None
) -> list[str]:
    """All trace lines of pixel (``spixel``, ``fpixel``) for a resolved run (set-up, then the
    pixel), as the C program prints them with ``-trace_pixel spixel fpixel``; of panel
    ``panel`` for a multi-panel detector (the set-up lines are that panel's)."""
    record = trace_pixel(setup.experiment, setup.config, spixel, fpixel, panel)
    if setup.experiment.detector.panels:
        one = select_panel(setup.experiment, panel)
        setup = dataclasses.replace(setup, experiment=one)
    lines = setup_lines(setup, prefix)
    where = "" if panel is None else f"panel={panel}, "
    lines.append(f"TRACE_CONFIG: tracing pixel ({where}spixel={spixel}, fpixel={fpixel})")
    return lines + pixel_lines(record, setup.config, prefix)
