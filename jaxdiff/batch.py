"""Many crystals, one detector and beam: ``simulate_batch`` vmaps :func:`simulate` over a
stack of crystals and shards the stack across all local devices (GPUs, or CPU devices made with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``); ``render_to_hdf5`` streams a long list
of crystals through it into one HDF5 stack, showing progress.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.cli import guarded
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal
from jaxdiff.simulate import Experiment, simulate


def stack_crystals(crystals: list[Crystal]) -> Crystal:
    """One Crystal whose leaves have a leading batch axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *crystals)


def vary_crystal(base: Crystal, **leaves: Array) -> Crystal:
    """``base`` repeated along a batch axis, with the given leaves (each (B, ...)) varying."""
    sizes = {np.shape(v)[0] for v in leaves.values()}
    if len(sizes) != 1:
        raise ValueError(f"varying leaves must share their batch size, got {sorted(sizes)}")
    (n,) = sizes
    tiled = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), base)
    return dataclasses.replace(tiled, **{k: jnp.asarray(v) for k, v in leaves.items()})


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batched(exp: Experiment, crystals: Crystal, cfg: SimConfig) -> Array:
    return jax.vmap(lambda c: simulate(dataclasses.replace(exp, crystal=c), cfg))(crystals)


def simulate_batch(exp: Experiment, crystals: Crystal, cfg: SimConfig) -> Array:
    """Images (B, slow, fast), or (B, panel, slow, fast) for a multi-panel detector, of B
    crystals (leaves with a leading axis B), sharded across the local devices along B. B should
    be a multiple of the device count (it is padded if not)."""
    n = jax.tree_util.tree_leaves(crystals)[0].shape[0]
    devices = jax.local_devices()
    pad = (-n) % len(devices)
    if pad:
        crystals = jax.tree_util.tree_map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), crystals
        )
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("batch",))
        crystals = jax.device_put(crystals, NamedSharding(mesh, P("batch")))
        exp = jax.device_put(exp, NamedSharding(mesh, P()))
    return _batched(exp, crystals, cfg)[:n]


