"""Per-pixel traces: the number format, the CLI, the record against the simulator, gradients,
compilation reuse and the parity example."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN, REPO, golden_argv

from jaxdiff.cli import main
from jaxdiff.experiment import build
from jaxdiff.io import fmt_g
from jaxdiff.simulate import simulate
from jaxdiff.trace import _trace_kernel, pixel_lines, trace_lines, trace_pixel
from jaxdiff.trace_compare import compare, format_report, parse_trace

LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def c_printf(fmt: str, x: float) -> str:
    buf = ctypes.create_string_buffer(64)
    LIBC.snprintf(buf, 64, fmt.encode(), ctypes.c_double(x))
    return buf.value.decode()


def test_fmt_g_is_c_printf():
    rng = np.random.default_rng(7)
    values = list(rng.standard_normal(2000) * 10.0 ** rng.integers(-320, 300, 2000))
    values += [0.0, -0.0, 1e-6, 1e-5, 1e-4, 0.1, 1.0, 100.0, 1e15, 1e16, 123456789012345678.0]
    values += [0.5, 2.5, 1e-300, 5e-324, 1.7976931348623157e308, 154.652465820312]
    values += [math.inf, -math.inf, math.nan, -math.nan]
    for x in values:
        assert fmt_g(x, 15) == c_printf("%.15g", x), x
        assert fmt_g(x) == c_printf("%g", x), x
    assert fmt_g(-0.0) == "-0" and fmt_g(1e-6) == "1e-06" and fmt_g(100.0) == "100"


def test_fmt_g_reprints_every_golden_value():
    """Every number in the golden TRACE_C lines, read and printed again, is the same text."""
    count = 0
    for path in GOLDEN.glob("*/trace_*_*.txt"):
        for line in parse_trace(path.read_text()).lines:
            if line.numbers is None:
                continue
            tokens = [t.strip("[]") for t in line.text.replace(";", " ").split()]
            for token in filter(None, tokens):
                value = token.rpartition("=" if "=" in token else ":")[2]
                assert fmt_g(float(value), 15) == value, (path, line.name, value)
                count += 1
    assert count > 30000


def test_cli_trace_prints_the_pixel_and_leaves_the_image_alone(workdir, capsys):
    """-trace_pixel adds TRACE_PY lines that match the C program's trace (pixel (0, 0) of a
    c-parity φ sweep: the run's first φ loop) and writes the same float image, byte for byte."""
    argv = golden_argv("phi_osc5_cparity")
    assert main(argv) == 0
    plain = (workdir / "float.bin").read_bytes()
    capsys.readouterr()
    assert main([*argv, "-trace_pixel", "0", "0"]) == 0
    out = capsys.readouterr().out
    assert (workdir / "float.bin").read_bytes() == plain
    assert out.count("TRACE_PY_PHI ") == 10
    report = compare(
        parse_trace((GOLDEN / "phi_osc5_cparity" / "trace_0_0.txt").read_text()), parse_trace(out)
    )
    assert report["first"] is None, format_report(report)
    image = np.frombuffer(plain, "<f4").reshape(128, 128)
    final = next(r for r in report["rows"] if r.name == "floatimage_accumulated")
    assert np.float32(final.jaxdiff) == image[0, 0]


# Every per-pixel feature at once on a tiny detector: sensor layers and absorption, sub-pixels,
# three sources, φ from 0 (c-parity), mosaic domains, water, a -dmin cut that drops some
# sub-pixels, and a ROI whose first pixel is the fresh one.
RICH = (
    "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 3 -lambda 1.0 -distance 30 "
    "-pixel 0.5 -detpixels 7 -oversample 2 -phi 0 -osc 2 -phisteps 3 -mosaic 0.5 -mosaic_dom 2 "
    "-hdivrange 0.5 -hdivsteps 3 -detector_thick 100 -detector_thicksteps 2 -detector_abs 300 "
    "-water 50 -dmin 15 -roi 1 6 0 5"
).split()


@pytest.mark.parametrize(
    "argv",
    [
        [*RICH, "--phi-carryover-mode", "c-parity"],
        [*RICH, "-oversample_thick", "-oversample_polar", "-oversample_omega", "-nopolar"],
    ],
    ids=["c-parity", "oversample-factors"],
)
def test_trace_value_is_the_simulated_pixel(workdir, argv):
    """The trace's final value is the simulator's pixel: the image kernel's own sum and
    scaling on a block of that one pixel (equal but for the last bit: a block of another size
    may round a sum differently)."""
    setup = build(argv, workdir)
    image = np.asarray(simulate(setup.experiment, setup.config))
    passes, fresh = [], []
    for s in range(7):
        for f in range(7):
            r = trace_pixel(setup.experiment, setup.config, s, f)
            assert float(r["I_pixel_final"]) == pytest.approx(image[s, f], rel=1e-15, abs=0.0)
            passes.append(np.any(r["passes"]) & r["rendered"])
            fresh.append(bool(r["fresh"]))
            if not r["rendered"]:
                assert pixel_lines(r, setup.config) == []
    # The -dmin cut drops whole pixels, so the first pixel of the ROI (slow 0, fast 1) is not
    # the fresh one in c-parity: the first with an evaluation that passes is.
    assert not passes[1] and any(passes)
    c_parity = setup.config.carryover == "c-parity"
    assert fresh == [c_parity and i == passes.index(True) for i in range(49)]


