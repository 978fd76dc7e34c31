"""Physics kernels for one evaluation (they broadcast over any leading axes):
lattice transforms (sincg, sinc3, Gaussian, top-hat), structure-factor lookup (nearest
neighbour and tricubic), all with finite gradients at their singular points.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.custom_derivatives import SymbolicZero

SHAPES = ("square", "round", "gauss", "tophat")
# sqrt of the volume ratio between a cube and its inscribed sphere (nanoBragg's round_xtal).
_ROUND_NORM = 0.723601254558268


def nearest_index(x: Array) -> Array:
    """nanoBragg's rounding to the nearest whole index, ceil(x - 0.5), as floats."""
    return jnp.ceil(x - 0.5)


def _taylor_coefficients(terms: int, odd: bool) -> tuple[float, ...]:
    """Taylor coefficients in powers of r² of sin(πr)/r (``odd``) or cos(πr), lowest first."""
    out, term = [], math.pi if odd else 1.0
    for k in range(terms):
        out.append(term)
        m = 2 * k + 1 if odd else 2 * k
        term = -term * math.pi * math.pi / ((m + 1) * (m + 2))
    return tuple(out)


# |r| ≤ 1/2: truncation error < 3e-16 (float64, 11 terms), < 6e-8 (float32, 6 terms).
_SINPI = {8: _taylor_coefficients(11, True), 4: _taylor_coefficients(6, True)}


def sinpi_reduced(x: Array) -> tuple[Array, Array]:
    """sin(π r) and the integer n with x = n + r, |r| ≤ 1/2; sin(πx) = (-1)^n sin(π r).

    The reduction is exact in floating point and the polynomial needs no further range
    reduction, so this is cheaper than ``jnp.sin`` and vectorizes well.
    """
    n = jnp.floor(x + 0.5)
    r = x - n
    r2 = r * r
    coef = _SINPI[jnp.dtype(x.dtype).itemsize]
    poly = coef[-1]
    for c in coef[-2::-1]:
        poly = poly * r2 + c
    return poly * r, n


def sinpi(x: Array) -> Array:
    """sin(πx) with exact argument reduction."""
    s, n = sinpi_reduced(x)
    odd = jnp.floor(n * 0.5) != n * 0.5
    return jnp.where(odd, -s, s)


def _offset(h: Array) -> tuple[Array, Array, Array, Array]:
    """h's nearest whole index h0, the offset d = h - h0, whether d is within the Bragg-peak
    branch (|d| < 1e-5), and d with that branch replaced by a harmless 1/4."""
    h0 = nearest_index(h)
    d = h - h0
    small = jnp.abs(d) < 1e-5
    return h0, d, small, jnp.where(small, 0.25, d)


def _grating_parts(h: Array, n: Array, sines=None) -> tuple[Array, Array, Array]:
    """Numerator and denominator of |sin(Nπd)/sin(πd)| for d = h - round(h), and the
    reduced-form value to use where d is tiny (a Bragg peak): N(1 - (N²-1)π²d²/6).
    ``sines``: (sin πNd, sin πd) of :func:`_grating_sincos`, when already computed."""
    _, d, small, safe = _offset(h)
    if sines is None:
        num, _ = sinpi_reduced(n * safe)
        den, _ = sinpi_reduced(safe)
    else:
        num, den = sines
    peak = n * (1.0 - (n * n - 1.0) * d * d * (math.pi * math.pi / 6.0))
    return jnp.where(small, peak, num), jnp.where(small, 1.0, den), small


def sincg(h: Array, n: Array) -> Array:
    """Grating transform sin(Nπh)/sin(πh) (nanoBragg ``sincg(π h, N)``).

    h is reduced to its nearest integer first, h = h0 + d, and the ratio is evaluated as
    ±sin(Nπd)/sin(πd): accurate in float32 at large h, and at d → 0 (integer h, a Bragg peak)
    a Taylor form gives the value N and a finite gradient. The sign (-1)^((N-1)h0) is exact for
    integer N; the transform is used squared, so fitted non-integer N only sees |value|.
    """
    h0, d, small, safe = _offset(h)
    peak = n * (1.0 - (n * n - 1.0) * d * d * (math.pi * math.pi / 6.0))
    ratio = jnp.where(small, peak, sinpi(n * safe) / sinpi(safe))
    parity = jnp.mod(jnp.round(n - 1.0) * h0, 2.0)
    return jnp.where(parity == 1.0, -ratio, ratio)


# |r| ≤ 1/2: truncation error < 2e-16 (float64, 11 terms), < 3e-8 (float32, 6 terms).
_COSPI = {8: _taylor_coefficients(11, False), 4: _taylor_coefficients(6, False)}


