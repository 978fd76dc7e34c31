"""Batch simulation across devices: the same images as one-by-one simulate(), sharded over
four virtual CPU devices, and streamed into one HDF5 stack by the jaxdiff-batch command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from jaxdiff.io.hdf5 import read_hdf5

SCRIPT = textwrap.dedent(
    """
    import dataclasses, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jaxdiff import build, simulate
    from jaxdiff.batch import simulate_batch, vary_crystal
    assert len(jax.devices()) == 4
    s = build("-cell 70 80 90 85 95 105 -default_F 100 -N 5 -lambda 1 -distance 100 "
              "-detpixels 32".split())
    rots = np.random.default_rng(0).normal(size=(6, 3)) * 0.05
    ncells = np.array([[5, 5, 5], [3, 4, 5], [6, 6, 2], [5, 5, 5], [2, 2, 2], [4, 4, 4]], float)
    images = simulate_batch(s.experiment, vary_crystal(s.experiment.crystal, rotation=rots,
                                                       ncells=ncells), s.config)
    assert images.shape == (6, 32, 32)
    for i in range(6):
        c = dataclasses.replace(s.experiment.crystal, rotation=jnp.asarray(rots[i]),
                                ncells=jnp.asarray(ncells[i]))
        one = simulate(dataclasses.replace(s.experiment, crystal=c), s.config)
        np.testing.assert_allclose(np.asarray(images[i]), np.asarray(one), rtol=1e-12)
    print("ok")
    """
)


def _env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")


def test_batch_matches_single_images_on_four_devices():
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=_env(), capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_batch_command_streams_a_stack(tmp_path):
    table = tmp_path / "crystals.txt"
    table.write_text("# rotation vector (deg)\n0 0 0\n1 0 0\n0 2 0\n0 0 3\n0.5 0.5 0.5\n")
    flags = "-cell 70 80 90 85 95 105 -default_F 100 -N 5 -lambda 1 -distance 100 -detpixels 24"
    cmd = [
        sys.executable,
        "-m",
        "jaxdiff.batch",
        *flags.split(),
        "--crystals",
        str(table),
        "--hdf5",
        str(tmp_path / "stack.h5"),
        "--batch-size",
        "4",
    ]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "5/5 images" in res.stderr
    images, experiments, config = read_hdf5(tmp_path / "stack.h5")
    assert images.shape == (5, 24, 24)
    np.testing.assert_allclose(
        np.degrees(np.asarray(experiments[2].crystal.rotation)), [0, 2, 0], atol=1e-12
    )
    assert not np.allclose(images[0], images[1])


def test_batch_command_rejects_a_bad_table(tmp_path):
    table = tmp_path / "bad.txt"
    table.write_text("0 0 0\n1 2\n")
    cmd = [
        sys.executable,
        "-m",
        "jaxdiff.batch",
        "-cell",
        "50",
        "50",
        "50",
        "90",
        "90",
        "90",
        "-default_F",
        "1",
        "-detpixels",
        "8",
        "--crystals",
        str(table),
        "--hdf5",
        str(tmp_path / "out.h5"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert "bad.txt line 2" in res.stderr
    assert not (tmp_path / "out.h5").exists()
