"""The image kernel: one block of pixels, looping over crystal orientations.

For speed every per-evaluation array has the pixels as its last (contiguous) axis and the
orientations (φ step × mosaic domain) are a ``fori_loop``: each iteration is one fused,
vectorized pass over (layer·sub-pixel·source, pixel) with the orientation matrix as scalars, and
nothing of size evaluations × pixels is ever stored. The C program's sequential state travels in
the loop carry: the running sum, the running product of the per-sub-pixel factors
(-oversample_thick/_polar/_omega), and the first evaluation that leaves the tricubic table.
Geometry (pixel positions, scattering vectors) is formed in the widest float available, so the
float32 path loses no digits to the small difference between diffracted and incident beams.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxdiff import physics
from jaxdiff.beam import polarization_basis, polarization_from_projections
from jaxdiff.config import SimConfig
from jaxdiff.detector import capture_from_parallax, pixel_position_components, solid_angle


def evaluation_geometry(sh, exp, cfg: SimConfig, spix, fpix, rendered):
    """Per (layer·sub-pixel·source, pixel) quantities, component by component, pixels last."""
    det = exp.detector
    dtype = spix.dtype
    wide = sh.geom.pix0.dtype
    x, y, z = pixel_position_components(
        sh.geom,
        spix.astype(wide),
        fpix.astype(wide),
        cfg.oversample,
        sh.depths,
        sh.pixel_size,
        sh.beam_dir,
        cfg.curved,
    )  # each (L, Sub, P)
    airpath = jnp.sqrt(x * x + y * y + z * z)
    d = (x / airpath, y / airpath, z / airpath)
    inc, lam = sh.incident, sh.wavelengths  # (Src, 3), (Src,)
    # scattering vector per (L, Sub, Src, P), in the wide precision, then the run's dtype
    s = tuple(((d[i][:, :, None, :] - inc[:, i, None]) / lam[:, None]) for i in range(3))
    normal = sh.geom.normal.astype(dtype)
    d_run = tuple(c.astype(dtype) for c in d)
    omega = solid_angle(
        det.pixel_size, airpath.astype(dtype), sh.geom.close_distance.astype(dtype), cfg.point_pixel
    )
    if cfg.absorption or cfg.oversample_thick:
        # without a sensor thickness nanoBragg's -oversample_thick still recomputes the
        # capture fraction, exp(0) - exp(0) = 0, and so renders an empty image
        parallax = d_run[0] * normal[0] + d_run[1] * normal[1] + d_run[2] * normal[2]
        capture = capture_from_parallax(
            sh.layers[:, None, None], det.layer_thickness, det.mu, parallax
        )
    else:
        capture = jnp.ones_like(omega)
    if cfg.dmin > 0.0:
        stol = 0.5 * jnp.sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2])
        passes = ~((stol > 0.0) & (cfg.dmin > 0.5 / jnp.where(stol > 0.0, stol, 1.0)))
    else:
        passes = jnp.ones(s[0].shape, dtype=bool)
    passes = passes & rendered
    inc_run = inc.astype(dtype)
    e_in, b_in = polarization_basis(inc_run, exp.beam.polar_vector)

    def dot(vec):  # d · vec for each source: (L, Sub, Src, P)
        return sum(d_run[i][:, :, None, :] * vec[:, i, None] for i in range(3))

    polar = polarization_from_projections(exp.beam.polarization, dot(inc_run), dot(e_in), dot(b_in))
    p = spix.shape[0]
    n_src = inc.shape[0]

    def per_q(a):  # (L, Sub[, Src], P) -> (Q, P) with Q = L·Sub·Src in loop order
        if a.ndim == 3:
            a = jnp.broadcast_to(a[:, :, None, :], (*a.shape[:2], n_src, p))
        return a.reshape(-1, p)

    return dict(
        s=tuple(per_q(c.astype(dtype)) for c in s),
        passes=per_q(passes),
        polar=per_q(polar),
        omega=per_q(omega),
        capture=per_q(capture),
        omega0=omega[0, 0],
        capture_last=capture[-1, 0],
        # unflattened, for the trace: (L, Sub, P) and (L, Sub, Src, P), one entry per component
        raw=dict(
            pos=(x, y, z),
            airpath=airpath,
            diffracted=d,
            scattering=s,
            omega=omega,
            capture=capture,
            passes=passes,
            polar=polar,
        ),
    )


def miller_indices(s, a):
    """Fractional Miller indices (h, k, l) for scattering components ``s`` (three arrays) and
    real-space vectors ``a`` (3, 3, ...): rows a, b, c, components last-but-one leading."""
    return tuple(s[0] * a[j, 0] + s[1] * a[j, 1] + s[2] * a[j, 2] for j in range(3))


@jax.custom_jvp
def oriented_lattice_sq(s, a, ncells):
    """F_latt² of the parallelepiped crystal at the Miller indices of scattering vector
    components ``s`` (three arrays) and real-space vectors ``a`` (3, 3).

    The same values as :func:`jaxdiff.physics.square_lattice_sq` of :func:`miller_indices`;
    its derivative sees which of ``s`` and ``a`` vary, and when the scattering vectors do
    (detector or beam parameters) it keeps F_latt²'s per-axis slopes as arrays of their own,
    which is what their reverse pass reads (about twice as fast on the detector's parameters;
    the crystal's reverse pass is faster without).
    """
    return physics.square_lattice_sq(*miller_indices(s, a), ncells)


def _zero(t) -> bool:
    return isinstance(t, SymbolicZero)


@functools.partial(oriented_lattice_sq.defjvp, symbolic_zeros=True)
def _oriented_lattice_sq_jvp(primals, tangents):
    s, a, ncells = primals
    ds, da, dn = tangents
    moving_s = [i for i in range(3) if not _zero(ds[i])]
    dhkl = []
    for j in range(3):
        terms = [ds[i] * a[j, i] for i in moving_s]
        if not _zero(da):
            terms += [s[i] * da[j, i] for i in range(3)]
        dhkl.append(sum(terms[1:], terms[0]) if terms else None)
    return physics.square_lattice_sq_jvp(
        miller_indices(s, a), ncells, dhkl, None if _zero(dn) else dn, per_axis=bool(moving_s)
    )


def _lattice_sq(hkl, exp, cfg, recip, oriented=None):
    """F_latt² and whether F_latt is nonzero; ``oriented``: the (s, a) the indices came from,
    when they are plain Miller indices (:func:`oriented_lattice_sq`)."""
    if cfg.shape == "square":
        if oriented is not None:
            f2 = oriented_lattice_sq(*oriented, exp.crystal.ncells)
        else:
            f2 = physics.square_lattice_sq(*hkl, exp.crystal.ncells)
        return f2, f2 != 0.0
    f, _ = physics.lattice_factor(
        jnp.stack(hkl, axis=-1), exp.crystal.ncells, cfg.shape, exp.crystal.fudge, recip
    )
    return f * f, f != 0.0


def structure_factor(hkl, exp, cfg, use_tri):
    """F_cell for Miller indices ``hkl`` (three arrays): the table's entry at the nearest
    index (default_F off the table or without one), or, where ``use_tri``, the tricubic
    interpolation (``use_tri`` None: no interpolation)."""
    if cfg.table_lo is None:
        return exp.default_F
    whole = [physics.nearest_index(x) for x in hkl]
    f_nn = physics.nearest_F_components(*whole, exp.fhkl, cfg.table_lo, cfg.table_hi, exp.default_F)
    if use_tri is None:
        return f_nn
    stacked = jnp.stack(hkl, axis=-1)
    return jnp.where(use_tri, physics.tricubic_F(stacked, exp.fhkl, cfg.table_lo), f_nn)


def _orientation_loop(sh, exp, cfg, g, pidx, tri, fresh, probe):
    """Loop over orientations; returns the loop's final carry."""
    s = g["s"]
    q_count, p = g["passes"].shape
    n_orient = sh.stale.shape[0] * sh.stale.shape[1]
    stale = sh.stale.reshape(n_orient, 3, 3)
    fresh_m = sh.fresh.reshape(n_orient, 3, 3)
    first_q = jnp.argmax(g["passes"], axis=0)
    q_idx = jnp.arange(q_count)[:, None]
    is_first = q_idx == first_q[None, :]
    per_sub = cfg.oversample_thick or cfg.oversample_polar or cfg.oversample_omega
    factor = None
    if per_sub:
        factor = jnp.ones_like(g["polar"])
        if cfg.oversample_thick:
            factor = factor * g["capture"]
        if cfg.oversample_polar:
            factor = factor * g["polar"]
        if cfg.oversample_omega:
            factor = factor * g["omega"]
    interpolating = cfg.interpolate and cfg.table_lo is not None
    plain = not (probe or per_sub or interpolating or cfg.dmin > 0.0)
    big = jnp.iinfo(jnp.int32).max

    def body(o, carry):
        hkl = miller_indices(s, stale[o])
        oriented = (tuple(s), stale[o])
        if fresh:
            hkl_f = miller_indices(s, fresh_m[o])
            hkl = tuple(jnp.where(is_first, b, a) for a, b in zip(hkl, hkl_f, strict=True))
            oriented = None
        f2, nonzero = _lattice_sq(hkl, exp, cfg, sh.recip, oriented)
        if plain:  # every evaluation counts and a zero F_latt adds zero
            return carry + structure_factor(hkl, exp, cfg, None) ** 2 * f2
        executed = g["passes"]
        if cfg.water_size == 0.0:
            executed = executed & nonzero
        local = (q_idx * n_orient + o).astype(jnp.int32)
        if probe:
            inside = physics.tricubic_in_range(jnp.stack(hkl, -1), cfg.table_lo, cfg.table_hi)
            hit = executed & ~inside & (carry == big)
            return jnp.where(hit, local, carry)
        use_tri = None
        if interpolating:
            tri_p, tri_j = tri
            use_tri = (pidx < tri_p)[None, :] | ((pidx == tri_p)[None, :] & (local < tri_j))
        fc = structure_factor(hkl, exp, cfg, use_tri)
        x = jnp.where(executed, fc * fc * f2, 0.0)
        if not per_sub:
            return carry + x
        acc, mult = carry
        return (
            jnp.where(executed, (acc + x) * factor, acc),
            jnp.where(executed, mult * factor, mult),
        )

    dtype = g["polar"].dtype
    if probe:
        init = jnp.full((q_count, p), big, dtype=jnp.int32)
    elif per_sub:
        init = (jnp.zeros((q_count, p), dtype), jnp.ones((q_count, p), dtype))
    else:
        init = jnp.zeros((q_count, p), dtype)
    # reverse mode keeps only each iteration's carry and recomputes the rest (memory bound)
    return jax.lax.fori_loop(0, n_orient, jax.checkpoint(body), init), first_q


def probe_block(sh, exp, cfg, spix, fpix, rendered, fresh):
    """First evaluation (flat index in loop order) of each pixel whose tricubic neighbourhood
    leaves the table (or the evaluation count), and whether any source passed -dmin."""
    g = evaluation_geometry(sh, exp, cfg, spix, fpix, rendered)
    first, _ = _orientation_loop(sh, exp, cfg, g, None, None, fresh, probe=True)
    n_eval = first.shape[0] * sh.stale.shape[0] * sh.stale.shape[1]
    first = jnp.min(first, axis=0)
    return jnp.where(first == jnp.iinfo(jnp.int32).max, n_eval, first), jnp.any(g["passes"], 0)


def render_block(sh, exp, cfg, spix, fpix, pidx, rendered, tri, fresh):
    """Pixel values (P,) of a block, and whether any source of each pixel passed -dmin."""
    g = evaluation_geometry(sh, exp, cfg, spix, fpix, rendered)
    value, _ = pixel_values(sh, exp, cfg, g, pidx, rendered, tri, fresh)
    return value, jnp.any(g["passes"], axis=0)


def pixel_values(sh, exp, cfg, g, pidx, rendered, tri, fresh):
    """Photons (P,) of pixels with geometry ``g`` (:func:`evaluation_geometry`), and their
    sums before scaling (nanoBragg's I: background plus every evaluation's F_cell² F_latt²,
    with the running -oversample_* factors)."""
    carry, first_q = _orientation_loop(sh, exp, cfg, g, pidx, tri, fresh, probe=False)
    if isinstance(carry, tuple):
        acc, mult = carry

        def fold(total, qm):  # I ← I·Π f + Σ x f…, group by group in loop order
            a, m = qm
            return total * m + a, None

        start = jnp.broadcast_to(sh.i_bg, acc.shape[1:]).astype(acc.dtype)
        total, _ = jax.lax.scan(fold, start, (acc, mult))
    else:
        total = sh.i_bg + jnp.sum(carry, axis=0)
    capture, polar, omega = held_factors(cfg, g, first_q)
    value = sh.scale * total
    if not cfg.oversample_thick:
        value = value * capture
    if not cfg.oversample_polar:
        value = value * polar
    if not cfg.oversample_omega:
        value = value * omega
    return jnp.where(rendered, value, 0.0), total


def held_factors(cfg, g, first_q):
    """Capture fraction, polarization and solid angle (each (P,)) that scale a pixel's sum
    when the matching -oversample_* is off: the values nanoBragg holds after its loops (the
    last layer's first sub-pixel, the first evaluation that passed, the first sub-pixel).
    ``first_q``: each pixel's first passing work item (layer·sub-pixel·source)."""
    any_pass = jnp.any(g["passes"], axis=0)
    if cfg.nopolar:
        polar = jnp.ones_like(g["omega0"])
    else:
        polar = jnp.take_along_axis(g["polar"], first_q[None, :], axis=0)[0]
        polar = jnp.where(any_pass, polar, 0.0)
    return g["capture_last"], polar, g["omega0"]
