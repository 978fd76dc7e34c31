"""Many images per process against the C program run once per image, in the same run.

- ``frames``: a 20-frame rotation series of a 512×480 detector with ``jaxdiff --frames 20``
  (one process) against 20 runs of the C program, one per ``-phi``.
- ``commands``: 60 different 1024² command lines (P1 with its own misset and distance each)
  with ``jaxdiff --commands FILE`` against 60 runs of the C program.

Whole-process wall times, medians of ``--repeats`` (default 3); jaxdiff is timed with an empty
program cache (cold) and with the cache its first run left (warm). The C program runs with
``OMP_NUM_THREADS=2``. Needs a C nanoBragg build (``--c-binary``), which is not part of jaxdiff.

    python benchmarks/datasets.py --c-binary /path/to/nanoBragg
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _golden import GOLDEN

HERE = Path(__file__).resolve().parent
INPUTS = GOLDEN / "inputs"

SERIES = (
    "-mat A.mat -hkl scaled.hkl -lambda 0.9768 -distance 120 -pixel 0.172 -detpixels_x 512 "
    "-detpixels_y 480 -N 10 -mosaic 0.1 -mosaic_dom 5 -osc 0.5 -phisteps 5 -seed 11"
)
P1 = "-cell 100 100 100 90 90 90 -default_F 100 -N 5 -lambda 6.2 -detpixels 1024 -nonoise -nopgm"
FRAMES = 20
LINES = 60


def _scratch() -> Path:
    work = Path(tempfile.mkdtemp(prefix="jaxdiff-datasets-"))
    for name in ("A.mat", "scaled.hkl"):
        shutil.copy(INPUTS / name, work / name)
    return work


def _jaxdiff() -> list[str]:
    exe = shutil.which("jaxdiff")
    return [exe] if exe else [sys.executable, "-m", "jaxdiff.cli"]


def _wall(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def command_lines(count: int, seed: int = 1) -> list[str]:
    """``count`` P1 command lines, each with its own misset and distance."""
    rng = random.Random(seed)
    lines = []
    for k in range(count):
        misset = " ".join(f"{rng.uniform(-180, 180):.3f}" for _ in range(3))
        distance = rng.uniform(80, 200)
        lines.append(
            f"{P1} -misset {misset} -distance {distance:.2f} "
            f"-floatfile img{k:03d}.bin -intfile img{k:03d}.img"
        )
    return lines


def _c_frames(c_binary: str, work: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    start = time.perf_counter()
    for k in range(FRAMES):
        phi = 0.5 * k
        args = SERIES.split() + ["-phi", f"{phi:g}", "-seed", str(11 + k)]
        args += ["-intfile", f"c_{k + 1:05d}.img", "-noisefile", f"cn_{k + 1:05d}.img"]
        subprocess.run([c_binary, *args], cwd=work, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def _c_commands(c_binary: str, work: Path, lines: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    start = time.perf_counter()
    for line in lines:
        subprocess.run(
            [c_binary, *line.split()], cwd=work, env=env, capture_output=True, check=True
        )
    return time.perf_counter() - start


def measure(
    c_binary: str | None, repeats: int = 3, parts: tuple[str, ...] = ("frames", "commands")
) -> dict:
    """Figures for the workloads in ``parts`` (both by default): medians [s] and ratios
    C / jaxdiff (> 1: jaxdiff faster)."""
    out: dict = {"frames": FRAMES, "lines": LINES}
    lines = command_lines(LINES)
    cache = Path(tempfile.mkdtemp(prefix="jaxdiff-datasets-cache-"))
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(cache))
    series = _jaxdiff() + SERIES.split() + ["-phi", "0", "--frames", str(FRAMES)]
    series += ["-intfile", "j_#####.img", "-noisefile", "jn_#####.img", "-floatfile", "j_#####.bin"]
    work = _scratch()
    (work / "lines.txt").write_text("\n".join(lines) + "\n")
    commands = _jaxdiff() + ["--commands", "lines.txt"]

    if "frames" in parts:
        out["jaxdiff_frames_cold_s"] = _wall(series, work, env)
    if "commands" in parts:
        out["jaxdiff_commands_cold_s"] = _wall(commands, work, env)
    if "frames" in parts:
        out["jaxdiff_frames_s"] = statistics.median(
            _wall(series, work, env) for _ in range(repeats)
        )
    if "commands" in parts:
        out["jaxdiff_commands_s"] = statistics.median(
            _wall(commands, work, env) for _ in range(repeats)
        )
    if c_binary and "frames" in parts:
        out["c_frames_s"] = statistics.median(_c_frames(c_binary, work) for _ in range(repeats))
        out["frames_speedup"] = out["c_frames_s"] / out["jaxdiff_frames_s"]
    if c_binary and "commands" in parts:
        out["c_commands_s"] = statistics.median(
            _c_commands(c_binary, work, lines) for _ in range(repeats)
        )
        out["commands_speedup"] = out["c_commands_s"] / out["jaxdiff_commands_s"]
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c-binary", help="a C nanoBragg build to time in the same run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", choices=("frames", "commands"), help="time one workload (default: both)"
    )
    args = parser.parse_args(argv)
    parts = (args.only,) if args.only else ("frames", "commands")
    print(json.dumps(measure(args.c_binary, args.repeats, parts), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
