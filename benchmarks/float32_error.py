"""Error of the float32 path against float64 (and of both against the C program) on every
golden case. Prints one row per case and the worst figures; the README quotes them.

    python benchmarks/float32_error.py
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from _golden import GOLDEN, cases, scratch  # noqa: E402

from jaxdiff.experiment import build  # noqa: E402
from jaxdiff.simulate import simulate  # noqa: E402


def main() -> int:
    work = scratch()
    worst32 = worst64 = worst32_c = 0.0
    print(f"{'case':46s} {'f32 vs f64':>11s} {'f32 vs C':>11s} {'f64 vs C':>11s}  (max |Δ| / peak)")
    for cmd in cases():
        for f in work.glob("Fdump.bin"):
            f.unlink()
        argv = list(cmd["argv"]) + ["--phi-carryover-mode", cmd["variant"]]
        setup = build(argv, cwd=work)
        img64 = np.asarray(simulate(setup.experiment, setup.config))
        cfg32 = dataclasses.replace(setup.config, dtype="float32")
        img32 = np.asarray(simulate(setup.experiment, cfg32)).astype(np.float64)
        ref = np.fromfile(GOLDEN / cmd["name"] / "float.bin", "<f4").reshape(img64.shape)
        peak = np.abs(img64).max()
        e32 = np.abs(img32 - img64).max() / peak
        e32c = np.abs(img32 - ref).max() / peak
        e64c = np.abs(img64.astype(np.float32) - ref).max() / peak
        worst32, worst32_c, worst64 = max(worst32, e32), max(worst32_c, e32c), max(worst64, e64c)
        print(f"{cmd['name']:46s} {e32:11.2e} {e32c:11.2e} {e64c:11.2e}")
    print(
        f"worst: float32 vs float64 {worst32:.2e}, float32 vs C {worst32_c:.2e}, "
        f"float64 vs C {worst64:.2e} (relative to each image's peak)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
