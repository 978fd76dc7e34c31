"""Gradient checks shared by the gradient tests: the image as a function of a dict of
parameters, with its JVP, its weighted gradient and finite differences along a direction."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from conftest import INPUTS

from jaxdiff.experiment import build
from jaxdiff.simulate import simulate


def get(obj, path):
    for name in path:
        obj = getattr(obj, name)
    return obj


def put(obj, path, value):
    if not path:
        return value
    return dataclasses.replace(obj, **{path[0]: put(getattr(obj, path[0]), path[1:], value)})


def with_params(exp, params: dict):
    for path, value in params.items():
        exp = put(exp, path, value)
    return exp


def make_setup(args: str, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("grad")
    (cwd / "inputs").symlink_to(INPUTS)
    return build(args.split(), cwd)


class Checker:
    """The image as a function of a dict of parameters, with jitted JVP and weighted gradient."""

    def __init__(self, exp, cfg, paths):
        self.exp, self.cfg = exp, cfg
        # Strongly typed copies: a perturbed (strong) value must not retrace the functions.
        self.params = {p: jnp.asarray(get(exp, p), dtype=jnp.float64) for p in paths}

        def image(params):
            return simulate(with_params(self.exp, params), self.cfg)

        self.image = jax.jit(image)
        self.grad = jax.jit(jax.grad(lambda p, w: jnp.sum(w * image(p))))
        self.jvp = jax.jit(lambda p, t: jax.jvp(image, (p,), (t,))[1])

    def along(self, path, u, h, start=None):
        """Derivative images along ``u`` from ``start`` (default: the experiment's value):
        forward mode, and fourth-order central differences with steps h and 2h (where the two
        differ the image is not smooth on that scale)."""
        base = self.params if start is None else {**self.params, path: start}

        def at(t):
            return np.asarray(self.image({**base, path: base[path] + t * u}))

        f = {k: at(k * h) for k in (-4, -2, -1, 1, 2, 4)}
        fd_h = (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)
        fd_2h = (-f[4] + 8 * f[2] - 8 * f[-2] + f[-4]) / (24 * h)
        tangent = {p: jnp.zeros_like(v) for p, v in base.items()}
        fwd = np.asarray(self.jvp(base, {**tangent, path: u}))
        return fwd, fd_h, fd_2h

    def reverse(self, path, u, weights, start=None):
        """grad(Σ weights · image) · u at ``start`` (default: the experiment's value)."""
        base = self.params if start is None else {**self.params, path: start}
        return float(jnp.sum(self.grad(base, jnp.asarray(weights))[path] * u))
