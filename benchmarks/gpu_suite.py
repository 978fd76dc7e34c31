"""The GPU checks and figures, for a machine with an NVIDIA GPU and ``jax[cuda12]``:

1. correctness: every golden case in float64 against the C program (same tolerance as the
   tests: 1e-6 of the peak), and the worst float32 error against float64;
2. speed: a P3-type workload (512² or larger × 10 φ × 10 mosaic × 2² sub-pixels) in float32,
   in evaluations per second (target ≥ 1e11 on an H100);
3. batch: 1000 crystals on a 1024² detector (target under a minute);
4. gradients: forward + gradient over forward for each parameter group (target ≤ 3×), on the
   problems of ``gradients.py`` (P3, P1 and the supervisor ROI) in float32 and float64.

Appends a section naming the device to benchmarks/RESULTS.md (``--no-write``: print only, for
a smoke run on a machine without a GPU).

    pip install -e '.[test]' 'jax[cuda12]' && python benchmarks/gpu_suite.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from _golden import GOLDEN, cases, scratch  # noqa: E402

from jaxdiff import build, simulate  # noqa: E402
from jaxdiff.batch import random_rotation_vectors, simulate_batch, vary_crystal  # noqa: E402

P3_LIKE = (
    "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 8 -lambda 1.5 -distance 100 "
    "-detpixels {n} -phi 0 -osc 1 -phisteps 10 -mosaic 0.5 -mosaic_dom 10 -oversample 2"
)


def golden() -> tuple[int, list[str], float]:
    work = scratch()
    failed, worst32 = [], 0.0
    for cmd in cases():
        for f in work.glob("Fdump.bin"):
            f.unlink()
        setup = build(list(cmd["argv"]) + ["--phi-carryover-mode", cmd["variant"]], cwd=work)
        img = np.asarray(simulate(setup.experiment, setup.config))
        ref = np.fromfile(GOLDEN / cmd["name"] / "float.bin", "<f4").reshape(img.shape)
        peak = np.abs(ref).max()
        if np.abs(img.astype(np.float32) - ref).max() > 1e-6 * peak:
            failed.append(cmd["name"])
        img32 = np.asarray(
            simulate(setup.experiment, dataclasses.replace(setup.config, dtype="float32"))
        )
        worst32 = max(worst32, float(np.abs(img32 - img).max() / peak))
    return len(cases()) - len(failed), failed, worst32


def throughput(n: int, repeats: int) -> tuple[float, float]:
    setup = build(P3_LIKE.format(n=n).split())
    cfg = dataclasses.replace(setup.config, dtype="float32")
    simulate(setup.experiment, cfg).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        simulate(setup.experiment, cfg).block_until_ready()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    return setup.steps * n * n / t, t


def batch(count: int, per_call: int) -> float:
    setup = build(
        "-cell 70 80 90 85 95 105 -default_F 100 -N 8 -lambda 1.5 -distance 100 "
        "-detpixels 1024 -oversample 1".split()
    )
    cfg = dataclasses.replace(setup.config, dtype="float32")
    rots = random_rotation_vectors(count, 0)
    crystals = vary_crystal(setup.experiment.crystal, rotation=rots)
    first = jax.tree_util.tree_map(lambda x: x[:per_call], crystals)
    simulate_batch(setup.experiment, first, cfg).block_until_ready()
    start = time.perf_counter()
    for lo in range(0, count, per_call):
        part = jax.tree_util.tree_map(lambda x, lo=lo: x[lo : lo + per_call], crystals)
        simulate_batch(setup.experiment, part, cfg).block_until_ready()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--per-call", type=int, default=50)
    parser.add_argument(
        "--grad-problems",
        nargs="*",
        default=["P3", "P1", "supervisor-roi"],
        help="problems of gradients.py to time (none: skip the gradients)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), {len(jax.devices())} device(s)")
    passed, failed, worst32 = golden()
    print(f"golden float64: {passed} pass, failed: {failed}; worst float32 error {worst32:.2e}")
    rate, t = throughput(args.size, args.repeats)
    print(f"P3-type {args.size}^2 float32: {t:.3f} s, {rate:.3e} evaluations/s")
    bt = batch(args.batch, args.per_call)
    print(f"batch {args.batch} crystals on 1024^2 (float32): {bt:.1f} s")
    grads = []
    if args.grad_problems:
        from gradients import measure

        grads = measure(repeats=args.repeats, problems=tuple(args.grad_problems))["rows"]
    if args.no_write:
        return 0 if not failed else 1
    out = Path(__file__).resolve().parent / "RESULTS.md"
    with out.open("a") as f:
        f.write(
            f"\n## GPU: {device.device_kind}\n\n"
            f"Written by `python benchmarks/gpu_suite.py` on {time.strftime('%Y-%m-%d')}.\n\n"
            f"- golden cases in float64: {passed} of {passed + len(failed)} within 1e-6 of the "
            f"peak{'; failed: ' + ', '.join(failed) if failed else ''}\n"
            f"- worst float32 error against float64 over the golden cases: {worst32:.2e} of "
            "the peak\n"
            f"- P3-type workload, {args.size}² × 10 φ × 10 mosaic × 2² sub-pixels, float32: "
            f"{t:.3f} s, {rate:.2e} evaluations/s (median of {args.repeats})\n"
            f"- {args.batch} crystals on a 1024² detector, float32: {bt:.1f} s\n"
        )
        if grads:
            f.write(
                f"\nForward + gradient over forward (`gradients.py`, medians of {args.repeats}; "
                "target ≤ 3×):\n\n| problem, dtype, group | forward [s] | fwd+grad [s] | ratio |\n"
                "|---|---|---|---|\n"
            )
            for row in grads:
                f.write(
                    f"| {row['name']} | {row['forward_s']:.4f} | {row['grad_s']:.4f} | "
                    f"{row['ratio']:.2f}× |\n"
                )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