def _sincospi_reduced(x: Array) -> tuple[Array, Array]:
    """sin(π r) and cos(π r) for x = n + r, |r| ≤ 1/2 (the signs (-1)^n left out)."""
    r = x - jnp.floor(x + 0.5)
    r2 = r * r
    size = jnp.dtype(x.dtype).itemsize
    sin, cos = _SINPI[size][-1], _COSPI[size][-1]
    for c in _SINPI[size][-2::-1]:
        sin = sin * r2 + c
    for c in _COSPI[size][-2::-1]:
        cos = cos * r2 + c
    return sin * r, cos


def _grating_sincos(h: Array, n: Array) -> tuple[Array, Array, Array, Array]:
    """sin and cos of πNd and of πd for d = h - round(h) (reduced: signs left out, the Bragg-peak
    branch replaced by d = 1/4), as :func:`_grating_parts` and :func:`_grating_log_slopes` use
    them; the sines are bit for bit those of :func:`sinpi_reduced`."""
    _, _, _, safe = _offset(h)
    s1, c1 = _sincospi_reduced(n * safe)
    s0, c0 = _sincospi_reduced(safe)
    return s1, c1, s0, c0


def _grating_log_slopes(h: Array, n: Array, sincos=None) -> tuple[Array, Array]:
    """For one axis, the logarithmic derivatives of the squared grating ratio
    q = (sin Nπd / sin πd)²: (dq/dh)/q and (dq/dN)/q, in closed form.

    With s₁, c₁ = sin, cos(πNd) and s₀, c₀ = sin, cos(πd) they are 2π(N c₁/s₁ - c₀/s₀) and
    2π d c₁/s₁ (the signs the range reduction leaves out cancel in each ratio). Where s₁ = 0
    the lattice factor and its slope vanish together and both are set to zero; near a Bragg
    peak the Taylor form of q is differentiated instead. ``sincos``: the axis'
    :func:`_grating_sincos`, when already computed.
    """
    _, d, small, safe = _offset(h)
    s1, c1, s0, c0 = _grating_sincos(h, n) if sincos is None else sincos
    zero = s1 == 0.0
    inv = (2.0 * math.pi) / (jnp.where(zero, 1.0, s1) * s0)  # one division for both ratios
    dh = jnp.where(zero, 0.0, (n * c1 * s0 - c0 * s1) * inv)
    dn = jnp.where(zero, 0.0, safe * c1 * s0 * inv)
    pi2_6 = math.pi * math.pi / 6.0
    p = 1.0 - (n * n - 1.0) * d * d * pi2_6
    dh = jnp.where(small, -4.0 * (n * n - 1.0) * pi2_6 * d / p, dh)
    dn = jnp.where(small, 2.0 * (1.0 - (3.0 * n * n - 1.0) * pi2_6 * d * d) / (n * p), dn)
    one = n <= 1.0  # nanoBragg skips an axis with N ≤ 1
    return jnp.where(one, 0.0, dh), jnp.where(one, 0.0, dn)


def _lattice_sq_from_parts(hkl, ncells, sines=None) -> Array:
    """F_latt² from the three axes' gratings; ``sines``: their (sin πNd, sin πd), when
    already computed."""
    num = den = None
    for j, (x, n) in enumerate(zip(hkl, (ncells[0], ncells[1], ncells[2]), strict=True)):
        a, b, _ = _grating_parts(x, n, None if sines is None else sines[j])
        one = n <= 1.0  # nanoBragg skips an axis with N ≤ 1
        a = jnp.where(one, 1.0, a)
        b = jnp.where(one, 1.0, b)
        num = a if num is None else num * a
        den = b if den is None else den * b
    ratio = num / den
    return ratio * ratio


def _kept(x: Array, unit: Array) -> Array:
    """``x`` divided by ``unit``, a traced 1: the same values, but XLA on CPU no longer copies
    the (cheap, elementwise) computation of ``x`` into every fused consumer of it, which it
    would otherwise do (a division at the root counts as expensive), and keeps ``x`` as an
    array that each consumer reads."""
    return x / unit


@jax.custom_jvp
def square_lattice_sq(h: Array, k: Array, l: Array, ncells: Array) -> Array:
    """F_latt² of the parallelepiped crystal: the product of the three sincg², with one
    division (the sign of each factor is irrelevant once squared).

    Its derivative is written out as F_latt² times the sum of per-axis logarithmic slopes
    (:func:`_grating_log_slopes`): each axis' slope needs only that axis, so the reverse pass
    of the image kernel evaluates every grating once instead of once per axis. The rule
    computes each sine and cosine once, as arrays of their own (:func:`_kept`), so that the
    compiler does not repeat the polynomials in every quantity derived from them.
    """
    return _lattice_sq_from_parts((h, k, l), ncells)


