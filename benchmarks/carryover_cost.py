"""Cost of the c-parity φ carryover against spec mode on the same case (target ≤ 1.25×).

Times the warm, jitted simulate() for both modes on a φ sweep that starts at 0 (where the
modes differ), interleaving the runs and quoting medians because the machine is shared.

    python benchmarks/carryover_cost.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

from _golden import scratch  # noqa: E402

from jaxdiff import build, simulate  # noqa: E402

CASE = (
    "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 8 -lambda 1.5 -distance 100 "
    "-detpixels 256 -phi 0 -osc 1 -phisteps 10 -mosaic 0.5 -mosaic_dom 10 -oversample 2"
).split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    work = scratch()
    setups = {m: build(CASE + ["--phi-carryover-mode", m], cwd=work) for m in ("spec", "c-parity")}
    times = {m: [] for m in setups}
    for s in setups.values():
        simulate(s.experiment, s.config).block_until_ready()
    for _ in range(args.repeats):
        for mode, s in setups.items():
            start = time.perf_counter()
            simulate(s.experiment, s.config).block_until_ready()
            times[mode].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"device: {jax.devices()[0].device_kind}; 256x256 px, 10 phi x 10 mosaic x 2x2 subpixels")
    for mode in setups:
        print(f"{mode:9s} median {med[mode]:.3f} s  ({', '.join(f'{t:.3f}' for t in times[mode])})")
    ratio = med["c-parity"] / med["spec"]
    print(f"c-parity / spec = {ratio:.3f} (target <= 1.25): {'ok' if ratio <= 1.25 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
