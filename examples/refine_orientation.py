"""Fit a crystal's orientation to a noisy image by gradient.

The "observed" image is the A.mat crystal (with scaled.hkl) turned by 2° about a random
axis, rendered on a 384 × 384 detector and given nanoBragg's Poisson noise and ADC offset. The
model starts from A.mat itself; jaxdiff.refine searches orientations around it, fits the
orientation (and an overall scale) coarse to fine, judges the fit, and the script prints the
verdict, the true and fitted orientation and A matrix.

Run from anywhere in the repository: ``python examples/refine_orientation.py`` (about a minute
on a laptop CPU, most of it compilation). The inputs are the golden inputs in
../shared/golden/inputs next to the repository.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import jax
import numpy as np

INPUTS = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "inputs"
FLAGS = [
    "-mat", str(INPUTS / "A.mat"), "-hkl", str(INPUTS / "scaled.hkl"), "-nointerpolate",
    "-lambda", "0.9768", "-N", "20", "-distance", "100", "-pixel", "0.172", "-detpixels", "384",
    "-fluence", "2e26", "-water", "5", "-oversample", "1",
]  # fmt: skip
ADC = 40.0


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from jaxdiff.experiment import build
    from jaxdiff.io import noise_image
    from jaxdiff.refine import a_matrix, misorientation, refine
    from jaxdiff.simulate import simulate

    with tempfile.TemporaryDirectory() as work:  # -hkl writes Fdump.bin here
        setup = build(FLAGS, work)
    exp, cfg = setup.experiment, setup.config

    rng = np.random.default_rng(7)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    true_rotation = jnp.asarray(axis * math.radians(2.0))
    truth = dataclasses.replace(
        exp, crystal=dataclasses.replace(exp.crystal, rotation=true_rotation)
    )
    photons = np.asarray(simulate(truth, cfg))
    counts, total, overloads = noise_image(photons, seed=-7, adc=ADC)
    print(f"observed: {total:.3g} photons, brightest pixel {counts.max()}, {overloads} overloads")
    observed = counts.astype(np.float64) - ADC

    def progress(info):
        print(f"  stage {info.stage + 1} step {info.step + 1:2d}  loss {info.loss:.6f}", flush=True)

    # The fit starts from the model the flags describe: A.mat, unturned.
    result = refine(setup, observed, mask=counts < 65535, progress=progress)

    fitted_rotation = result.experiments[0].crystal.rotation
    error = math.degrees(float(misorientation(fitted_rotation, true_rotation)))
    start_error = math.degrees(float(misorientation(exp.crystal.rotation, true_rotation)))
    print(f"\nfit: {len(result.history)} steps in {result.seconds:.1f} s")
    print(f"{'converged' if result.converged else 'NOT converged'}: {result.reason}")
    print("rotation vector [deg]   x         y         z")
    print("  truth            " + "".join(f"{math.degrees(v):10.5f}" for v in true_rotation))
    print("  fitted           " + "".join(f"{math.degrees(v):10.5f}" for v in fitted_rotation))
    print(f"orientation error: {start_error:.4f} deg at the start, {error:.5f} deg fitted")
    print(f"scale: {result.values['scale'][0]:.4f} (truth 1)")
    a_true = np.asarray(a_matrix(truth.crystal, cfg, 0.9768e-10))
    print("A matrix (MOSFLM, columns a*, b*, c* x lambda): truth | fitted")
    for row_true, row_fit in zip(a_true, result.a_matrices[0], strict=True):
        print("  " + " ".join(f"{v:11.8f}" for v in row_true), " | ", end="")
        print(" ".join(f"{v:11.8f}" for v in row_fit))


if __name__ == "__main__":
    main()