@functools.partial(square_lattice_sq.defjvp, symbolic_zeros=True)
def _square_lattice_sq_jvp(primals, tangents):
    h, k, l, ncells = primals
    dhkl = [None if isinstance(t, SymbolicZero) else t for t in tangents[:3]]
    dn = None if isinstance(tangents[3], SymbolicZero) else tangents[3]
    return square_lattice_sq_jvp((h, k, l), ncells, dhkl, dn, per_axis=False)


def square_lattice_sq_jvp(hkl, ncells: Array, dhkl, dn, per_axis: bool) -> tuple[Array, Array]:
    """:func:`square_lattice_sq` of ``hkl`` (three arrays) and its tangent for index tangents
    ``dhkl`` (three arrays, None where zero) and Na, Nb, Nc tangent ``dn`` (None if zero).

    Each sine and cosine is computed once and kept (:func:`_kept`): the value and all slopes
    read them. The tangent is F_latt² Σ_j (slope_h_j dh_j + slope_N_j dN_j); with ``per_axis``
    the products F_latt² slope_h_j are kept as arrays of their own, so that a reverse pass
    which sums the index cotangents into several quantities per evaluation (the scattering
    vectors' three components) reads three arrays instead of recomputing each product from
    the kept sines in every sum.
    """
    unit = jnp.abs(ncells[0]) + 1.0
    unit = unit / unit
    sincos = [[_kept(a, unit) for a in _grating_sincos(x, ncells[j])] for j, x in enumerate(hkl)]
    sines = [(s1, s0) for s1, _, s0, _ in sincos]
    value = _lattice_sq_from_parts(hkl, ncells, sines)
    rate, tangent = None, None
    for j, x in enumerate(hkl):
        if dhkl[j] is None and dn is None:
            continue
        slope_h, slope_n = _grating_log_slopes(x, ncells[j], sincos[j])
        parts = []
        if dhkl[j] is not None:
            if per_axis:
                term = _kept(value * slope_h, unit) * dhkl[j]
                tangent = term if tangent is None else tangent + term
            else:
                parts.append(slope_h * dhkl[j])
        if dn is not None:
            parts.append(slope_n * dn[j])
        if parts:
            term = sum(parts[1:], parts[0])
            rate = term if rate is None else rate + term
    if rate is not None:
        term = value * rate
        tangent = term if tangent is None else tangent + term
    return value, jnp.zeros_like(value) if tangent is None else tangent


def sinc3(x: Array) -> Array:
    """Sphere transform 3(sin x - x cos x)/x³ (nanoBragg ``sinc3``), finite gradient at 0.

    Below |x| = 0.05 a series replaces the closed form, whose cancellation costs its derivative
    a relative 1e-3 at x = 1e-3 (the series' first omitted term is below 1e-18 there).
    """
    small = jnp.abs(x) < 0.05
    safe = jnp.where(small, 1.0, x)
    exact = 3.0 * (jnp.sin(safe) / safe - jnp.cos(safe)) / (safe * safe)
    x2 = x * x
    series = 1.0 - x2 * (1.0 / 10.0 - x2 * (1.0 / 280.0 - x2 * (1.0 / 15120.0 - x2 / 1330560.0)))
    return jnp.where(small, series, exact)


def _safe_sqrt(q: Array) -> Array:
    pos = q > 0.0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, q, 1.0)), 0.0)


def lattice_factor(
    hkl: Array, ncells: Array, shape: str, fudge: Array, recip: Array
) -> tuple[Array, tuple[Array, Array, Array]]:
    """Lattice transform F_latt for fractional indices ``hkl`` (..., 3).

    Returns ``(F_latt, (Fa, Fb, Fc))``; the per-axis factors are those of the square shape
    (ones for the other shapes). ``recip`` (3, 3) holds a*, b*, c* [1/Å] of the unrotated
    crystal, which nanoBragg uses for the Gaussian and top-hat spot radius.
    """
    na, nb, nc = ncells[0], ncells[1], ncells[2]
    h, k, l = hkl[..., 0], hkl[..., 1], hkl[..., 2]
    one = jnp.ones_like(h)
    if shape == "square":
        fa = jnp.where(na > 1.0, sincg(h, na), one)
        fb = jnp.where(nb > 1.0, sincg(k, nb), one)
        fc = jnp.where(nc > 1.0, sincg(l, nc), one)
        return fa * fb * fc, (fa, fb, fc)
    d = hkl - nearest_index(hkl)
    volume = na * nb * nc
    if shape == "round":
        hrad_sqr = d[..., 0] ** 2 * na * na + d[..., 1] ** 2 * nb * nb + d[..., 2] ** 2 * nc * nc
        f = volume * _ROUND_NORM * sinc3(jnp.pi * _safe_sqrt(hrad_sqr * fudge))
        return f, (one, one, one)
    dstar = d @ recip
    rad_star_sqr = jnp.sum(dstar * dstar, axis=-1) * (na * na * nb * nb * nc * nc)
    if shape == "gauss":
        return volume * jnp.exp(-(rad_star_sqr / 0.63 * fudge)), (one, one, one)
    if shape == "tophat":
        return volume * (rad_star_sqr * fudge < 0.3969).astype(h.dtype), (one, one, one)
    raise ValueError(f"unknown crystal shape {shape!r}")


