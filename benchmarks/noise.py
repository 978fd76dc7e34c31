"""Cost of the Poisson noise image (target: a whole jaxdiff run with noise ≤ 1.25× without).

Measures, in one run on the same machine state:

* the whole-process ``jaxdiff`` command at 2048² (``CASE``) with ``-noisefile`` and with
  ``-nonoise``, interleaved, after one warm-up that fills jaxdiff's persistent compilation
  cache; medians of ``--repeats`` of the wall time and of the process's CPU time (user +
  system, steadier than wall time on a shared machine);
* ``noise_image`` in process on that run's float image, and on a 2463 × 2527 (Pilatus 6M)
  frame made by repeating it (``np.resize``) and on one of the same size whose every pixel
  takes poidev's rejection branch (means 12 to 10⁴, the slowest case);
* the pure-Python reference (``noise_image_reference``) on a 256 × 2048 band of the image,
  per pixel, for the speed-up;
* with ``--check N``, bit-identity of the compiled noise against the reference on N pixels
  of mixed means (every branch of poidev, non-finite and negative values, an ROI).

Prints the figures and writes them as JSON (``--output``, default benchmarks/noise.json);
:func:`measure` returns the same dict.

    python benchmarks/noise.py [--repeats 3] [--check 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxdiff.deviates import Deviates
from jaxdiff.io import noise_image, noise_image_reference, poisson_deviates, read_float_image

HERE = Path(__file__).resolve().parent
CASE = (
    "-cell 70 80 90 85 95 105 -default_F 100 -N 5 -lambda 1 -distance 100 -pixel 0.1 "
    "-detpixels 2048 -seed 1"
).split()
PILATUS = (2527, 2463)  # (slow, fast)
TARGET = 1.25


def _jaxdiff() -> str:
    """The jaxdiff command of this Python environment."""
    found = shutil.which("jaxdiff", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("the jaxdiff command is not installed in this environment")
    return found


def _cli_seconds(work: Path, cache: Path, flags: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one whole jaxdiff process in ``work``."""
    cmd = [_jaxdiff(), *CASE, "-floatfile", "float.bin", "-intfile", "int.img", *flags]
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(cache))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _median_seconds(repeats: int, fn) -> float:
    """Median wall time [s] of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mixed_means(rng: np.random.Generator, n: int) -> np.ndarray:
    """n means over every branch of poidev, with zeros and non-finite/negative values."""
    kind = rng.integers(0, 5, n)
    means = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [rng.uniform(0, 12, n), rng.uniform(12, 3e4, n), rng.uniform(1e6, 1e9, n), 0.0 * kind],
        default=rng.exponential(2.0, n),
    )
    special = rng.random(n) < 0.01
    means[special] = rng.choice([np.nan, np.inf, -np.inf, -1.0, 1e38, 65495.0], special.sum())
    return means.astype(np.float32)


def check(pixels: int, seed: int = -20261202) -> dict:
    """Compiled against reference on ``pixels`` mixed means in 1000-wide rows, 90 % ROI."""
    rng = np.random.default_rng(abs(seed))
    image = mixed_means(rng, pixels).reshape(-1, 1000)
    roi = rng.random(image.shape) < 0.9
    fast = noise_image(image, seed, 40.0, roi)
    slow = noise_image_reference(image, seed, 40.0, roi)
    deviates = Deviates(seed)
    expected = np.zeros(image.size, np.float32)
    flat = image.ravel()
    for i in np.flatnonzero(roi.ravel()):
        expected[i] = deviates.poidev(float(flat[i]))
    got = poisson_deviates(image, seed, roi).ravel()
    return {
        "check_pixels": int(image.size),
        "check_image_identical": bool(np.array_equal(fast[0], slow[0])),
        "check_deviates_identical": bool(
            np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        ),
        "check_overloads_equal": fast[2] == slow[2],
    }


def measure(repeats: int = 3, check_pixels: int = 0) -> dict:
    """Every figure of this benchmark as a dict (times in seconds)."""
    work = Path(tempfile.mkdtemp(prefix="jaxdiff-noise-"))
    cache = work / "cache"
    try:
        _cli_seconds(work, cache, ["-nonoise"])  # fills the compilation cache
        with_noise, without = [], []
        for _ in range(repeats):
            with_noise.append(_cli_seconds(work, cache, ["-noisefile", "noise.img"]))
            without.append(_cli_seconds(work, cache, ["-nonoise"]))
        noise_wall, noise_cpu = zip(*with_noise, strict=True)
        nonoise_wall, nonoise_cpu = zip(*without, strict=True)
        image = read_float_image(work / "float.bin", (2048, 2048))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(0)
    pilatus = np.resize(image, PILATUS)
    busy = rng.uniform(12.0, 1e4, PILATUS).astype(np.float32)
    band = image[896:1152]
    start = time.perf_counter()
    noise_image_reference(band, -1)
    reference_per_pixel = (time.perf_counter() - start) / band.size
    noise_2048 = _median_seconds(repeats, lambda: noise_image(image, -1))
    figures = {
        "cli_noise_s": statistics.median(noise_wall),
        "cli_nonoise_s": statistics.median(nonoise_wall),
        "cli_noise_cpu_s": statistics.median(noise_cpu),
        "cli_nonoise_cpu_s": statistics.median(nonoise_cpu),
        "noise_2048_s": noise_2048,
        "noise_pilatus_s": _median_seconds(repeats, lambda: noise_image(pilatus, -1)),
        "noise_pilatus_rejection_s": _median_seconds(repeats, lambda: noise_image(busy, -1)),
        "reference_2048_s_estimated": reference_per_pixel * image.size,
        "image_mean_photons": float(image.mean()),
        "image_fraction_ge_12": float((image >= 12.0).mean()),
    }
    figures["cli_ratio"] = figures["cli_noise_s"] / figures["cli_nonoise_s"]
    figures["cli_cpu_ratio"] = figures["cli_noise_cpu_s"] / figures["cli_nonoise_cpu_s"]
    figures["cli_ratio_met"] = figures["cli_ratio"] <= TARGET
    figures["speedup_over_reference"] = figures["reference_2048_s_estimated"] / noise_2048
    if check_pixels:
        figures.update(check(check_pixels))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=0, metavar="N", help="pixels to verify")
    parser.add_argument("--output", default=str(HERE / "noise.json"))
    args = parser.parse_args()
    figures = measure(args.repeats, args.check)
    print(
        f"jaxdiff 2048² whole process: {figures['cli_noise_s']:.2f} s with noise, "
        f"{figures['cli_nonoise_s']:.2f} s without: {figures['cli_ratio']:.3f}× "
        f"(target ≤ {TARGET}×: {'met' if figures['cli_ratio_met'] else 'NOT met'}); CPU time "
        f"{figures['cli_noise_cpu_s']:.2f} s and {figures['cli_nonoise_cpu_s']:.2f} s: "
        f"{figures['cli_cpu_ratio']:.3f}×"
    )
    print(
        f"noise_image in process: 2048² {figures['noise_2048_s']:.3f} s "
        f"(pure Python ≈ {figures['reference_2048_s_estimated']:.1f} s, "
        f"{figures['speedup_over_reference']:.0f}× faster); 2463×2527 "
        f"{figures['noise_pilatus_s']:.3f} s, all-rejection 2463×2527 "
        f"{figures['noise_pilatus_rejection_s']:.3f} s"
    )
    if args.check:
        print(
            f"bit-identity on {figures['check_pixels']} pixels: image "
            f"{figures['check_image_identical']}, deviates {figures['check_deviates_identical']}"
        )
    Path(args.output).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