def test_tricubic_switch_off_pixel(workdir):
    """Around the pixel where tricubic interpolation switches off, the trace gives the image."""
    setup = build(golden_argv("hkl_tricubic_out_of_range"), workdir)
    image = np.fromfile(GOLDEN / "hkl_tricubic_out_of_range" / "float.bin", "<f4").reshape(128, 128)
    used = []
    for f in range(68, 76):
        r = trace_pixel(setup.experiment, setup.config, 0, f)
        assert float(r["floatimage_accumulated"]) == pytest.approx(image[0, f], rel=1e-6)
        used.append(bool(np.all(r["tricubic"])))
    assert used == [f < 72 for f in range(68, 76)]


def test_pixel_outside_the_roi_prints_set_up_only(workdir):
    setup = build(golden_argv("roi"), workdir)
    record = trace_pixel(setup.experiment, setup.config, 0, 0)
    assert not bool(record["rendered"])
    lines = trace_lines(setup, 0, 0)
    assert lines[-1] == "TRACE_CONFIG: tracing pixel (spixel=0, fpixel=0)"
    assert all(line.startswith("TRACE_PY:") for line in lines[:-1])


def _with_rotation(exp, rotation):
    return dataclasses.replace(exp, crystal=dataclasses.replace(exp.crystal, rotation=rotation))


@pytest.mark.parametrize(
    "rotation", [(0.0, 0.0, 0.0), (2e-3, -1e-3, 3e-3)], ids=["zero", "generic"]
)
def test_gradient_of_F_latt_wrt_rotation(workdir, rotation):
    """d F_latt / d rotation of the traced pixel (φ step 2, a c-parity φ sweep) is finite and
    agrees with central finite differences, at the rotation vector's singular point 0 too."""
    setup = build(golden_argv("phi_osc5_cparity"), workdir)
    exp, cfg = setup.experiment, setup.config

    def f_latt(rot):
        return trace_pixel(_with_rotation(exp, rot), cfg, 80, 73)["F_latt"][0, 0, 0, 2, 0]

    rot0 = jnp.asarray(rotation)
    grad = np.asarray(jax.jit(jax.grad(f_latt))(rot0))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0.0)
    h = 1e-7
    fd = [
        (float(f_latt(rot0.at[i].add(h))) - float(f_latt(rot0.at[i].add(-h)))) / (2 * h)
        for i in range(3)
    ]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.max(np.abs(fd)))


def test_gradient_of_pixel_wrt_distance(workdir):
    setup = build(golden_argv("triclinic_misset"), workdir)
    exp, cfg = setup.experiment, setup.config

    def pixel(distance):
        det = dataclasses.replace(exp.detector, distance=distance)
        return trace_pixel(dataclasses.replace(exp, detector=det), cfg, 46, 45)["I_pixel_final"]

    d0 = exp.detector.distance
    grad = float(jax.grad(pixel)(d0))
    h = 1e-9
    fd = (float(pixel(d0 + h)) - float(pixel(d0 - h))) / (2 * h)
    assert math.isfinite(grad) and grad == pytest.approx(fd, rel=1e-5)


def test_other_pixels_and_values_do_not_recompile(workdir):
    setup = build(golden_argv("mosaic"), workdir)
    exp, cfg = setup.experiment, setup.config
    jax.block_until_ready(trace_pixel(exp, cfg, 17, 84))
    size = _trace_kernel._cache_size()
    jax.block_until_ready(trace_pixel(exp, cfg, 46, 45))
    det = dataclasses.replace(exp.detector, distance=exp.detector.distance * 1.01)
    jax.block_until_ready(trace_pixel(dataclasses.replace(exp, detector=det), cfg, 18, 84))
    assert _trace_kernel._cache_size() == size


def test_parity_example_runs(tmp_path):
    script = REPO / "examples" / "parity_experiment.py"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert out.count("phi_tic") == 2 and "differ at φ step [0] only" in out
    assert "exactly those of φ step 9" in out
    assert "first divergence rot_a_angstroms #1" in out
    assert not list(tmp_path.iterdir())  # Fdump.bin went to a temporary folder


def test_float32_trace_is_the_float32_image(workdir):
    """In float32 the trace's final value is the float32 image's own pixel at the brightest
    pixels (P3-like: 10 φ steps × 10 mosaic domains × 2² sub-pixels): both take the run's
    precision policy and the pixel's sum and scaling from the image kernel."""
    argv = (
        "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 5 -lambda 1.0 -distance 100 "
        "-pixel 0.4 -detpixels 24 -oversample 2 -phi 0 -osc 1 -phisteps 10 -mosaic 0.3 "
        "-mosaic_dom 10 -mosaic_seed 7 --dtype float32"
    ).split()
    setup = build(argv, workdir)
    image = np.asarray(simulate(setup.experiment, setup.config))
    assert image.dtype == np.float32
    brightest = np.argsort(image, axis=None)[-5:]
    for s, f in zip(*np.unravel_index(brightest, image.shape), strict=True):
        r = trace_pixel(setup.experiment, setup.config, int(s), int(f))
        assert r["I_pixel_final"].dtype == np.float32
        assert float(r["I_pixel_final"]) == pytest.approx(float(image[s, f]), rel=1e-6, abs=0.0)