def nearest_F(
    hkl0: Array,
    grid: Array,
    lo: tuple[int, int, int],
    hi: tuple[int, int, int],
    default_F: Array,
    have_table: bool,
) -> Array:
    """Structure factor of the nearest reflection, or ``default_F`` outside the table."""
    if not have_table:
        return jnp.broadcast_to(default_F, hkl0.shape[:-1]).astype(hkl0.dtype)
    return nearest_F_components(hkl0[..., 0], hkl0[..., 1], hkl0[..., 2], grid, lo, hi, default_F)


def nearest_F_components(h0, k0, l0, grid, lo, hi, default_F) -> Array:
    """:func:`nearest_F` for whole indices given as three arrays: one flat gather."""
    inside = None
    flat = None
    for x, low, high, stride in zip(
        (h0, k0, l0), lo, hi, (grid.shape[1] * grid.shape[2], grid.shape[2], 1), strict=True
    ):
        ok = (x >= low) & (x <= high)
        inside = ok if inside is None else inside & ok
        term = (x - low).astype(jnp.int32) * stride
        flat = term if flat is None else flat + term
    flat = jnp.where(inside, flat, 0)
    value = jnp.take(grid.reshape(-1), flat, mode="clip")
    return jnp.where(inside, value, default_F)


def tricubic_in_range(hkl: Array, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> Array:
    """Whether the 4×4×4 neighbourhood of ``hkl`` lies inside the table (nanoBragg's test)."""
    lo_a = jnp.asarray(lo, dtype=hkl.dtype)
    rng = jnp.asarray(hi, dtype=hkl.dtype) - lo_a + 1.0
    bad = ((hkl - lo_a + 3.0) > rng) | ((hkl - 2.0) < lo_a)
    return ~jnp.any(bad, axis=-1)


def _polint(xa: Array, ya: Array, x: Array) -> Array:
    """4-point Lagrange interpolation along the last axis of ``ya`` (nanoBragg ``polint``)."""
    x0, x1, x2, x3 = (xa[..., i] for i in range(4))
    y0, y1, y2, y3 = (ya[..., i] for i in range(4))
    t0 = (x - x1) * (x - x2) * (x - x3) * y0 / ((x0 - x1) * (x0 - x2) * (x0 - x3))
    t1 = (x - x0) * (x - x2) * (x - x3) * y1 / ((x1 - x0) * (x1 - x2) * (x1 - x3))
    t2 = (x - x0) * (x - x1) * (x - x3) * y2 / ((x2 - x0) * (x2 - x1) * (x2 - x3))
    t3 = (x - x0) * (x - x1) * (x - x2) * y3 / ((x3 - x0) * (x3 - x1) * (x3 - x2))
    return t0 + t1 + t2 + t3


def tricubic_F(hkl: Array, grid: Array, lo: tuple[int, int, int]) -> Array:
    """Tricubic (4×4×4 Lagrange) structure factor at fractional ``hkl`` (nanoBragg ``polin3``).

    Indices outside the table are clamped so the lookup is always defined; callers use the
    result only where :func:`tricubic_in_range` holds.
    """
    base = jnp.floor(hkl) - 1.0
    offs = jnp.arange(4, dtype=hkl.dtype)
    nodes = base[..., None] + offs  # (..., 3, 4)
    idx = nodes.astype(jnp.int32) - jnp.asarray(lo, dtype=jnp.int32)[:, None]
    shape = jnp.asarray(grid.shape, dtype=jnp.int32)[:, None]
    idx = jnp.clip(idx, 0, shape - 1)
    ih = idx[..., 0, :, None, None]
    ik = idx[..., 1, None, :, None]
    il = idx[..., 2, None, None, :]
    cube = grid[ih, ik, il]  # (..., 4, 4, 4) as [h][k][l]
    along_l = _polint(nodes[..., 2, None, None, :], cube, hkl[..., 2, None, None])
    along_k = _polint(nodes[..., 1, None, :], along_l, hkl[..., 1, None])
    return _polint(nodes[..., 0, :], along_k, hkl[..., 0])
