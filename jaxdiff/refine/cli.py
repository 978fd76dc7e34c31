"""``jaxdiff-refine``: fit a model, given as nanoBragg flags, to an observed image or to the
frames of a rotation sweep.

    jaxdiff-refine --observed IMAGE [options] -- NANOBRAGG FLAGS
    jaxdiff-refine --observed 'obs_#####.img' --frames N [options] -- FLAGS OF FRAME 1

The observed image is an SMV file (its ADC offset, nanoBragg's -adc, is subtracted and
overloaded pixels are left out), a raw float32 file of photons with the detector size the flags
give, or an HDF5 file (``--dataset``, default /entry/data/data as jaxdiff writes it, else the
first image-sized dataset; ``--frame`` picks one image of a stack). With ``--frames N`` the
observation is a sweep of N frames of one crystal: files named by a '#' template (frame k is
``obs_0000k.img``), or N images of an HDF5 stack from ``--frame`` on (``--frames all``: to the
end of the stack). The flags describe frame 1 (-phi, -osc, -phisteps); frame k is rendered
from φ0 + (k-1)·osc, and all frames share one orientation (each keeps its own scale). For a
multi-panel model (``--expt``) each image holds all the panels one above the other, as jaxdiff's
raw float and HDF5 files do, or is the panels' SMV files that jaxdiff writes under one name
(``obs.img`` for ``obs_panel0.img``, ``obs_panel1.img``, ...).

The fit starts with a global orientation search (``--search-radius``), then runs the
coarse-to-fine schedule from the model the flags describe. It writes the fitted MOSFLM A matrix
and a JSON report, prints a line per optimiser step and its verdict, and can draw a PNG
picture. A user's mistake prints one message and exits with status 2, writing nothing; a fit
that did not converge writes everything and exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from jaxdiff.cli import guarded, panel_file
from jaxdiff.errors import InputError

_PNG = b"\x89PNG"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_DEFAULT_DATASET = "entry/data/data"
_SMV_SATURATION = 65535.0


class _Parser(argparse.ArgumentParser):
    """argparse with its complaints raised as :class:`InputError` (one line, status 2)."""

    def error(self, message: str):
        raise InputError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jaxdiff-refine",
        usage="jaxdiff-refine --observed IMAGE [options] [--] NANOBRAGG_FLAGS ...",
        description="Fit crystal orientation (and optionally more) to an observed image.",
        epilog="Everything after the options (or after --) is the model's nanoBragg flags.",
        allow_abbrev=False,
    )
    p.add_argument("--observed", required=True, help="observed image: SMV, raw float32 or HDF5")
    p.add_argument("--dataset", help="HDF5 dataset holding the image(s)")
    p.add_argument("--frame", type=int, default=0, help="image of an HDF5 stack (default 0)")
    p.add_argument(
        "--frames",
        default="1",
        help="frames of a rotation sweep sharing one orientation: N (a '#' template in "
        "--observed, or N images of an HDF5 stack), or 'all' images of an HDF5 stack",
    )
    p.add_argument(
        "--search-radius",
        type=float,
        default=4.0,
        help="degrees around the start the orientation search covers (0: no search)",
    )
    p.add_argument(
        "--adc",
        type=float,
        help="counts to subtract from the observed image (default: the flags' -adc, 40, for "
        "SMV; 0 otherwise)",
    )
    p.add_argument(
        "--fit",
        default="rotation,scale",
        help="parameter groups, comma-separated: rotation, cell, ncells, mosaic, scale, distance, "
        "beam_centre (default rotation,scale)",
    )
    p.add_argument("--loss", default="poisson", choices=("poisson", "lsq"))
    p.add_argument(
        "--background", type=float, default=0.01, help="photons per pixel added to the model"
    )
    p.add_argument(
        "--coarse",
        default="0.25,0.5",
        help="Ncells factors of the broadened stages before the real model ('' for none)",
    )
    p.add_argument("--steps", type=int, default=100, help="most steps of the final stage")
    p.add_argument("--matrix", default="refined.mat", help="fitted A matrix (MOSFLM format)")
    p.add_argument("--report", default="refine.json", help="JSON report")
    p.add_argument("--expt", help="DIALS experiment list the model starts from (flags add to it)")
    p.add_argument(
        "--expt-out", help="DIALS experiment list to write with the fitted model (dxtbx loads it)"
    )
    p.add_argument("--picture", help="PNG picture: loss curve and spots, observed vs model")
    p.add_argument("--quiet", action="store_true", help="no line per step")
    return p


_OWN = {a for action in _parser()._actions for a in action.option_strings}
_SWITCHES = {"--quiet", "-h", "--help"}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(jaxdiff-refine's options, the nanoBragg flags): our options are picked out wherever
    they are; everything after a lone ``--`` belongs to the model."""
    own, model = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            model.extend(argv[i + 1 :])
            break
        name = arg.split("=", 1)[0]
        if name in _OWN:
            own.append(arg)
            if "=" not in arg and name not in _SWITCHES and i + 1 < len(argv):
                own.append(argv[i + 1])
                i += 1
        else:
            model.append(arg)
        i += 1
    return own, model


