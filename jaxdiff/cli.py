"""``jaxdiff``: a drop-in for the nanoBragg command line.

Same flags, units and defaults as the C program (single dash); jaxdiff's own options take two
dashes. A user's mistake prints one message and exits with status 2, leaving no output file.
``--frames N`` renders a rotation series in one process, and ``--commands FILE`` renders one
command line per line of FILE, paying start-up and compilation once.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from jaxdiff.errors import InputError

USAGE = """\
usage: jaxdiff [nanoBragg flags] [--frames N] [--hdf5 FILE] [--dtype float64|float32]
       jaxdiff --commands FILE [options added to every line]

Renders the diffraction image a nanoBragg command line describes, with the C program's flags,
units and defaults (lengths in mm, angles in degrees, wavelengths in Angstrom).

crystal      -cell a b c al be ga | -mat A.mat   -misset rx ry rz | -misset random
             -N n | -Na -Nb -Nc | -xtalsize -samplesize (mm)   -mosaic deg -mosaic_dom n
             -round_xtal -gauss_xtal -tophat_spots -fudge   -hkl FILE -default_F F
             -nointerpolate -interpolate
rotation     -phi deg -osc deg -phistep deg -phisteps n -spindle_axis x y z
beam         -lambda A | -energy eV   -dispersion % -dispsteps n   -divergence mrad
             -hdivrange -vdivrange -hdivstep -vdivstep -divsteps   -sourcefile FILE
             -fluence | -flux -exposure -beamsize   -polar k -nopolar -beam_vector x y z
detector     -distance mm -close_distance mm -pixel mm -detpixels n | -detpixels_x -detpixels_y
             -detsize mm   -Xbeam -Ybeam -Xclose -Yclose -ORGX -ORGY
             -mosflm -xds -dials -adxv -denzo -pivot beam|sample
             -fdet_vector -sdet_vector -odet_vector -twotheta_axis x y z
             -detector_rotx -detector_roty -detector_rotz -twotheta deg
             -detector_thick um -detector_thicksteps n -detector_abs um
             -curved_det -point_pixel -oversample n -roi xmin xmax ymin ymax -mask FILE -img FILE
outputs      -floatfile FILE -intfile FILE -noisefile FILE -pgmfile FILE (defaults as nanoBragg)
             -nonoise -nopgm -scale s -adc counts -pgmscale s -seed n -trace_pixel slow fast
