"""jaxdiff-batch across processes (jax.distributed on this machine's loopback): two processes
write the same stack, bit for bit, as one, and h5py reads it as one stack."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from jaxdiff.io.hdf5 import read_hdf5

FLAGS = (
    "-cell 70 80 90 85 95 105 -default_F 100 -N 4 -lambda 1 -distance 100 -detpixels 24 "
    "--random-orientations 5 --seed 3"
).split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(args: list[str], cwd) -> subprocess.Popen:
    # one program cache for all processes: a process other than 0 loads kept programs too
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(cwd / "cache"))
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "jaxdiff.batch", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_two_processes_write_the_stack_of_one(tmp_path):
    _wait(_batch(FLAGS + ["--hdf5", "one.h5"], tmp_path))
    port = _free_port()
    procs = [
        _batch(
            FLAGS
            + ["--hdf5", "two.h5", "--coordinator", f"127.0.0.1:{port}"]
            + ["--num-processes", "2", "--process-id", str(i)],
            tmp_path,
        )
        for i in range(2)
    ]
    outs = [_wait(p) for p in procs]
    assert "wrote two.h5" in outs[0] and "wrote two.h5" not in outs[1]
    parts = sorted(p.name for p in tmp_path.glob("two.part*.h5"))
    assert parts == ["two.part0001-of-0002.h5", "two.part0002-of-0002.h5"]
    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "two.h5") as two:
        assert two["entry/data/data"].is_virtual
        a, b = one["entry/data/data"][()], two["entry/data/data"][()]
        assert a.shape == b.shape == (5, 24, 24) and a.max() > 0
        assert a.tobytes() == b.tobytes()
        with h5py.File(tmp_path / "two.part0002-of-0002.h5") as second:
            assert second["entry/data/data"].shape[0] == 3  # images 2..4 of 0..4
    images, experiments, _ = read_hdf5(tmp_path / "two.h5")
    ref_images, ref_experiments, _ = read_hdf5(tmp_path / "one.h5")
    np.testing.assert_array_equal(images, ref_images)
    for got, want in zip(experiments, ref_experiments, strict=True):
        np.testing.assert_array_equal(got.crystal.rotation, want.crystal.rotation)


def test_the_joined_stack_moves_with_its_parts(tmp_path):
    port = _free_port()
    args = FLAGS + ["--hdf5", "run/s.h5", "--coordinator", f"127.0.0.1:{port}"]
    (tmp_path / "run").mkdir()
    procs = [
        _batch(args + ["--num-processes", "2", "--process-id", str(i)], tmp_path) for i in (0, 1)
    ]
    for p in procs:
        _wait(p)
    (tmp_path / "run").rename(tmp_path / "moved")
    with h5py.File(tmp_path / "moved" / "s.h5") as f:
        assert f["entry/data/data"][()].max() > 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--coordinator", "127.0.0.1:1"], "go together"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "between"),
    ],
)
def test_bad_process_flags(extra, needle, tmp_path):
    proc = _batch(FLAGS + ["--hdf5", "x.h5", *extra], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and needle in err
    assert not (tmp_path / "x.h5").exists()