def _hdf5_images(
    path: str, dataset: str | None, frame: int, count: int | None, shape: tuple[int, int]
) -> list[np.ndarray]:
    """``count`` images from ``frame`` on (None: to the end of the stack)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if dataset is None:
                if _DEFAULT_DATASET in f:
                    dataset = _DEFAULT_DATASET
                else:
                    found = []
                    f.visititems(
                        lambda name, obj: (
                            found.append(name)
                            if isinstance(obj, h5py.Dataset) and tuple(obj.shape[-2:]) == shape
                            else None
                        )
                    )
                    if not found:
                        raise InputError(
                            f"{path}: no dataset of {shape[0]}x{shape[1]} (slow x fast) pixels; "
                            "name one with --dataset"
                        )
                    dataset = found[0]
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise InputError(f"--dataset: {path} has no dataset {dataset!r}")
            data = f[dataset]
            if data.ndim == 3:
                if not 0 <= frame < data.shape[0]:
                    raise InputError(
                        f"--frame: {path}:{dataset} holds {data.shape[0]} images, no image {frame}"
                    )
                count = data.shape[0] - frame if count is None else count
                if frame + count > data.shape[0]:
                    raise InputError(
                        f"--frames: {path}:{dataset} holds {data.shape[0]} images, not "
                        f"{count} from image {frame}"
                    )
                return [np.asarray(data[frame + k], dtype=np.float64) for k in range(count)]
            if data.ndim != 2:
                raise InputError(f"{path}:{dataset}: expected an image, found shape {data.shape}")
            if count not in (None, 1):
                raise InputError(f"--frames: {path}:{dataset} holds one image, not {count}")
            return [np.asarray(data[()], dtype=np.float64)]
    except OSError as err:
        raise InputError(f"{path}: cannot read HDF5 ({err})") from None


def _frame_count(text: str) -> int | None:
    """--frames: a positive count, or None for 'all'."""
    if text == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        raise InputError(f"--frames: {text!r} is not a number of frames or 'all'") from None
    if count < 1:
        raise InputError(f"--frames: need at least 1 frame, got {count}")
    return count


def read_observed(path: str, shape: tuple[int, int], args, adc_default: float, panels: int = 0):
    """(photons per pixel, pixels to fit, format name, ADC offset subtracted, file names) of
    each frame (lists): one image, the files of a '#' template, or images of an HDF5 stack.

    ``shape``: (slow, fast) of the image in the file; a multi-panel detector's (``panels``)
    images hold its panels one above the other, as jaxdiff writes them (raw float32, HDF5)."""
    from jaxdiff.io import read_float_image, read_smv
    from jaxdiff.io.frames import frame_paths, is_template

    count = _frame_count(args.frames)
    if is_template(path):
        if count is None:
            raise InputError("--frames: 'all' is for an HDF5 stack; give a number of frames")
        try:
            names = frame_paths(path, count)
        except InputError as err:
            raise InputError(f"--observed: {err}") from None
    else:
        names = [path]
    images, usable, labels, kind, adc = [], [], [], "", 0.0
    for name in names:
        p = Path(name)
        split = panels and not p.exists() and Path(panel_file(name, 0, panels)).is_file()
        if not split and not p.is_file():
            raise InputError(f"--observed: {name}: no such file")
        head = b""
        if not split:
            with open(p, "rb") as f:
                head = f.read(8)
        if head.startswith(_HDF5):
            found = _hdf5_images(name, args.dataset, args.frame, count, shape)
            kind, adc, saturation = "hdf5", args.adc or 0.0, False
            labels += [f"{name}[{args.frame + k}]" for k in range(len(found))]
        else:
            if count != len(names):
                raise InputError(
                    f"--frames: {count} frames need a '#' template (or an HDF5 stack) in "
                    f"--observed, got {path}"
                )
            if split:  # the panels' SMV files that jaxdiff writes under this name
                found = [_panel_smv_images(name, panels, shape)]
                kind, adc, saturation = "smv", adc_default if args.adc is None else args.adc, True
            elif head.startswith(b"{"):
                if panels:
                    base = re.sub(r"_panel\d+(\.[^./]*)?$", r"\1", name)
                    base = base if base != name else "NAME.img"
                    first, last = panel_file(base, 0, panels), panel_file(base, panels - 1, panels)
                    raise InputError(
                        f"--observed: {name} is an SMV image of one panel; the model's detector "
                        f"has {panels} panels: give {base} for {first} .. {last}, or one HDF5 "
                        "or raw float32 file of all the panels"
                    )
                _, counts = read_smv(p)
                kind, adc, saturation = "smv", adc_default if args.adc is None else args.adc, True
                found = [counts.astype(np.float64)]
            elif head.startswith(_PNG):
                raise InputError(f"--observed: {name} is a PNG; give SMV, raw float32 or HDF5")
            else:
                found = [read_float_image(p, shape).astype(np.float64)]
                kind, adc, saturation = "float", args.adc or 0.0, False
            labels.append(name)
        for image in found:
            if image.shape != shape:
                raise InputError(
                    f"--observed: {name} has {image.shape[1]}x{image.shape[0]} pixels, but the "
                    f"flags describe a {shape[1]}x{shape[0]} detector"
                )
            use = np.isfinite(image)
            if saturation:
                use &= image < _SMV_SATURATION
            images.append(np.where(use, image - adc, 0.0))
            usable.append(use)
    return images, usable, kind, adc, labels


def _panel_smv_images(name: str, panels: int, shape: tuple[int, int]) -> np.ndarray:
    """The SMV files that jaxdiff writes under ``name`` for the ``panels`` panels of a
    multi-panel detector (``panel_file``), stacked into one image of ``shape`` (panel · slow,
    fast)."""
    from jaxdiff.io import read_smv

    parts = []
    for q in range(panels):
        path = Path(panel_file(name, q, panels))
        if not path.is_file():
            raise InputError(f"--observed: {path}: no such file (panel {q} of {name})")
        _, counts = read_smv(path)  # names the file if it is not an SMV image
        if counts.shape != (shape[0] // panels, shape[1]):
            raise InputError(
                f"--observed: {path} has {counts.shape[1]}x{counts.shape[0]} pixels, but the "
                f"model's panels have {shape[1]}x{shape[0] // panels}"
            )
        parts.append(counts.astype(np.float64))
    return np.concatenate(parts)


def _schedule(coarse: str, steps: int):
    from jaxdiff.refine.driver import DEFAULT_SCHEDULE

    factors = []
    for token in filter(None, (t.strip() for t in coarse.split(","))):
        try:
            value = float(token)
        except ValueError:
            raise InputError(f"--coarse: {token!r} is not a number") from None
        if not 0.0 < value <= 1.0:
            raise InputError(f"--coarse: factors must be in (0, 1], got {value:g}")
        factors.append(value)
    if steps < 1:
        raise InputError(f"--steps: must be at least 1, got {steps}")
    coarse_stage, final_stage = DEFAULT_SCHEDULE[0], DEFAULT_SCHEDULE[-1]
    stages = [coarse_stage._replace(ncells_factor=f) for f in factors]
    return (*stages, final_stage._replace(steps=steps))


def matrix_text(a: np.ndarray) -> str:
    """The A matrix in MOSFLM's layout: three rows, columns a*, b*, c* (× λ)."""
    return "".join(" ".join(f"{v:16.12f}" for v in row) + "\n" for row in a)


