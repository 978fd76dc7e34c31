"""Orientation refinement: convergence from random misorientations, time per fit, and the cost
of the gradient.

The detector is the Pilatus 6M of examples/parity_experiment.py (2463 × 2527 pixels of
0.172 mm at 231 mm, its measured axes and beam); the fit uses its central 1024 × 1024 pixels
(to 2.7 Å). The crystal is A.mat with scaled.hkl and Na, Nb, Nc = 36, 47, 29, a still image at
1e20 photons/s through a 1 mm beam for 1 s, over the background of a 5 µm water droplet (about
8 photons per pixel). Each trial draws Poisson noise, turns the crystal by 0.1°–0.5° about a
random axis, and fits orientation and scale with the default coarse-to-fine schedule from the
turned start. A trial converges when the fitted orientation is within 0.005° of the truth.

    python benchmarks/refine_orientation.py               # 20 trials
    python benchmarks/refine_orientation.py --trials 5 --json out.json

The fits render the region as one block of pixels (``SimConfig.chunk`` raised to the region's
size), where reverse mode is cheapest; the default chunk is measured too. The gradient cost is
the time of the fit's loss with its gradient (orientation and scale, reverse mode) over the
time of the loss alone, both jitted, median of repeated runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import jax

INPUTS = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "inputs"
FLAGS = (
    "-nonoise -nointerpolate -oversample 1 -exposure 1 -flux 1e20 -beamsize 1.0 -water 5 "
    "-Xbeam 217.742295 -Ybeam 213.907080 -distance 231.274660 -lambda 0.976800 -pixel 0.172 "
    "-detpixels_x 2463 -detpixels_y 2527 "
    "-odet_vector -0.000088 0.004914 -0.999988 -sdet_vector -0.005998 -0.999970 -0.004913 "
    "-fdet_vector 0.999982 -0.005998 -0.000118 -pix0_vector_mm -216.336293 215.205512 -230.200866 "
    "-beam_vector 0.00051387949 0.0 -0.99999986 -Na 36 -Nb 47 -Nc 29 "
    "-roi 720 1743 750 1773"
).split()
CONVERGED_DEG = 0.005


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradient_cost(setup, observed, repeats: int) -> dict:
    """Seconds of the loss and of loss + gradient, and their ratio."""
    import jax.numpy as jnp

    from jaxdiff.refine.driver import _Data, make_model
    from jaxdiff.refine.params import initial_offsets

    _, total, _ = make_model((setup.config,), "poisson")
    data = _Data(
        (setup.experiment,),
        (jnp.asarray(observed),),
        (jnp.asarray(0.01),),
        (jnp.ones(observed.shape),),
        jnp.asarray(float(observed.size)),
    )
    offsets = initial_offsets(("rotation", "scale"), 1)
    one = jnp.ones(())
    loss = jax.jit(total)
    both = jax.jit(jax.value_and_grad(total))
    t_loss = _median_time(lambda: loss(offsets, data, one, one), repeats)
    t_both = _median_time(lambda: both(offsets, data, one, one), repeats)
    return {"loss_s": t_loss, "loss_and_gradient_s": t_both, "ratio": t_both / t_loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (gradient cost)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff.experiment import build
    from jaxdiff.refine import misorientation, refine
    from jaxdiff.simulate import simulate

    with tempfile.TemporaryDirectory() as work:
        default = build(
            ["-mat", str(INPUTS / "A.mat"), "-hkl", str(INPUTS / "scaled.hkl"), *FLAGS], work
        )
    exp = default.experiment
    ns, nf = default.config.roi_shape
    cfg = dataclasses.replace(default.config, chunk=max(default.config.chunk, ns * nf))
    setup = dataclasses.replace(default, config=cfg)
    truth = np.asarray(simulate(exp, cfg))
    fmin, fmax, smin, smax = cfg.roi
    region = truth[smin : smax + 1, fmin : fmax + 1]
    print(
        f"detector {cfg.fpixels}x{cfg.spixels}, fitting {fmax - fmin + 1}x{smax - smin + 1} "
        f"pixels; strongest pixel {region.max():.0f} photons, median {np.median(region):.1f}"
    )
    rng = np.random.default_rng(args.seed)
    trials = []
    for trial in range(args.trials):
        observed = rng.poisson(truth).astype(np.float64)
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = math.radians(rng.uniform(0.1, 0.5))
        turned = dataclasses.replace(exp.crystal, rotation=jnp.asarray(axis * angle))
        start = time.perf_counter()
        result = refine(dataclasses.replace(exp, crystal=turned), observed, config=cfg)
        seconds = time.perf_counter() - start
        fitted = result.experiments[0].crystal.rotation
        error = math.degrees(float(misorientation(fitted, exp.crystal.rotation)))
        trials.append(
            {
                "start_deg": math.degrees(angle),
                "error_deg": error,
                "converged": error < CONVERGED_DEG,
                "steps": len(result.history),
                "seconds": seconds,
            }
        )
        print(
            f"trial {trial + 1:2d}: start {math.degrees(angle):.3f} deg -> error {error:.5f} deg "
            f"in {len(result.history)} steps, {seconds:.1f} s",
            flush=True,
        )
    cost = gradient_cost(setup, observed, args.repeats)
    cost_default = gradient_cost(default, observed, args.repeats)
    converged = sum(t["converged"] for t in trials) / len(trials)
    # The first fit compiles; the others reuse it.
    warm = [t["seconds"] for t in trials[1:]] or [trials[0]["seconds"]]
    summary = {
        "device": str(jax.devices()[0]),
        "trials": len(trials),
        "converged_fraction": converged,
        "median_error_deg": statistics.median(t["error_deg"] for t in trials),
        "max_error_deg": max(t["error_deg"] for t in trials),
        "median_seconds_per_trial": statistics.median(warm),
        "first_trial_seconds": trials[0]["seconds"],
        "median_steps": statistics.median(t["steps"] for t in trials),
        "gradient_cost": cost,
        "gradient_cost_default_chunk": {"chunk": default.config.chunk, **cost_default},
        "per_trial": trials,
    }
    print(
        f"converged within {CONVERGED_DEG} deg: {converged:.0%} of {len(trials)} (median error "
        f"{summary['median_error_deg']:.5f} deg, worst {summary['max_error_deg']:.5f})"
    )
    print(
        f"time per trial: median {summary['median_seconds_per_trial']:.1f} s "
        f"(first, with compilation: {summary['first_trial_seconds']:.1f} s), "
        f"median {summary['median_steps']:.0f} steps"
    )
    print(
        f"loss {cost['loss_s'] * 1e3:.0f} ms, loss + gradient "
        f"{cost['loss_and_gradient_s'] * 1e3:.0f} ms: forward+gradient costs "
        f"{cost['ratio']:.2f}x the forward (one block; {cost_default['ratio']:.2f}x with the "
        f"default chunk of {default.config.chunk} pixels)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
