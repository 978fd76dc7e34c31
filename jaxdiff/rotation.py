"""Rotations: nanoBragg's x-then-y-then-z rotation, rotation about an axis, rotation vectors.

All functions work on the last axis of their inputs and broadcast over the rest, so the same
code serves one vector, a stack of vectors, and traced values under jit/vmap/grad.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def rotate_xyz(v: Array, rotx: Array, roty: Array, rotz: Array) -> Array:
    """Rotate ``v`` about x, then y, then z (right-handed, radians); nanoBragg ``rotate``."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    cx, sx = jnp.cos(rotx), jnp.sin(rotx)
    y, z = y * cx - z * sx, y * sx + z * cx
    cy, sy = jnp.cos(roty), jnp.sin(roty)
    x, z = x * cy + z * sy, -x * sy + z * cy
    cz, sz = jnp.cos(rotz), jnp.sin(rotz)
    x, y = x * cz - y * sz, x * sz + y * cz
    return jnp.stack([x, y, z], axis=-1)


def rotate_axis(v: Array, axis: Array, angle: Array) -> Array:
    """Rotate ``v`` by ``angle`` (radians) about the unit vector ``axis`` (Rodrigues).

    Mirrors nanoBragg ``rotate_axis``; ``angle`` broadcasts against the leading axes of ``v``.
    """
    angle = jnp.asarray(angle)[..., None]
    c, s = jnp.cos(angle), jnp.sin(angle)
    dot = jnp.sum(axis * v, axis=-1, keepdims=True) * (1.0 - c)
    return axis * dot + v * c + jnp.cross(axis, v) * s


def axis_angle_matrix(axis: Array, angle: Array) -> Array:
    """Rotation matrix for ``angle`` (radians) about unit ``axis``; the mosaic-domain form."""
    v1, v2, v3 = axis[..., 0], axis[..., 1], axis[..., 2]
    t1 = jnp.cos(angle)
    t2 = 1.0 - t1
    t8 = jnp.sin(angle)
    rows = [
        [t1 + t2 * v1 * v1, t2 * v1 * v2 - t8 * v3, t2 * v1 * v3 + t8 * v2],
        [t2 * v1 * v2 + t8 * v3, t1 + t2 * v2 * v2, t2 * v2 * v3 - t8 * v1],
        [t2 * v1 * v3 - t8 * v2, t2 * v2 * v3 + t8 * v1, t1 + t2 * v3 * v3],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def rotation_vector_matrix(rotvec: Array) -> Array:
    """Rotation matrix of a rotation vector (axis × angle, radians), exact and smooth at zero.

    Uses sin(θ)/θ and (1-cos θ)/θ² written with a safe θ so that value, gradient and
    higher derivatives are finite at θ = 0 (where the matrix is the identity).
    """
    theta_sq = jnp.sum(rotvec * rotvec, axis=-1)
    small = theta_sq < 1e-12
    safe_sq = jnp.where(small, 1.0, theta_sq)
    theta = jnp.sqrt(safe_sq)
    a = jnp.where(small, 1.0 - theta_sq / 6.0, jnp.sin(theta) / theta)
    b = jnp.where(small, 0.5 - theta_sq / 24.0, (1.0 - jnp.cos(theta)) / safe_sq)
    x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
    zero = jnp.zeros_like(x)
    k = jnp.stack(
        [
            jnp.stack([zero, -z, y], axis=-1),
            jnp.stack([z, zero, -x], axis=-1),
            jnp.stack([-y, x, zero], axis=-1),
        ],
        axis=-2,
    )
    eye = jnp.eye(3, dtype=rotvec.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)
