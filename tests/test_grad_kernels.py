"""Gradients of the kernels at their singular points: sincg and the squared square-lattice
transform at integer h (a Bragg peak), the transform of Miller indices (s, a) in both its
derivative forms, sinc3 at 0, the round and Gaussian shapes at a peak, a rotation vector at 0,
a unit vector of zero, polarization along the beam, tricubic interpolation, and the
misorientation angle of equal rotations. Each gradient must be finite
and equal to the analytic value or to central finite differences (float64).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import physics, render
from jaxdiff.beam import polarization_factor, safe_unit
from jaxdiff.refine import misorientation
from jaxdiff.rotation import rotation_vector_matrix


def f64(x):
    return jnp.asarray(x, dtype=jnp.float64)


def grating_slope(d: float, n: float) -> float:
    """d/dd of sin(Nπd)/sin(πd): its series where the closed form cancels, else the closed form."""
    x = math.pi * d
    if abs(d) < 1e-4:
        return n * (n * n - 1.0) * math.pi**2 * d * (-1.0 / 3.0 + (3 * n * n - 7) * x * x / 90.0)
    return (
        math.pi
        * (n * math.cos(n * x) * math.sin(x) - math.sin(n * x) * math.cos(x))
        / (math.sin(x) ** 2)
    )


@pytest.mark.parametrize("h0", [0.0, 1.0, -3.0, 17.0])
@pytest.mark.parametrize("n", [5.0, 5.5, 20.0])
def test_sincg_at_bragg_peak(h0, n):
    value, (dh, dn) = jax.value_and_grad(physics.sincg, argnums=(0, 1))(f64(h0), f64(n))
    assert abs(float(value)) == pytest.approx(n, rel=1e-15)
    assert float(dh) == 0.0
    # d/dN of N(1 - (N²-1)π²d²/6) at d = 0 is 1 (times the sign of the value).
    assert float(dn) * math.copysign(1.0, float(value)) == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("d", [3e-6, 0.99e-5, 1.01e-5, 1e-4, 0.013, 0.31])
@pytest.mark.parametrize("n", [5.0, 20.0, 7.3])
def test_sincg_slope_across_the_peak_branch(d, n):
    # The Taylor branch (|d| < 1e-5) and the ratio must join with the same slope; at even h0
    # the sign (-1)^((N-1)h0) is +1.
    slope = float(jax.grad(physics.sincg)(f64(4.0 + d), f64(n)))
    assert slope == pytest.approx(grating_slope(d, n), rel=1e-6)


@pytest.mark.parametrize("hkl", [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (-3.0, 7.0, 2.0)])
def test_square_lattice_sq_at_bragg_peak(hkl):
    ncells = f64([5.0, 6.5, 20.0])

    def f(h, k, l, n):
        return physics.square_lattice_sq(h, k, l, n)

    value, grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3))(*map(f64, hkl), ncells)
    volume = float(jnp.prod(ncells))
    assert float(value) == pytest.approx(volume**2, rel=1e-14)
    assert [float(g) for g in grads[:3]] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(
        np.asarray(grads[3]), 2.0 * volume**2 / np.asarray(ncells), rtol=1e-14
    )


def test_square_lattice_sq_matches_sincg_and_finite_differences():
    h, k, l = f64(2.23), f64(-1.04), f64(3.4999)
    n = f64([5.0, 4.3, 9.0])
    sq = physics.square_lattice_sq(h, k, l, n)
    ref = (physics.sincg(h, n[0]) * physics.sincg(k, n[1]) * physics.sincg(l, n[2])) ** 2
    assert float(sq) == pytest.approx(float(ref), rel=1e-12)
    grad = jax.grad(lambda x: physics.square_lattice_sq(x[0], x[1], x[2], n))(f64([h, k, l]))
    eps = 1e-6
    for i in range(3):
        e = np.zeros(3)
        e[i] = eps
        up = physics.square_lattice_sq(*(f64([h, k, l]) + e), n)
        down = physics.square_lattice_sq(*(f64([h, k, l]) - e), n)
        assert float(grad[i]) == pytest.approx(float(up - down) / (2 * eps), rel=1e-6)


def _lattice_sq_traced(x, n):
    """The same function with JAX tracing its derivative through the polynomials."""
    return physics.square_lattice_sq.fun(x[0], x[1], x[2], n)


@pytest.mark.parametrize("d", [0.0, 3e-6, 0.99e-5, 1.01e-5, 1e-3, 0.2, 0.5])
def test_square_lattice_sq_written_out_slopes_match_the_traced_ones(d):
    """The closed-form derivative (custom JVP) against JAX's derivative of the sincg product,
    in h, k, l and N (non-integer N too), across the Taylor branch and up to d = 1/2."""
    x = f64([3.0 + d, -2.0 - 0.7 * d, 5.0 + 0.3 * d])
    n = f64([6.0, 7.5, 1.0])  # N = 1 is an axis nanoBragg skips

    def ours(x, n):
        return physics.square_lattice_sq(x[0], x[1], x[2], n)

    g_ours = jax.grad(ours, argnums=(0, 1))(x, n)
    g_ref = jax.grad(_lattice_sq_traced, argnums=(0, 1))(x, n)
    scale = float(jnp.max(jnp.abs(jnp.concatenate(g_ref))))
    for a, b in zip(g_ours, g_ref, strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-9 * scale)
    # forward mode uses the same rule
    tangent = f64([0.3, -1.1, 0.7])
    _, jvp = jax.jvp(lambda x: ours(x, n), (x,), (tangent,))
    assert float(jvp) == pytest.approx(float(jnp.dot(g_ours[0], tangent)), rel=1e-12, abs=1e-30)


@pytest.mark.parametrize("wrt", ["s", "a", "n", "s+a+n"])
def test_oriented_lattice_sq_matches_the_traced_derivative(wrt):
    """F_latt² of the Miller indices of (s, a): its derivative, which keeps per-axis products
    when the scattering vectors vary and not otherwise, equals JAX's derivative of the sincg
    product in reverse and forward mode, with a Bragg peak (integer h, k, l) among the points."""
    rng = np.random.default_rng(3)
    a = f64(rng.normal(size=(3, 3)) * 1e-8)
    s = [f64(rng.normal(size=(2, 5)) * 3e9) for _ in range(3)]
    # the first point sits on the reflection (2, -1, 3)
    s_peak = np.linalg.solve(np.asarray(a), np.array([2.0, -1.0, 3.0]))
    s = tuple(c.at[0, 0].set(s_peak[i]) for i, c in enumerate(s))
    n = f64([6.0, 7.5, 1.0])
    which = {"s": (0,), "a": (1,), "n": (2,), "s+a+n": (0, 1, 2)}[wrt]

    def loss(fn):
        return lambda s, a, n: jnp.sum(jnp.sqrt(fn(s, a, n)) * jnp.arange(1.0, 11.0).reshape(2, 5))

    ours = loss(render.oriented_lattice_sq)
    ref = loss(lambda s, a, n: _lattice_sq_traced(jnp.stack(render.miller_indices(s, a)), n))
    g_ours = jax.tree_util.tree_leaves(jax.grad(ours, argnums=which)(s, a, n))
    g_ref = jax.tree_util.tree_leaves(jax.grad(ref, argnums=which)(s, a, n))
    for x, y in zip(g_ours, g_ref, strict=True):
        assert np.all(np.isfinite(np.asarray(x)))
        scale = float(jnp.max(jnp.abs(y)))
        assert scale > 0.0
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-12 * scale)
    j_ours = jax.tree_util.tree_leaves(jax.jacfwd(ours, argnums=which)(s, a, n))
    for x, y in zip(j_ours, g_ref, strict=True):
        scale = float(jnp.max(jnp.abs(y)))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-12 * scale)


def test_square_lattice_sq_slope_at_a_zero_of_the_grating():
    """At d = 1/N the grating vanishes to second order: value and slope are (nearly) zero,
    finite, and equal to the traced slope."""
    n = f64([5.0, 5.0, 5.0])
    peak = 5.0**6
    for x in (f64([2.0 + 1.0 / 5.0, 0.1, 0.0]), f64([0.2, 0.4, -0.6]), f64([0.5, 0.0, 1.4])):
        value, grad = jax.value_and_grad(lambda x: _lattice_sq_traced(x, n))(x)
        ours = jax.grad(lambda x: physics.square_lattice_sq(x[0], x[1], x[2], n))(x)
        assert np.all(np.isfinite(np.asarray(ours)))
        assert abs(float(value)) < 1e-20 * peak
        np.testing.assert_allclose(np.asarray(ours), np.asarray(grad), rtol=0, atol=1e-12 * peak)


def sinc3_slope(x: float) -> float:
    """d/dx 3(sin x - x cos x)/x³ from its power series, 3 Σ (-1)^k (2k+2)/(2k+3)! x^(2k)."""
    return sum(
        3.0 * (-1) ** k * (2 * k + 2) / math.factorial(2 * k + 3) * 2 * k * x ** (2 * k - 1)
        for k in range(1, 20)
    )


def test_sinc3_at_zero_and_across_its_branch():
    assert float(jax.grad(physics.sinc3)(f64(0.0))) == 0.0
    for x in (1e-3, 0.0499, 0.0501, 0.2, 2.0):
        assert float(jax.grad(physics.sinc3)(f64(x))) == pytest.approx(sinc3_slope(x), rel=1e-9)


@pytest.mark.parametrize("shape", ["round", "gauss"])
def test_round_and_gauss_shapes_at_peak_and_generic(shape):
    recip = f64(np.diag([1 / 30.0, 1 / 35.0, 1 / 40.0]))
    fudge = f64(1.0)

    def f(hkl, n):
        return physics.lattice_factor(hkl, n, shape, fudge, recip)[0]

    n = f64([5.0, 6.2, 7.0])
    g_hkl, g_n = jax.grad(f, argnums=(0, 1))(f64([2.0, -1.0, 0.0]), n)
    assert np.all(np.asarray(g_hkl) == 0.0)
    assert np.all(np.isfinite(np.asarray(g_n)))
    # At a peak F = V (Gaussian) or V × 0.7236 (round): ∂F/∂N_i = F / N_i.
    np.testing.assert_allclose(
        np.asarray(g_n), float(f(f64([2.0, -1.0, 0.0]), n)) / np.asarray(n), rtol=1e-12
    )
    x = f64([2.07, -1.03, 0.05])
    g_hkl, g_n = jax.grad(f, argnums=(0, 1))(x, n)
    eps = 1e-6
    for i in range(3):
        e = jnp.zeros(3).at[i].set(eps)
        fd = (f(x + e, n) - f(x - e, n)) / (2 * eps)
        assert float(g_hkl[i]) == pytest.approx(float(fd), rel=1e-6)
        fd = (f(x, n + e) - f(x, n - e)) / (2 * eps)
        assert float(g_n[i]) == pytest.approx(float(fd), rel=1e-6)


def test_rotation_vector_matrix_at_zero_and_across_its_branch():
    jac = jax.jacfwd(rotation_vector_matrix)(f64([0.0, 0.0, 0.0]))
    generators = np.array(
        [
            [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
            [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
            [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(np.moveaxis(np.asarray(jac), -1, 0), generators)
    rev = jax.jacrev(rotation_vector_matrix)(f64([0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(np.asarray(rev), np.asarray(jac))
    # θ² = 1e-12 switches to the series: both sides must give the same derivative as FD.
    axis = np.array([0.48, -0.6, 0.64])
    jacobian = jax.jit(jax.jacfwd(rotation_vector_matrix))
    matrix = jax.jit(rotation_vector_matrix)
    for theta in (0.999e-6, 1.001e-6, 0.3):
        v = f64(axis * theta)
        jac = np.asarray(jacobian(v))
        eps = 1e-7 if theta > 1e-3 else 1e-9
        for i in range(3):
            e = np.zeros(3)
            e[i] = eps
            fd = (matrix(v + e) - matrix(v - e)) / (2 * eps)
            np.testing.assert_allclose(jac[..., i], np.asarray(fd), atol=1e-7)


def test_safe_unit_and_polarization_are_finite_along_the_beam():
    g = jax.jacfwd(safe_unit)(f64([0.0, 0.0, 0.0]))
    assert np.all(np.isfinite(np.asarray(g)))
    incident = f64([1.0, 0.0, 0.0])
    axis = f64([0.0, 0.0, 1.0])

    def pol(diffracted, kahn):
        return polarization_factor(kahn, incident, safe_unit(diffracted), axis)

    value, grads = jax.value_and_grad(pol, argnums=(0, 1))(incident, f64(0.9))
    assert float(value) == pytest.approx(1.0, rel=1e-15)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_tricubic_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    grid = f64(rng.uniform(10.0, 100.0, (8, 8, 8)))
    lo = (-4, -4, -4)
    x = f64([0.3, -1.2, 1.0])  # l on a node: where the interpolant's pieces meet
    f = jax.jit(lambda h, table: physics.tricubic_F(h, table, lo))
    g_x, g_grid = jax.jit(jax.grad(f, argnums=(0, 1)))(x, grid)
    assert np.all(np.isfinite(np.asarray(g_x))) and np.all(np.isfinite(np.asarray(g_grid)))
    eps = 1e-6
    for i in range(2):
        e = jnp.zeros(3).at[i].set(eps)
        fd = (f(x + e, grid) - f(x - e, grid)) / (2 * eps)
        assert float(g_x[i]) == pytest.approx(float(fd), rel=1e-6)
    # Linear in the table: the gradient with respect to F is the interpolation weights.
    u = f64(rng.normal(size=grid.shape))
    assert float(jnp.sum(g_grid * u)) == pytest.approx(float(f(x, u)), rel=1e-12)


def test_misorientation_gradient_is_finite_at_equal_rotations():
    r = f64([1e-3, -2e-3, 0.5e-3])
    value, grad = jax.value_and_grad(lambda a: misorientation(a, r))(r)
    assert float(value) == 0.0
    assert np.all(np.isfinite(np.asarray(grad)))
    angle = float(misorientation(f64([0.0, 0.0, 0.01]), f64([0.0, 0.0, 0.0])))
    assert angle == pytest.approx(0.01, rel=1e-12)