def render_to_hdf5(
    path,
    exp: Experiment,
    crystals: Crystal,
    cfg: SimConfig,
    batch_size: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> None:
    """Render every crystal of ``crystals`` (leading axis B) into one HDF5 stack at ``path``.

    Work goes in batches of ``batch_size`` (default: one crystal per device); each batch is
    written as soon as it is done, and ``progress(done, total, seconds)`` is called after it.
    """
    from jaxdiff.io.hdf5 import StackWriter

    n = jax.tree_util.tree_leaves(crystals)[0].shape[0]
    size = batch_size or len(jax.local_devices())
    progress = progress or _print_progress
    start = time.perf_counter()
    with StackWriter(path, n, exp, cfg) as writer:
        for lo in range(0, n, size):
            part = jax.tree_util.tree_map(lambda x, lo=lo: x[lo : lo + size], crystals)
            images = np.asarray(simulate_batch(exp, part, cfg))
            writer.write(lo, images, part)
            progress(min(lo + size, n), n, time.perf_counter() - start)


def _print_progress(done: int, total: int, seconds: float) -> None:
    width = 30
    filled = int(width * done / total)
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    bar = "#" * filled + "-" * (width - filled)
    print(
        f"\r[{bar}] {done}/{total} images, {rate:.2f}/s, {eta:.0f} s left",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if done == total:
        print(file=sys.stderr)


def _read_crystal_table(path: str) -> np.ndarray:
    from jaxdiff.errors import InputError

    rows = []
    try:
        lines = open(path).read().splitlines()
    except OSError as err:
        raise InputError(f"--crystals {path}: {err.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"{path} line {number}: expected numbers, got {text!r}") from None
        if len(values) not in (3, 6):
            raise InputError(
                f"{path} line {number}: expected 3 columns (rotation vector, degrees) or 6 "
                f"(and Na Nb Nc), got {len(values)}"
            )
        rows.append(values + [np.nan] * (6 - len(values)))
    if not rows:
        raise InputError(f"{path}: no crystals")
    return np.array(rows)


def main(argv: list[str] | None = None) -> int:
    """``jaxdiff-batch``: render many orientations of one crystal into an HDF5 stack.

    nanoBragg flags describe the experiment; jaxdiff-batch's own options:
    ``--hdf5 OUT`` (required), ``--crystals FILE`` (rows: rotation vector in degrees applied
    after the misset, optionally followed by Na Nb Nc) or ``--random-orientations N``
    (``--seed S``, uniformly random rotations), ``--batch-size K``.
    """
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="jaxdiff-batch", add_help=True)
    parser.add_argument("--hdf5", required=True)
    parser.add_argument("--crystals")
    parser.add_argument("--random-orientations", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    ours, flags = parser.parse_known_args(argv)
    status, index = guarded(_run, ours, flags, program="jaxdiff-batch")
    if status == 0 and index == 0:
        print(f"wrote {ours.hdf5}")
    return status


def _run(ours, flags) -> int:
    """Render the stack the parsed options describe; returns this process's index."""
    from jaxdiff import aot
    from jaxdiff.errors import InputError
    from jaxdiff.experiment import build

    index, count = start_processes(ours.coordinator, ours.num_processes, ours.process_id)
    jax.config.update("jax_enable_x64", True)
    aot.enable()  # the jaxdiff command's cache: a repeated batch does not recompile
    if (ours.crystals is None) == (ours.random_orientations is None):
        raise InputError("give one of --crystals FILE or --random-orientations N")
    setup = build(flags)
    base = setup.experiment.crystal
    if ours.crystals:
        table = _read_crystal_table(ours.crystals)
        leaves = {"rotation": np.radians(table[:, :3])}
        if not np.isnan(table[:, 3:]).any():
            leaves["ncells"] = table[:, 3:]
    else:
        if ours.random_orientations <= 0:
            raise InputError("--random-orientations: must be positive")
        leaves = {"rotation": random_rotation_vectors(ours.random_orientations, ours.seed)}
    crystals = vary_crystal(base, **leaves)
    if os.path.dirname(ours.hdf5) and not os.path.isdir(os.path.dirname(ours.hdf5)):
        raise InputError(f"--hdf5 {ours.hdf5}: no such directory")
    if count == 1:
        render_to_hdf5(ours.hdf5, setup.experiment, crystals, setup.config, ours.batch_size)
    else:
        render_share(ours.hdf5, setup.experiment, crystals, setup.config, ours.batch_size)
    return index


def start_processes(coordinator: str | None, num_processes: int | None, process_id: int | None):
    """Join a multi-process run through ``jax.distributed`` when one is asked for (the flags,
    or the environment that ``jax.distributed.initialize`` reads, e.g. under SLURM); returns
    ``(process index, process count)``."""
    from jaxdiff.errors import InputError

    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise InputError("--coordinator, --num-processes and --process-id go together")
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise InputError(
                f"--process-id {process_id} must be between 0 and --num-processes - 1 "
                f"({num_processes} processes)"
            )
        if num_processes > 1:
            jax.distributed.initialize(coordinator, num_processes, process_id)
    elif "JAX_COORDINATOR_ADDRESS" in os.environ or "SLURM_JOB_ID" in os.environ:
        jax.distributed.initialize()
    return jax.process_index(), jax.process_count()


def part_path(path: str, index: int, count: int) -> str:
    """The file that process ``index`` of ``count`` writes its share of the stack to."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.part{index + 1:04d}-of-{count:04d}{ext or '.h5'}"


def render_share(path, exp, crystals, cfg, batch_size=None) -> None:
    """This process's consecutive share of ``crystals`` into its part file; process 0 then
    joins every part into ``path`` (one stack through virtual datasets)."""
    from jax.experimental import multihost_utils

    from jaxdiff.io.join import join_stacks

    index, count = jax.process_index(), jax.process_count()
    n = jax.tree_util.tree_leaves(crystals)[0].shape[0]
    lo, hi = n * index // count, n * (index + 1) // count
    share = jax.tree_util.tree_map(lambda x: x[lo:hi], crystals)
    if hi > lo:
        render_to_hdf5(part_path(path, index, count), exp, share, cfg, batch_size)
    multihost_utils.sync_global_devices("jaxdiff-batch: parts written")
    if index == 0:
        parts = [part_path(path, i, count) for i in range(count)]
        join_stacks(path, [p for i, p in enumerate(parts) if n * (i + 1) // count > n * i // count])
    multihost_utils.sync_global_devices("jaxdiff-batch: stack joined")


def random_rotation_vectors(n: int, seed: int) -> np.ndarray:
    """``n`` rotation vectors [rad] of uniformly random rotations (unit-quaternion sampling)."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, :1] + (q[:, :1] == 0))
    angle = 2.0 * np.arccos(np.clip(q[:, 0], -1.0, 1.0))
    s = np.sqrt(np.maximum(1.0 - q[:, 0] ** 2, 1e-300))
    return q[:, 1:] / s[:, None] * angle[:, None]


if __name__ == "__main__":
    sys.exit(main())