def _check_output(path: str | None, flag: str) -> None:
    """Fail before the fit, not after it, when an output cannot be written."""
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise InputError(f"{flag}: {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{flag}: {path}: folder {folder} is not writable")
    if Path(path).is_dir():
        raise InputError(f"{flag}: {path} is a folder")


def _listify(values: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in values.items()}


def run(argv: list[str]) -> int:
    """Parse, fit, write the A matrix, the report and the picture; returns the exit status."""
    own, flags = split_argv(argv)
    args = _parser().parse_args(own)
    import jax

    from jaxdiff import aot

    jax.config.update("jax_enable_x64", True)
    # The jaxdiff command's cache ($JAXDIFF_CACHE_DIR): a repeated fit skips its compilation.
    aot.enable()
    from jaxdiff.experiment import build
    from jaxdiff.io import atomic_output
    from jaxdiff.refine.driver import DEFAULT_SEARCH, refine, sweep_models
    from jaxdiff.refine.params import GROUPS, detector_groups, misorientation
    from jaxdiff.simulate import simulate

    groups = [g.strip() for g in args.fit.split(",") if g.strip()]
    for g in groups:
        if g not in GROUPS:
            raise InputError(f"--fit: unknown group {g!r}; choose from {', '.join(GROUPS)}")
    if not groups:
        raise InputError("--fit: give at least one parameter group")
    if args.background < 0.0 or not math.isfinite(args.background):
        raise InputError(f"--background: must be a non-negative number, got {args.background:g}")
    if args.loss == "poisson" and args.background == 0.0:
        raise InputError("--background: the Poisson loss needs a positive background")
    schedule = _schedule(args.coarse, args.steps)
    _frame_count(args.frames)
    if not 0.0 <= args.search_radius <= 90.0:
        raise InputError(f"--search-radius: give 0 to 90 degrees, got {args.search_radius:g}")
    for path, flag in (
        (args.matrix, "--matrix"),
        (args.report, "--report"),
        (args.picture, "--picture"),
        (args.expt_out, "--expt-out"),
    ):
        _check_output(path, flag)
    if not flags and not args.expt:
        raise InputError("no model: give the nanoBragg flags that describe it")
    setup = build((["--expt", args.expt] if args.expt else []) + flags)
    cfg = setup.config
    det = setup.experiment.detector
    if det.panels:
        moved = detector_groups(groups)
        if moved:
            raise InputError(
                f"--fit: {', '.join(moved)} is fitted for single-panel detectors only; the "
                f"model's detector has {det.panels} panels, each placed by its own vectors"
            )
    observed, usable, kind, adc, names = read_observed(
        args.observed,
        (det.panel_count * cfg.spixels, cfg.fpixels),
        args,
        setup.options.adc_offset,
        det.panels,
    )
    observed = [image.reshape(det.shape) for image in observed]
    usable = [use.reshape(det.shape) for use in usable]
    frames = len(observed)
    what = f"image {names[0]}" if frames == 1 else f"sweep of {frames} frames {names[0]} ..."
    size = f"{cfg.spixels}x{cfg.fpixels} pixels"
    if det.panels:
        size = f"{det.panels} panels of {size}"
    print(
        f"jaxdiff-refine: {kind} {what}, {size}; "
        f"fitting {', '.join(groups)} ({args.loss} loss, {len(schedule)} stages)"
    )
    search = None
    if args.search_radius > 0.0:
        search = DEFAULT_SEARCH._replace(
            radius_deg=args.search_radius,
            step_deg=min(DEFAULT_SEARCH.step_deg, args.search_radius),
        )

    def progress(info):
        if not args.quiet:
            print(
                f"stage {info.stage + 1}/{len(schedule)} step {info.step + 1:3d}  "
                f"loss {info.loss:.8g}  ({info.seconds:.1f} s)",
                flush=True,
            )

    try:
        result = refine(
            sweep_models(setup, frames) if frames > 1 else setup,
            observed if frames > 1 else observed[0],
            fit=groups,
            orientation="shared" if frames > 1 else "per_image",
            loss=args.loss,
            background=args.background,
            mask=usable if frames > 1 else usable[0],
            schedule=schedule,
            search=search,
            progress=progress,
        )
    except ValueError as err:
        raise InputError(f"{args.observed}: {err}") from None
    start_rot = np.asarray(setup.experiment.crystal.rotation)
    fitted = result.experiments[0]
    turned = float(misorientation(fitted.crystal.rotation, setup.experiment.crystal.rotation))
    print(
        f"done in {result.seconds:.1f} s: loss {result.initial_loss:.6g} -> "
        f"{result.final_loss:.6g}; orientation moved {math.degrees(turned):.4f} deg"
    )
    verdict = "converged" if result.converged else "NOT CONVERGED"
    print(f"{verdict}: {result.reason}")
    a = result.a_matrices[0]
    report = {
        "observed": str(args.observed),
        "frames": names,
        "orientation": "shared" if frames > 1 else "per_image",
        "converged": result.converged,
        "reason": result.reason,
        "loss_ratio": result.loss_ratio,
        "signal_ratios": result.signal_ratios.tolist(),
        "search": None
        if result.search is None
        else {
            "radius_deg": args.search_radius,
            "spots": result.search.spots,
            "start_score": result.search.start_score,
            "best_score": result.search.best_score,
            "moved_deg": math.degrees(float(np.max(np.linalg.norm(result.search.offset, axis=-1)))),
        },
        "format": kind,
        "adc_offset": adc,
        "model_flags": flags,
        "fit": groups,
        "loss": args.loss,
        "background": args.background,
        "schedule": [s._asdict() for s in schedule],
        "pixels_fitted": int(sum(np.sum(u) for u in usable)),
        "start": {"rotation_rad": start_rot.tolist()},
        "fitted": _listify(result.values),
        "rotation_change_deg": math.degrees(turned),
        "a_matrix": a.tolist(),
        "initial_loss": result.initial_loss,
        "final_loss": result.final_loss,
        "steps": len(result.history),
        "seconds": result.seconds,
        "history": result.history.tolist(),
        "stages": result.stages.tolist(),
        "units": {
            "rotation": "rad (rotation vector applied after the misset)",
            "cell": "angstrom, rad",
            "distance": "m",
            "beam_centre": "m (fast, slow)",
            "a_matrix": "columns a*, b*, c* in 1/angstrom times the wavelength in angstrom",
            "loss": "per fitted pixel",
        },
    }
    picture = None
    if args.picture:
        from jaxdiff.refine.picture import fit_picture

        model_start = np.asarray(simulate(setup.experiment, cfg))
        model_fit = np.asarray(simulate(fitted, result.configs[0]))
        picture = fit_picture(
            result.history, result.stages, observed[0], model_start, model_fit, mask=usable[0]
        )
    with atomic_output(args.matrix) as tmp:
        tmp.write_text(matrix_text(a))
    with atomic_output(args.report) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.matrix} and {args.report}")
    if args.expt_out:
        from jaxdiff.io.dials import write_experiments

        write_experiments(args.expt_out, fitted, cfg.phisteps, template=setup.expt)
        print(f"wrote {args.expt_out}")
    if picture is not None:
        from jaxdiff.refine.picture import write_png

        write_png(args.picture, picture)
        print(f"wrote {args.picture}")
    return 0 if result.converged else 3


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxdiff-refine`` command."""
    argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    error, status = guarded(run, argv, program="jaxdiff-refine")
    if error:
        return error
    if status in (0, 3):
        print(f"total {time.perf_counter() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
