"""The command-line tools keep whole compiled programs between processes: a repeated command
compiles nothing, gives the same image, and survives a damaged or foreign cache entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FLAGS = (
    "-cell 100 100 100 90 90 90 -default_F 100 -N 5 -lambda 6.2 -distance 100 -detpixels 64 "
    "-nonoise -nopgm -floatfile out.bin -intfile out.img"
).split()


def _jaxdiff(cwd, **env):
    res = subprocess.run(
        [sys.executable, "-m", "jaxdiff.cli", *FLAGS],
        cwd=cwd,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res


def _run(cwd, cache, devices=1):
    res = _jaxdiff(
        cwd,
        JAXDIFF_CACHE_DIR=str(cache),
        JAX_LOG_COMPILES="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    compiles = [line for line in res.stderr.splitlines() if "Compiling " in line]
    return np.fromfile(cwd / "out.bin", "<f4"), compiles


@pytest.mark.parametrize("devices", [1, 4])
def test_second_run_compiles_nothing_and_renders_the_same(tmp_path, devices):
    """Also with several (virtual) devices, where a loaded program still runs on one."""
    cache = tmp_path / "cache"
    first, compiled = _run(tmp_path, cache, devices)
    assert compiled, "the first run compiles"
    programs = sorted((cache / "programs").glob("*.bin"))
    assert {p.name.split("-")[0] for p in programs} >= {"simulate", "cell_vectors"}
    again, compiled = _run(tmp_path, cache, devices)
    assert compiled == []
    np.testing.assert_array_equal(again, first)
    assert first.max() > 0.0

    # a damaged entry is compiled again and replaced
    for p in programs:
        p.write_bytes(b"not a program")
    third, compiled = _run(tmp_path, cache, devices)
    assert compiled
    np.testing.assert_array_equal(third, first)
    assert all(p.stat().st_size > 100 for p in programs)


def test_cache_off_writes_no_programs(tmp_path):
    _jaxdiff(tmp_path, JAXDIFF_CACHE_DIR="off", HOME=str(tmp_path))
    assert not (tmp_path / ".cache").exists()
    assert np.fromfile(tmp_path / "out.bin", "<f4").max() > 0.0


MIXED = """
import sys, jax
jax.config.update("jax_enable_x64", True)
from jaxdiff import aot, build, simulate
flags = sys.argv[1].split()
aot.enable()
setup = build(flags)
image = simulate(setup.experiment, setup.config)  # a plain call first
if sys.argv[2] == "both":
    image = aot.call("simulate", simulate, {"cfg": setup.config}, setup.experiment)
print(float(image.sum()))
"""


def test_programs_stay_whole_beside_plain_calls(tmp_path):
    """A plain jit call, compiled or read from JAX's own cache, must not leave a program on
    disk that lacks its kernels: the next process loads and runs what was kept."""
    flags = " ".join(FLAGS[:19])
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(tmp_path / "cache"))
    sums = []
    # 1: the plain call fills JAX's cache; 2: it is read from there, then the program kept;
    # 3: the kept program runs
    for mode in ("plain", "both", "both"):
        res = subprocess.run(
            [sys.executable, "-c", MIXED, flags, mode],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        sums.append(float(res.stdout.split()[-1]))
    assert sums[0] > 0.0 and sums.count(sums[0]) == 3
    assert any((tmp_path / "cache" / "programs").glob("simulate-*.bin"))


def test_in_process_command_keeps_programs_in_the_test_run_and_then_turns_off(tmp_path):
    """The suite's programs go to its own folder (never ~/.cache/jaxdiff), and after a command
    run in-process the caches are off again for the next test."""
    import jax

    from jaxdiff import aot
    from jaxdiff.cli import main

    cache = Path(os.environ["JAXDIFF_CACHE_DIR"])
    assert Path.home() / ".cache" / "jaxdiff" != cache
    before = jax.config.jax_compilation_cache_dir
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(FLAGS) == 0
    finally:
        os.chdir(previous)
    assert jax.config.jax_compilation_cache_dir == str(cache / "xla")
    assert any((cache / "programs").glob("simulate-*.bin"))
    aot.disable()
    assert jax.config.jax_compilation_cache_dir == before
