"""The crystal: unit cell, orientation (misset, A matrix, small extra rotation), φ rotation,
mosaic domains, and crystal size.

Real-space vectors are in metres and reciprocal vectors in 1/Å, as in nanoBragg. The cell is
built the way nanoBragg builds it (default reciprocal frame from the cell constants, misset,
real vectors from reciprocal cross products), and the reciprocal vectors are then recomputed from
the real ones with the cell volume V: a* = (b×c)/V. For an A matrix V = 1/(a*·(b*×c*)), which is
a·(b×c); for cell constants V is the volume of the constants, as the C program uses it (the
Gaussian and top-hat spot shapes depend on this, at the 1e-5 level, and the golden images
follow it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxdiff.deviates import Ran1
from jaxdiff.rotation import axis_angle_matrix, rotate_axis, rotate_xyz, rotation_vector_matrix

DEFINITIONS = ("cell", "a_matrix")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Crystal:
    """Differentiable crystal parameters.

    Attributes:
        cell: (6,) a, b, c [Å] and α, β, γ [rad]; used when ``recip0`` holds NaN.
        recip0: (3, 3) rows a*, b*, c* [1/Å] from a MOSFLM A matrix (wavelength removed), or NaN
            when the cell constants define the crystal.
        misset: (3,) rotations about x, y, z [rad] applied to the reciprocal frame.
        rotation: (3,) extra rotation vector [rad] applied after the misset (zero = none).
        ncells: (3,) Na, Nb, Nc (floats so that they can be fitted).
        mosaic_spread: mosaic spread [rad].
        mosaic_axes: (M, 3) unit rotation axes of the mosaic domains (domain 0 is unrotated).
        mosaic_scale: (M,) each domain's rotation as a fraction of the spread.
        spindle: (3,) unit φ rotation axis.
        phi0: first φ [rad].
        phistep: φ step [rad].
        fudge: shape-transform width factor (-fudge).
        defined_by: "cell" when the cell constants define the crystal, "a_matrix" when
            ``recip0`` does (static; it selects which of the two is read).

    Build one with :meth:`from_cell`, :meth:`from_a_matrix` or :meth:`from_real_space_vectors`.
    """

    cell: Array
    recip0: Array
    misset: Array
    rotation: Array
    ncells: Array
    mosaic_spread: Array
    mosaic_axes: Array
    mosaic_scale: Array
    spindle: Array
    phi0: Array
    phistep: Array
    fudge: Array
    defined_by: str = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        if self.defined_by not in DEFINITIONS:
            raise ValueError(f"defined_by must be one of {DEFINITIONS}, not {self.defined_by!r}")

    @classmethod
    def from_cell(cls, cell: Sequence[float], **kwargs) -> Crystal:
        """A crystal from cell constants a, b, c [Å], α, β, γ [rad], in nanoBragg's default
        orientation (a* along x, b* in the xy plane) turned by ``misset``.

        Keyword arguments (shared by every constructor): ``misset`` x, y, z rotations [rad];
        ``ncells`` Na, Nb, Nc; ``mosaic_spread`` [rad] over ``mosaic_domains`` domains drawn
        with ``mosaic_seed`` (nanoBragg's generator); ``rotation_axis`` the unit φ axis,
        ``phi0`` and ``phistep`` [rad]; ``fudge`` the shape-transform width factor.
        """
        return cls._build(np.asarray(cell, dtype=float), np.full((3, 3), np.nan), "cell", kwargs)

    @classmethod
    def from_a_matrix(cls, a_matrix: Sequence[Sequence[float]], **kwargs) -> Crystal:
        """A crystal from dxtbx's A = U·B: columns a*, b*, c* [1/Å] (no wavelength in it).

        A MOSFLM matrix file holds A·λ [Å]: divide by the wavelength in Å first. Keyword
        arguments as for :meth:`from_cell`.
        """
        recip0 = np.asarray(a_matrix, dtype=float).T
        return cls._build(np.zeros(6), recip0, "a_matrix", kwargs)

    @classmethod
    def from_real_space_vectors(
        cls,
        real_space_a: Sequence[float],
        real_space_b: Sequence[float],
        real_space_c: Sequence[float],
        **kwargs,
    ) -> Crystal:
        """A crystal from its real-space cell vectors a, b, c [Å] (dxtbx's ``real_space_a``…).

        Keyword arguments as for :meth:`from_cell`.
        """
        real = np.stack(
            [np.asarray(v, dtype=float) for v in (real_space_a, real_space_b, real_space_c)]
        )
        return cls.from_a_matrix(np.linalg.inv(real), **kwargs)

    @classmethod
    def _build(cls, cell, recip0, defined_by, kw) -> Crystal:
        unknown = sorted(set(kw) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        get = {**_DEFAULTS, **kw}
        axes, scale = mosaic_domain_draws(int(get["mosaic_domains"]), int(get["mosaic_seed"]))
        return cls(
            cell=cell,
            recip0=recip0,
            misset=np.asarray(get["misset"], dtype=float),
            rotation=np.zeros(3),
            ncells=np.asarray(get["ncells"], dtype=float),
            mosaic_spread=np.asarray(float(get["mosaic_spread"])),
            mosaic_axes=axes,
            mosaic_scale=scale,
            spindle=_unit_np(get["rotation_axis"]),
            phi0=np.asarray(float(get["phi0"])),
            phistep=np.asarray(float(get["phistep"])),
            fudge=np.asarray(float(get["fudge"])),
            defined_by=defined_by,
        )


_DEFAULTS = dict(
    misset=(0.0, 0.0, 0.0),
    ncells=(1.0, 1.0, 1.0),
    mosaic_spread=0.0,
    mosaic_domains=1,
    mosaic_seed=-12345678,
    rotation_axis=(1.0, 0.0, 0.0),
    phi0=0.0,
    phistep=0.0,
    fudge=1.0,
)


def _unit_np(v) -> np.ndarray:
    """``v`` / |v| (zero stays zero), with |v| formed as nanoBragg's ``unitize`` forms it."""
    v = np.asarray(v, dtype=float)
    mag = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return v / mag if mag != 0.0 else np.zeros(3)


def _norm(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _rescale(v: Array, mag: Array) -> Array:
    old = _norm(v)
    return v * (mag / jnp.where(old <= 0.0, 1.0, old))


def default_reciprocal_frame(cell: Array) -> tuple[Array, Array, Array, Array]:
    """a*, b*, c* [1/Å] in nanoBragg's default orientation, and V_cell [Å³] from the constants."""
    a, b, c, alpha, beta, gamma = (cell[i] for i in range(6))
    aavg = (alpha + beta + gamma) / 2.0
    skew = jnp.abs(
        jnp.sin(aavg) * jnp.sin(aavg - alpha) * jnp.sin(aavg - beta) * jnp.sin(aavg - gamma)
    )
    v_cell = 2.0 * a * b * c * jnp.sqrt(skew)
    v_star = 1.0 / v_cell
    a_star_len = b * c * jnp.sin(alpha) * v_star
    b_star_len = c * a * jnp.sin(beta) * v_star
    c_star_len = a * b * jnp.sin(gamma) * v_star
    sin_gamma_star = c * v_star / a_star_len / b_star_len
    cos_alpha_star = (jnp.cos(beta) * jnp.cos(gamma) - jnp.cos(alpha)) / (
        jnp.sin(beta) * jnp.sin(gamma)
    )
    cos_beta_star = (jnp.cos(gamma) * jnp.cos(alpha) - jnp.cos(beta)) / (
        jnp.sin(gamma) * jnp.sin(alpha)
    )
    cos_gamma_star = (jnp.cos(alpha) * jnp.cos(beta) - jnp.cos(gamma)) / (
        jnp.sin(alpha) * jnp.sin(beta)
    )
    sin_gamma_star = jnp.minimum(sin_gamma_star, 1.0)
    zero = jnp.zeros_like(a)
    a_star = jnp.stack([a_star_len, zero, zero])
    b_star = jnp.stack([b_star_len * cos_gamma_star, b_star_len * sin_gamma_star, zero])
    c_star = jnp.stack(
        [
            c_star_len * cos_beta_star,
            c_star_len * (cos_alpha_star - cos_beta_star * cos_gamma_star) / sin_gamma_star,
            c_star_len * v_cell / (a * b * c * sin_gamma_star),
        ]
    )
    return a_star, b_star, c_star, v_cell


def cell_vectors(crystal: Crystal, from_cell: bool | None = None) -> tuple[Array, Array]:
    """Unrotated (φ = 0, no mosaic) real vectors [m] and reciprocal vectors [1/Å].

    Returns ``(real, recip)``, each (3, 3) with rows a, b, c and a*, b*, c*. ``from_cell`` is
    static: True when the cell constants define the crystal, False for an A matrix; it
    defaults to the crystal's own.
    """
    if from_cell is None:
        from_cell = crystal.defined_by == "cell"
    if from_cell:
        a_star, b_star, c_star, v_formula = default_reciprocal_frame(crystal.cell)
    else:
        a_star, b_star, c_star = crystal.recip0[0], crystal.recip0[1], crystal.recip0[2]
    rx, ry, rz = crystal.misset[0], crystal.misset[1], crystal.misset[2]
    recip = rotate_xyz(jnp.stack([a_star, b_star, c_star]), rx, ry, rz)
    recip = recip @ rotation_vector_matrix(crystal.rotation).T
    a_star, b_star, c_star = recip[0], recip[1], recip[2]
    bxc = jnp.cross(b_star, c_star)
    cxa = jnp.cross(c_star, a_star)
    axb = jnp.cross(a_star, b_star)
    if from_cell:
        # nanoBragg keeps the user's cell lengths exactly: force |b*×c*| = a/V, etc.
        bxc = _rescale(bxc, crystal.cell[0] / v_formula)
        cxa = _rescale(cxa, crystal.cell[1] / v_formula)
        axb = _rescale(axb, crystal.cell[2] / v_formula)
        v_cell = v_formula
    else:
        v_cell = 1.0 / jnp.dot(a_star, bxc)
    real = jnp.stack([bxc, cxa, axb]) * v_cell
    a, b, c = real[0], real[1], real[2]
    recip = jnp.stack([jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)]) / v_cell
    return real * 1e-10, recip


def phi_angles(crystal: Crystal, phisteps: int) -> Array:
    """φ of each step [rad]: phi0 + phistep·i."""
    return crystal.phi0 + crystal.phistep * jnp.arange(phisteps, dtype=crystal.phistep.dtype)


def phi_orientations(real0: Array, spindle: Array, phis: Array, carry0: Array, carryover: bool):
    """Rotated real vectors for each φ step, as a scan whose carry is the working orientation.

    nanoBragg's φ loop rotates ``a0, b0, c0`` only when φ ≠ 0; with ``carryover`` (c-parity) a
    step at φ = 0 reuses the carry (the orientation left by the previous rotation), otherwise it
    uses the unrotated cell. Returns ``(final_carry, rotated)`` with ``rotated`` (phisteps, 3, 3).
    """

    def step(carry, phi):
        rotated = rotate_axis(real0, spindle, phi)
        if carryover:
            rotated = jnp.where(phi != 0.0, rotated, carry)
        return rotated, rotated

    return jax.lax.scan(step, carry0, phis)


def mosaic_matrices(crystal: Crystal) -> Array:
    """(M, 3, 3) domain rotations; the angles are rounded to float32 as nanoBragg rounds them.

    The rounding is applied as a value-only correction, so the gradient with respect to the
    spread is that of the unrounded angle.
    """
    angle = crystal.mosaic_spread * crystal.mosaic_scale
    rounded = jax.lax.stop_gradient(
        (
            crystal.mosaic_spread.astype(jnp.float32) * crystal.mosaic_scale.astype(jnp.float32)
        ).astype(angle.dtype)
    )
    angle = angle + jax.lax.stop_gradient(rounded - angle)
    mats = axis_angle_matrix(crystal.mosaic_axes, angle)
    return mats.at[0].set(jnp.eye(3, dtype=mats.dtype))


def mosaic_domain_draws(domains: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Axes (M, 3) and spread fractions (M,) of nanoBragg's mosaic domains for ``seed``.

    Reproduces ``mosaic_rotation_umat``'s draws: three float32 uniforms per domain, the axis
    from two of them and the angle fraction (1 - r3²)^(1/3) rounded to float32.
    ``seed`` is the C variable's value (``-mosaic_seed N`` gives ``-N``).
    """
    rng = Ran1(seed)
    axes = np.zeros((domains, 3))
    scale = np.zeros(domains)
    for i in range(domains):
        r1 = 2.0 * float(rng()) - 1.0
        r2 = 2.0 * float(rng()) - 1.0
        r3 = 2.0 * float(rng()) - 1.0
        xyrad = math.sqrt(1.0 - r2 * r2)
        axes[i] = (xyrad * math.sin(math.pi * r1), xyrad * math.cos(math.pi * r1), r2)
        scale[i] = float(np.power(np.float32(1.0 - r3 * r3), np.float32(1.0 / 3.0)))
    return axes, scale


def random_misset(seed: int) -> np.ndarray:
    """Misset angles [rad] of ``-misset random``: a full-sphere random rotation for ``seed``."""
    axes, scale = mosaic_domain_draws(1, seed)
    angle = float(np.float32(np.float32(90.0) * np.float32(scale[0])))
    u = np.asarray(axis_angle_matrix(jnp.asarray(axes[0]), jnp.asarray(angle)))
    return umat_to_misset(u)


def umat_to_misset(u: np.ndarray) -> np.ndarray:
    """x, y, z rotation angles [rad] of an orthonormal matrix (nanoBragg ``umat2misset``)."""
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    if u[2, 0] ** 2 < 1.0:
        return np.array(
            [
                math.atan2(u[2, 1], u[2, 2]),
                math.atan2(-u[2, 0], math.sqrt(u[2, 1] ** 2 + u[2, 2] ** 2)),
                math.atan2(u[1, 0], u[0, 0]),
            ]
        )
    return np.array([math.pi, math.pi / 2, math.atan2(u[0, 1], -u[1, 1])])


def cells_from_size(real0_m: np.ndarray, size_m: np.ndarray, ncells: np.ndarray) -> np.ndarray:
    """Na, Nb, Nc for a crystal size [m] per axis (0 = use ``ncells``), at least 1 each."""
    lengths = np.linalg.norm(real0_m, axis=1)
    out = np.where(size_m > 0, np.ceil(size_m / lengths), ncells)
    return np.maximum(out, 1.0)