jaxdiff      --frames N              N oscillation frames: frame k starts at phi+(k-1)*osc;
                                     a run of '#' in an output name is the frame number
                                     (image_#####.img); frame k's noise is that of -seed s+k-1
             --hdf5 FILE             also write an NXmx (NeXus) file with the model
             --expt FILE.expt        start from a DIALS experiment list (flags override it)
             --dtype float64|float32 float64 (default) is the reference path
             --phi-carryover-mode spec|c-parity
             --trace-panel P         the panel of -trace_pixel on a multi-panel detector
             --commands FILE         one command line per line of FILE (# comments)
             -h, --help              this summary

Exit status: 0 done, 2 bad input (one message naming the flag or file), 1 internal error.
"""

FDUMP = "Fdump.bin"
# per evaluation a block holds a few dozen arrays of this many bytes each (geometry, Miller
# indices, factors, accumulators); the estimate refuses problems that cannot fit long before
# the allocator would
_BYTES_PER_ITEM = 8 * 48


def _stats(image: np.ndarray, rendered: np.ndarray, roi_mask: np.ndarray):
    """nanoBragg's run summary: max over rendered pixels (first in raster order) and its pixel,
    mean and rms over rendered pixels, rmsd about that mean over the whole ROI."""
    everything = bool(rendered.all())
    values = (image.ravel() if everything else image[rendered]).astype(np.float64)
    avg = float(values.sum()) / max(values.size, 1)
    # einsum, not np.dot: a threaded BLAS dot product waits for cores the render is using
    rms = float(np.sqrt(np.einsum("i,i->", values, values) / (max(values.size, 2) - 1)))
    roi_vals = values if everything else image[roi_mask].astype(np.float64)
    roi_vals -= avg
    rmsd = float(np.sqrt(np.einsum("i,i->", roi_vals, roi_vals) / (max(roi_vals.size, 2) - 1)))
    masked = image if everything else np.where(rendered, image, -np.inf)
    where = np.unravel_index(np.argmax(masked), image.shape)
    max_i = float(masked[where]) if masked[where] > 0 else 0.0
    return max_i, where, avg, rms, rmsd


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 36


def check_size(setup) -> None:
    """Refuse a problem whose smallest block of work cannot fit in memory, naming the flag
    that drives it (the sub-pixel count comes from -oversample, or from the crystal size when
    the C program's rule picks it)."""
    cfg, exp = setup.config, setup.experiment
    per_pixel = cfg.thicksteps * cfg.oversample**2 * int(exp.beam.source_dirs.shape[0])
    need = max(per_pixel, 1) * _BYTES_PER_ITEM
    have = _memory_bytes()
    if need <= have // 2:
        return
    o = setup.options
    if o.oversample > 0:
        driver = f"-oversample {o.oversample}"
    else:
        driver = (
            f"the crystal size (-N/-Na/-Nb/-Nc/-xtalsize: {o.Na:g} x {o.Nb:g} x {o.Nc:g} cells) "
            f"through the automatic -oversample {cfg.oversample}"
        )
    raise InputError(
        f"{driver}: one pixel needs {per_pixel:.3g} evaluations at a time "
        f"({need / 2**30:.3g} GiB), more than this machine's {have / 2**30:.3g} GiB; "
        "give a smaller -oversample or crystal"
    )


def _frame_names(name: str, frames: int) -> list[str]:
    """Output names of each frame: the '#' run numbers them; a name without one gets
    ``_#####`` before its extension when there are several frames."""
    from jaxdiff.io.frames import frame_paths, is_template

    if frames > 1 and not is_template(name):
        path = Path(name)
        name = str(path.with_name(f"{path.stem}_#####{path.suffix}"))
    return frame_paths(name, frames)


def _header_lines(h: dict, phi0: float) -> list[str]:
    from jaxdiff.io import c_header_lines

    return c_header_lines(
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
        phi0,
        h["osc"],
        h["twotheta"],
    )


def prepare(argv: list[str]):
    """Set up the process (float64, kept programs) and resolve a command line."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxdiff import aot

    aot.enable()
    from jaxdiff.experiment import build

    setup = build(argv)
    setup.write_fdump()  # the C program's structure-factor cache, in the current folder
    return setup


def run(argv: list[str]) -> int:
    """Render the image(s) a nanoBragg command line describes and write its output files."""
    job = render_job(prepare(argv))
    next(job)
    for _ in job:
        pass
    return 0


def render_job(setup):
    """Render a built set-up (every frame of it) and write the C program's outputs.

    A generator: the first step checks the problem and starts the first render, which runs
    while the caller does other work (the next command line's set-up); the rest waits for the
    images and writes them.
    """
    from jaxdiff import aot
    from jaxdiff.io import (
        auto_int_scale,
        auto_pgm_scale,
        fmt_g,
        noise_image,
        to_int_image,
        write_float_image,
        write_pgm,
        write_smv,
    )
    from jaxdiff.simulate import rotation_frames, simulate

    o, cfg = setup.options, setup.config
    check_size(setup)
    panels = setup.experiment.detector.panels
    _check_trace_panel(o, panels)
    frames = o.frames
    names = {
        "float": _frame_names(o.floatfile, frames),
        "int": _frame_names(o.intfile, frames),
        "pgm": _frame_names(o.pgmfile, frames),
        "noise": _frame_names(o.noisefile, frames),
    }
    osc = setup.header["osc"]
    phis = [o.phi0 + k * osc for k in range(frames)]
    print(
        f"jaxdiff: {cfg.spixels}x{cfg.fpixels} pixels, {setup.steps} steps per pixel, "
        f"{cfg.dtype}, phi carryover {cfg.carryover}"
        + (f", {frames} frames of {np.degrees(osc):g} deg" if frames > 1 else "")
    )
    if frames == 1:
        experiments = [setup.experiment]
    else:
        experiments = rotation_frames(setup.experiment, frames, osc, o.phi0)

    def dispatch(k):
        return aot.call("simulate", simulate, {"cfg": cfg}, experiments[k])

    # a multi-panel image is handled as its panels stacked along slow: (panel · slow, fast)
    roi_mask = np.tile(cfg.roi_mask(), (max(panels, 1), 1))
    rendered = roi_mask & (np.asarray(setup.experiment.mask).reshape(roi_mask.shape) != 0)
    base_seed = o.seed if o.seed is not None else -int(time.time())
    keep = {"float": [], "int": [], "noise": []}
    start = time.perf_counter()
    pending = dispatch(0)
    yield
    for k in range(frames):
        image = np.asarray(pending).astype(np.float32).reshape(roi_mask.shape)
        if k + 1 < frames:  # the next frame renders while this one is written
            pending = dispatch(k + 1)
        if frames > 1:
            print(
                f"frame {k + 1}/{frames}: phi {np.degrees(phis[k]):g} deg, "
                f"{time.perf_counter() - start:.2f} s"
            )
        else:
            print(f"rendered in {time.perf_counter() - start:.2f} s")
        if k == 0 and o.trace_pixel is not None:
            from jaxdiff.trace import trace_lines

            print("\n".join(trace_lines(setup, *o.trace_pixel, panel=o.trace_panel)))

        max_i, where, avg, rms, rmsd = _stats(image, rendered, roi_mask)
        # C reports the position of the maximum pixel's last sub-pixel, in metres
        panel, row = divmod(int(where[0]), cfg.spixels)
        sub = float(np.ravel(setup.experiment.detector.pixel_size)[panel]) / cfg.oversample
        last = cfg.oversample - 0.5
        at = (sub * (where[1] * cfg.oversample + last), sub * (row * cfg.oversample + last))
        print(
            f"max_I = {fmt_g(max_i)}  at {fmt_g(at[0])} {fmt_g(at[1])} "
            f"({f'panel {panel}, ' if panels else ''}pixel slow {row}, fast {where[1]})"
        )
        print(f"mean= {fmt_g(avg)} rms= {fmt_g(rms)} rmsd= {fmt_g(rmsd)}")

        write_float_image(names["float"][k], image)
        print(f"wrote {names['float'][k]}")
        scale = o.intfile_scale if o.intfile_scale > 0.0 else auto_int_scale(max_i)
        int_image = to_int_image(image, scale, o.adc_offset, roi_mask)
        for name, part, header in _panel_parts(names["int"][k], int_image, setup):
            write_smv(name, part, _header_lines(header, phis[k]))
        print(f"intfile_scale = {fmt_g(scale)}")
        print(f"wrote {_written(names['int'][k], panels)}")
        if o.write_pgm:
            pgm_scale = o.pgm_scale if o.pgm_scale > 0.0 else auto_pgm_scale(rmsd, scale)
            for name, part, _ in _panel_parts(names["pgm"][k], image, setup):
                write_pgm(name, part, pgm_scale, cfg.roi_mask())
            print(f"wrote {_written(names['pgm'][k], panels)}")
        noisy = None
        if o.calculate_noise:
            noisy, photons, overloads = noise_image(image, base_seed - k, o.adc_offset, roi_mask)
            for name, part, header in _panel_parts(names["noise"][k], noisy, setup):
                write_smv(name, part, _header_lines(header, phis[k]))
            print(f"{photons:.0f} photons on noise image ({overloads} overloads)")
            print(f"wrote {_written(names['noise'][k], panels)}")
        if o.hdf5:
            shape = setup.experiment.detector.shape
            keep["float"].append(image.reshape(shape))
            keep["int"].append(int_image.reshape(shape))
            keep["noise"].append(None if noisy is None else noisy.reshape(shape))
    if o.hdf5:
        _write_hdf5(o.hdf5, keep, experiments, setup, osc)


def _check_trace_panel(o, panels: int) -> None:
    """-trace_pixel on a multi-panel detector needs --trace-panel, which must name a panel."""
    count = max(panels, 1)
    if o.trace_panel is not None:
        if o.trace_pixel is None:
            raise InputError("--trace-panel: it names the panel of -trace_pixel S F, not given")
        if o.trace_panel >= count:
            raise InputError(
                f"--trace-panel: panel {o.trace_panel} outside 0..{count - 1} (the detector's "
                f"{count} panel{'s' if count > 1 else ''})"
            )
    elif panels and o.trace_pixel is not None:
        raise InputError(
            f"-trace_pixel: the detector has {panels} panels; say which with --trace-panel P"
        )


def panel_file(name: str, panel: int, panels: int) -> str:
    """The file of one panel's image: ``_panelP`` (zero-padded) before the extension."""
    path = Path(name)
    return str(path.with_name(f"{path.stem}_panel{panel:0{len(str(panels - 1))}d}{path.suffix}"))


def _panel_parts(name: str, image: np.ndarray, setup):
    """(file name, image, SMV header values) of each panel of a stacked image; the image and
    ``name`` themselves for a single panel."""
    panels = setup.experiment.detector.panels
    if not panels:
        return [(name, image, setup.header)]
    parts = image.reshape(panels, -1, image.shape[-1])
    return [(panel_file(name, p, panels), parts[p], setup.panel_headers[p]) for p in range(panels)]


def _written(name: str, panels: int) -> str:
    if not panels:
        return name
    return f"{panel_file(name, 0, panels)} .. {panel_file(name, panels - 1, panels)}"


def _write_hdf5(path: str, keep: dict, experiments: list, setup, osc: float) -> None:
    from jaxdiff.io.hdf5 import write_hdf5

    noise = keep["noise"]
    write_hdf5(
        path,
        np.stack(keep["float"]),
        experiments,
        setup.config,
        oscillation=(setup.options.phi0, osc),
        int_images=np.stack(keep["int"]),
        noise_images=np.stack(noise) if noise and noise[0] is not None else None,
    )
    print(f"wrote {path}")


def guarded(fn, *args, where: str = "", program: str = "jaxdiff") -> tuple[int, object]:
    """``fn(*args)`` as ``(0, result)``; a user's mistake is one line and ``(2, None)``;
    anything else is a bug in jaxdiff, reported in one line as ``(1, None)``
    (``JAXDIFF_DEBUG=1`` shows the traceback). Every jaxdiff command runs through this."""
    try:
        return 0, fn(*args)
    except InputError as err:
        print(f"{where}{program}: error: {err}", file=sys.stderr)
        return 2, None
    except Exception as err:  # noqa: BLE001 - the one place that turns a bug into a message
        if os.environ.get("JAXDIFF_DEBUG"):
            raise
        if "RESOURCE_EXHAUSTED" in str(err) or isinstance(err, MemoryError):
            print(f"{where}{program}: error: out of memory: {str(err)[:200]}", file=sys.stderr)
            return 2, None
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"{where}{program}: internal error: {type(err).__name__}: {first} "
            "(a bug in jaxdiff; JAXDIFF_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1, None


def command_lines(path: str) -> list[tuple[int, list[str]]]:
    """The command lines of a --commands file: (line number, arguments) for each line that is
    not blank or a ``#`` comment; a leading program name (nanoBragg, jaxdiff) is dropped."""
    from jaxdiff.io._text import read_lines

    result = []
    for number, line in enumerate(read_lines(path, "command file"), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            args = shlex.split(text, comments=True)
        except ValueError as err:
            raise InputError(f"{path}:{number}: {err}") from None
        if args and not args[0].startswith("-") and Path(args[0]).name in ("nanoBragg", "jaxdiff"):
            args = args[1:]
        result.append((number, args))
    return result


def _started(args: list[str]):
    """Set up one command line and start its render: the job, or an error (a Python error
    from the set-up is reported like any other)."""
    job = render_job(prepare(args))
    next(job)
    return job


def _finish(job) -> None:
    for _ in job:
        pass


def run_commands(path: str, extra: list[str]) -> int:
    """Render every command line of ``path`` in this process (``extra`` is added to each).

    Each line gets its own outputs and its own errors, reported with its line number; a bad
    line does not stop the others and makes the exit status 2 at the end. A line's render
    starts before the previous line's files are written, so set-up and writing overlap it.
    """
    try:
        lines = command_lines(path)
    except InputError as err:
        print(f"jaxdiff: error: {err}", file=sys.stderr)
        return 2
    failed = []
    previous = None  # (number, job) of the line whose files are still to be written

    def finish(number, job):
        if guarded(_finish, job, where=f"{path}:{number}: ")[0] != 0:
            failed.append(number)

    for number, args in lines:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status, job = guarded(_started, args + extra, where=f"{path}:{number}: ")
        if previous is not None:
            finish(*previous)
        print(f"== {path}:{number}: {shlex.join(args)}")
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())
        previous = (number, job) if status == 0 else None
        if status != 0:
            failed.append(number)
    if previous is not None:
        finish(*previous)
    if failed:
        numbers = ", ".join(str(n) for n in sorted(failed))
        print(f"jaxdiff: {len(failed)} of {len(lines)} lines failed: {numbers}", file=sys.stderr)
        return 2
    return 0


def _second_cpu_device() -> None:
    """Give the process a second CPU device: each command line's small set-up programs run
    there while the previous line's image renders on the first (a device runs its programs
    one after the other). Left alone where XLA_FLAGS sets the device count or JAX has started."""
    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    with contextlib.suppress(RuntimeError):  # the backend is up already: keep its devices
        jax.config.update("jax_num_cpu_devices", 2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxdiff`` command (``argv`` None: run as the program, which may
    set up the process)."""
    if argv is None and "--commands" in sys.argv[1:]:
        _second_cpu_device()
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "-help", "--help") for arg in argv):
        print(USAGE, end="")
        return 0
    if "--commands" in argv:
        i = argv.index("--commands")
        if i + 1 >= len(argv):
            print("jaxdiff: error: --commands: missing file name", file=sys.stderr)
            return 2
        return run_commands(argv[i + 1], argv[:i] + argv[i + 2 :])
    return guarded(run, argv)[0]


if __name__ == "__main__":
    sys.exit(main())
