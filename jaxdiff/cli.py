"""``jaxdiff``: a drop-in for the nanoBragg command line.

Same flags, units and defaults as the C program (single dash); jaxdiff's own options take two
dashes. A user's mistake prints one message and exits with status 2, leaving no output file.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from jaxdiff.errors import InputError


def _stats(image: np.ndarray, rendered: np.ndarray, roi_mask: np.ndarray):
    """nanoBragg's run summary: max over rendered pixels (first in raster order) and its pixel,
    mean and rms over rendered pixels, rmsd about that mean over the whole ROI."""
    values = image[rendered].astype(np.float64)
    n = max(values.size, 1)
    avg = float(values.sum()) / n
    rms = float(np.sqrt(np.sum(values * values) / (max(values.size, 2) - 1)))
    roi_vals = image[roi_mask].astype(np.float64)
    rmsd = float(np.sqrt(np.sum((roi_vals - avg) ** 2) / (max(roi_vals.size, 2) - 1)))
    masked = np.where(rendered, image, -np.inf)
    where = np.unravel_index(np.argmax(masked), image.shape)
    max_i = float(masked[where]) if masked[where] > 0 else 0.0
    return max_i, where, avg, rms, rmsd


def run(argv: list[str]) -> int:
    """Render the image a nanoBragg command line describes and write its output files."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxdiff import aot

    aot.enable()
    from jaxdiff.experiment import build
    from jaxdiff.io import (
        auto_int_scale,
        auto_pgm_scale,
        c_header_lines,
        fmt_g,
        noise_image,
        to_int_image,
        write_float_image,
        write_pgm,
        write_smv,
    )
    from jaxdiff.simulate import simulate

    setup = build(argv)
    o, cfg = setup.options, setup.config
    print(
        f"jaxdiff: {cfg.spixels}x{cfg.fpixels} pixels, {setup.steps} steps per pixel, "
        f"{cfg.dtype}, phi carryover {cfg.carryover}"
    )
    start = time.perf_counter()
    image = np.asarray(aot.call("simulate", simulate, {"cfg": cfg}, setup.experiment))
    image = image.astype(np.float32)
    print(f"rendered in {time.perf_counter() - start:.2f} s")
    if o.trace_pixel is not None:
        from jaxdiff.trace import trace_lines

        print("\n".join(trace_lines(setup, *o.trace_pixel)))

    fmin, fmax, smin, smax = cfg.roi
    roi_mask = np.zeros(image.shape, dtype=bool)
    roi_mask[smin : smax + 1, fmin : fmax + 1] = True
    rendered = roi_mask & (np.asarray(setup.experiment.mask) != 0)
    max_i, where, avg, rms, rmsd = _stats(image, rendered, roi_mask)
    # C reports the position of the maximum pixel's last sub-pixel, in metres
    sub = float(setup.experiment.detector.pixel_size) / cfg.oversample
    last = cfg.oversample - 0.5
    at = (sub * (where[1] * cfg.oversample + last), sub * (where[0] * cfg.oversample + last))
    print(
        f"max_I = {fmt_g(max_i)}  at {fmt_g(at[0])} {fmt_g(at[1])} "
        f"(pixel slow {where[0]}, fast {where[1]})"
    )
    print(f"mean= {fmt_g(avg)} rms= {fmt_g(rms)} rmsd= {fmt_g(rmsd)}")

    h = setup.header
    lines = c_header_lines(
        h["fpixels"],
        h["spixels"],
        h["pixel_size"],
        h["distance"],
        h["wavelength"],
        h["Xbeam"],
        h["Ybeam"],
        h["Fbeam"],
        h["Sbeam"],
        h["detsize_s"],
        h["dials_origin"],
        h["orgx"],
        h["orgy"],
        h["close_distance"],
        h["phi0"],
        h["osc"],
        h["twotheta"],
    )
    write_float_image(o.floatfile, image)
    print(f"wrote {o.floatfile}")
    if o.hdf5:
        from jaxdiff.io.hdf5 import write_hdf5

        write_hdf5(o.hdf5, image, setup.experiment, cfg)
        print(f"wrote {o.hdf5}")
    scale = o.intfile_scale if o.intfile_scale > 0.0 else auto_int_scale(max_i)
    write_smv(o.intfile, to_int_image(image, scale, o.adc_offset, roi_mask), lines)
    print(f"intfile_scale = {fmt_g(scale)}")
    print(f"wrote {o.intfile}")
    if o.write_pgm:
        pgm_scale = o.pgm_scale if o.pgm_scale > 0.0 else auto_pgm_scale(rmsd, scale)
        write_pgm(o.pgmfile, image, pgm_scale, roi_mask)
        print(f"wrote {o.pgmfile}")
    if o.calculate_noise:
        seed = o.seed if o.seed is not None else -int(time.time())
        noisy, photons, overloads = noise_image(image, seed, o.adc_offset, roi_mask)
        write_smv(o.noisefile, noisy, lines)
        print(f"{photons:.0f} photons on noise image ({overloads} overloads)")
        print(f"wrote {o.noisefile}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxdiff`` command."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except InputError as err:
        print(f"jaxdiff: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
