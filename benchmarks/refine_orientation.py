"""Orientation refinement: how often it converges, how accurately and how fast, per cell size
and starting error, for stills and for a rotation sweep.

Each case is a tetragonal cell (a = b, c ≈ a/2), -default_F 100, Na = Nb = Nc = 15, λ 1 Å, a
512 × 512 detector of 0.172 mm pixels at 100 mm (2.4 Å at the edge), Poisson noise. A still is
one image at φ = 0; a sweep is 5 frames of 0.5° (two φ steps each) from φ = 0, fitted with one
shared orientation and a scale per frame. Each trial turns the crystal by the starting error
about a random axis and fits orientation and scale from there with the library's defaults
(global search, coarse-to-fine schedule); it converges when the fitted orientation is within
0.01° of the truth. "before" is the fit without the search and with the step-size stopping rule
alone (``search=None``, ``gtol=inf``): the defaults until now, timed in the same run. For
stills, "above truth" counts converged fits whose final loss is above the loss at the true
orientation (with the scale fitted there): fits the stopping rule ended early.

    python benchmarks/refine_orientation.py                      # 8 trials per case
    python benchmarks/refine_orientation.py --trials 3 --cells 79 --starts 2,3 --json out.json

Times are wall seconds per fit after the first of each configuration (which compiles).
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

CONVERGED_DEG = 0.01
FLAGS = (
    "-default_F 100 -N 15 -lambda 1 -distance 100 -pixel 0.172 -detpixels 512 -oversample 1"
).split()
SWEEP_FLAGS = ["-phi", "0", "-osc", "0.5", "-phisteps", "2"]
SWEEP_FRAMES = 5


def cell_flags(a: float) -> list[str]:
    c = round(a * 38.0 / 79.0, 1)
    return ["-cell", f"{a:g}", f"{a:g}", f"{c:g}", "90", "90", "90"]


def run_case(a: float, sweep: bool, starts: list[float], trials: int, rng, before: bool):
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff.experiment import build
    from jaxdiff.refine import DEFAULT_SCHEDULE, Stage, misorientation, refine, sweep_models
    from jaxdiff.simulate import simulate

    with tempfile.TemporaryDirectory() as work:
        setup = build([*cell_flags(a), *FLAGS, *(SWEEP_FLAGS if sweep else [])], work)
    frames = sweep_models(setup, SWEEP_FRAMES) if sweep else [setup]
    truths = [np.asarray(simulate(f.experiment, f.config)) for f in frames]
    variants = {"after": {}}
    if before:
        old = tuple(s._replace(gtol=math.inf) for s in DEFAULT_SCHEDULE)
        variants["before"] = {"search": None, "schedule": old}
    rows = []
    for start_deg in starts:
        for name, options in variants.items():
            errors, seconds, above = [], [], 0
            for trial in range(trials + 1):  # trial 0 compiles and is not counted
                observed = [rng.poisson(t).astype(np.float64) for t in truths]
                axis = rng.normal(size=3)
                axis /= np.linalg.norm(axis)
                turn = jnp.asarray(axis * math.radians(start_deg))
                models = [
                    dataclasses.replace(
                        f,
                        experiment=dataclasses.replace(
                            f.experiment,
                            crystal=dataclasses.replace(f.experiment.crystal, rotation=turn),
                        ),
                    )
                    for f in frames
                ]
                clock = time.perf_counter()
                result = refine(
                    models if sweep else models[0],
                    observed if sweep else observed[0],
                    orientation="shared" if sweep else "per_image",
                    **options,
                )
                elapsed = time.perf_counter() - clock
                fitted = result.experiments[0].crystal.rotation
                true = setup.experiment.crystal.rotation
                error = math.degrees(float(misorientation(fitted, true)))
                if trial:
                    errors.append(error)
                    seconds.append(elapsed)
                if trial and not sweep and error < CONVERGED_DEG:
                    at_truth = refine(
                        frames[0],
                        observed[0],
                        fit=("scale",),
                        search=None,
                        schedule=(Stage(steps=30, gtol=1e-6),),
                    )
                    above += result.final_loss > at_truth.final_loss + 1e-12
            row = {
                "cell_a": a,
                "mode": f"sweep x{SWEEP_FRAMES}" if sweep else "still",
                "start_deg": start_deg,
                "variant": name,
                "trials": trials,
                "converged": sum(e < CONVERGED_DEG for e in errors) / len(errors),
                "median_error_deg": statistics.median(errors),
                "median_seconds": statistics.median(seconds),
                "above_truth": None if sweep else above,
            }
            rows.append(row)
            print(
                f"a {a:5.0f} Å {row['mode']:9s} start {start_deg:3.1f}° {name:6s}: converged "
                f"{row['converged']:4.0%} of {trials}, median error "
                f"{row['median_error_deg']:.5f}°, {row['median_seconds']:.2f} s per fit"
                + ("" if sweep else f", {above} converged fits above the truth's loss"),
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per case")
    parser.add_argument("--cells", default="40,79,100", help="cell edges a [Å]")
    parser.add_argument("--starts", default="1,2,3", help="starting errors [deg]")
    parser.add_argument("--modes", default="still,sweep", help="still, sweep or both")
    parser.add_argument("--before", action="store_true", help="also time the old defaults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    rng = np.random.default_rng(args.seed)
    starts = [float(s) for s in args.starts.split(",")]
    rows = []
    for a in (float(c) for c in args.cells.split(",")):
        for mode in args.modes.split(","):
            before = args.before and mode == "still"
            rows += run_case(a, mode == "sweep", starts, args.trials, rng, before)
    if args.json:
        summary = {"device": str(jax.devices()[0]), "converged_deg": CONVERGED_DEG, "rows": rows}
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
