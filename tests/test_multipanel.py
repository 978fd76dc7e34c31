"""Multi-panel detectors: a 4-panel detector written by dxtbx (a turned group, gaps between the
panels, one panel tilted), read from its experiment list, traced, rendered, differentiated,
written as NXmx and rendered as a batch of crystals.

dxtbx runs in the system Python (``/usr/bin/python3``) in a subprocess; the tests fail, never
skip, when it is missing. dxtbx's fractional Miller indices are A⁻¹·(s1 − s0) at pixel centres
(``Panel.get_pixel_lab_coord``); jaxdiff's are the traced ``hkl_frac`` of the same pixel of the
same panel. Both sides work in float64: agreement to 1e-6 leaves room only for rounding.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import Detector
from jaxdiff.detector import panel_geometries
from jaxdiff.io.dials import read_experiment, write_experiments
from jaxdiff.io.hdf5 import read_hdf5, write_hdf5
from jaxdiff.trace import trace_pixel

SYSTEM_PYTHON = "/usr/bin/python3"
PANELS = 4
IMAGE = (16, 20)  # (fast, slow) pixels of every panel
PIXELS = [(0, 0), (19, 15), (7, 11), (13, 2), (19, 0)]  # (slow, fast)
HKL_TOLERANCE = 1e-6  # fractional Miller index
MM_TOLERANCE = 1e-6  # pixel positions [mm]

DXTBX = textwrap.dedent(
    r"""
    import json, random, sys
    from cctbx import uctbx
    from dxtbx.model import BeamFactory, Crystal, Detector, Experiment, ExperimentList
    from dxtbx.model.experiment_list import ExperimentListFactory
    from scitbx import matrix

    job = json.loads(sys.argv[1])

    def rot(axis, deg):
        return matrix.col(axis).normalize().axis_and_angle_as_r3_rotation_matrix(deg, deg=True)

    if job["mode"] == "write":
        random.seed(3)
        det = Detector()
        root = det.hierarchy()
        turn = rot((0.1, 0.2, 1.0), 5.0)
        root.set_frame(turn * matrix.col((1, 0, 0)), turn * matrix.col((0, 1, 0)),
                       (1.0, -2.0, -60.0))
        for i in range(4):  # 8 x 10 mm panels on a 9 x 11 mm grid: 1 mm gaps
            p = root.add_panel()
            p.set_name("panel%d" % i)
            p.set_type("SENSOR_PAD")
            p.set_image_size((16, 20))
            p.set_pixel_size((0.5, 0.5))
            p.set_trusted_range((-1, 1e6))
            fast, slow = matrix.col((1, 0, 0)), matrix.col((0, -1, 0))
            if i == 3:
                tilt = rot((1.0, 0.3, 0.0), 10.0)
                fast, slow = tilt * fast, tilt * slow
            p.set_local_frame(fast, slow, (-9.0 + 9.0 * (i % 2), 11.0 - 11.0 * (i // 2), 0.0))
        cell = uctbx.unit_cell((61.2, 73.5, 88.1, 83.0, 97.0, 108.0))
        u = rot([random.gauss(0, 1) for _ in range(3)], random.uniform(0, 360))
        o = matrix.sqr(cell.orthogonalization_matrix())
        a, b, c = (u * matrix.col(o.transpose().elems[3 * i : 3 * i + 3]) for i in range(3))
        crystal = Crystal(a, b, c, space_group_symbol="P1")
        experiment = Experiment(beam=BeamFactory.simple(0.9795), detector=det, crystal=crystal)
        ExperimentList([experiment]).as_file(job["path"])
    if job["mode"] == "nxmx":
        expt = ExperimentListFactory.from_filenames([job["path"]])[0]
    else:
        expt = ExperimentListFactory.from_json_file(job["path"], check_format=False)[0]

    out = {"positions": [], "hkl": [], "raw": [], "names": []}
    s0 = matrix.col(expt.beam.get_s0())
    for panel in expt.detector:
        lab = [matrix.col(panel.get_pixel_lab_coord((f + 0.5, s + 0.5)))
               for s, f in job["pixels"]]
        out["positions"].append([list(v) for v in lab])
        out["names"].append(panel.get_name())
        if expt.crystal is not None:
            a_inv = matrix.sqr(expt.crystal.get_A()).inverse()
            wavelength = expt.beam.get_wavelength()
            out["hkl"].append([list(a_inv * (v.normalize() / wavelength - s0)) for v in lab])
    if job["mode"] == "nxmx":
        raw = expt.imageset.get_raw_data(0)
        out["raw"] = [list(r.as_numpy_array().ravel().astype(float)) for r in raw]
    print(json.dumps(out))
    """
)


def dxtbx(mode: str, path) -> dict:
    """Run the dxtbx script: ``write`` the experiment list (and read it back), ``load`` an
    experiment list, or load an ``nxmx`` file. Positions and hkl are (panel, pixel, 3)."""
    job = dict(mode=mode, path=str(path), pixels=PIXELS)
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", DXTBX, json.dumps(job)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"dxtbx script failed (is dxtbx installed?):\n{done.stderr}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("positions", "hkl"):
        out[key] = np.asarray(out[key])
    return out


@pytest.fixture(scope="module")
def four_panels(tmp_path_factory):
    """The dxtbx experiment list, dxtbx's figures for it, and jaxdiff's experiment of it."""
    path = tmp_path_factory.mktemp("multipanel") / "four.expt"
    ref = dxtbx("write", path)
    dials = read_experiment(path)
    exp = jaxdiff.assemble(
        dials.beam(), dials.crystal(ncells=(5, 5, 5)), dials.detector(), default_F=100.0
    )
    return path, ref, exp, jaxdiff.config_for(exp, oversample=1)


def lab_positions_mm(exp) -> np.ndarray:
    """jaxdiff's pixel-centre positions (panel, pixel, 3) [mm] at PIXELS."""
    geom = panel_geometries(exp.detector, exp.beam.direction)
    size = np.asarray(exp.detector.pixel_size)[:, None, None]
    s = np.array([p[0] for p in PIXELS], dtype=float)[None, :, None] + 0.5
    f = np.array([p[1] for p in PIXELS], dtype=float)[None, :, None] + 0.5
    pix0, fast, slow = (np.asarray(v)[:, None, :] for v in (geom.pix0, geom.fast, geom.slow))
    return 1e3 * (pix0 + size * (f * fast + s * slow))


def test_the_experiment_list_is_read_as_four_panels(four_panels):
    _, ref, exp, _ = four_panels
    det = exp.detector
    assert det.panels == PANELS and det.image_size == IMAGE
    assert det.shape == (PANELS, IMAGE[1], IMAGE[0]) and exp.mask.shape == det.shape
    err = np.max(np.abs(lab_positions_mm(exp) - ref["positions"]))
    print(f"pixel positions against dxtbx's: {err:.2e} mm")
    assert err < MM_TOLERANCE


def test_traced_miller_indices_equal_dxtbx_on_every_panel(four_panels):
    _, ref, exp, cfg = four_panels
    worst = 0.0
    for panel in range(PANELS):
        for k, (s, f) in enumerate(PIXELS):
            hkl = np.asarray(trace_pixel(exp, cfg, s, f, panel=panel)["hkl_frac"])
            err = np.max(np.abs(hkl[0, 0, 0, 0, 0] - ref["hkl"][panel, k]))
            assert err < HKL_TOLERANCE, (panel, s, f, err)
            worst = max(worst, err)
    print(f"fractional hkl against dxtbx's, {PANELS} panels x {len(PIXELS)} pixels: {worst:.2e}")


def test_each_panel_renders_as_its_own_single_panel_detector(four_panels):
    _, _, exp, cfg = four_panels
    image = np.asarray(jaxdiff.simulate(exp, cfg))
    assert image.shape == (PANELS, IMAGE[1], IMAGE[0])
    assert all(image[p].max() > 0.0 for p in range(PANELS))
    for p in (0, 3):
        one = dataclasses.replace(exp, detector=exp.detector.panel(p), mask=exp.mask[p])
        # the map over panels is compiled as one program: float64 rounding may differ
        np.testing.assert_allclose(np.asarray(jaxdiff.simulate(one, cfg)), image[p], rtol=1e-10)


def test_dxtbx_loads_the_nxmx_file_with_the_same_pixels(four_panels, tmp_path):
    _, ref, exp, cfg = four_panels
    image = np.asarray(jaxdiff.simulate(exp, cfg))
    path = tmp_path / "four.h5"
    write_hdf5(path, image, exp, cfg)
    loaded = dxtbx("nxmx", path)
    err = np.max(np.abs(loaded["positions"] - ref["positions"]))
    print(f"NXmx pixel positions against the experiment list's (dxtbx): {err:.2e} mm")
    assert err < MM_TOLERANCE
    for p in range(PANELS):
        np.testing.assert_array_equal(
            np.asarray(loaded["raw"][p], dtype=np.float32), image[p].astype(np.float32).ravel()
        )
    images, experiments, config = read_hdf5(path)
    assert images.shape == (1, *image.shape) and config == cfg
    np.testing.assert_array_equal(images[0], image.astype(np.float32))
    back = experiments[0]
    assert back.detector.panels == PANELS
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(exp), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_experiment_list_written_back_keeps_every_panel(four_panels, tmp_path):
    path, ref, exp, _ = four_panels
    moved = dataclasses.replace(
        exp.detector, beam_f=exp.detector.beam_f + np.array([0.0, 1e-4, 0.0, -2e-4])
    )
    out = tmp_path / "moved.expt"
    write_experiments(out, dataclasses.replace(exp, detector=moved), template=read_experiment(path))
    loaded = dxtbx("load", out)
    expected = lab_positions_mm(dataclasses.replace(exp, detector=moved))
    assert np.max(np.abs(loaded["positions"] - expected)) < MM_TOLERANCE
    assert np.max(np.abs(loaded["positions"][1] - ref["positions"][1])) > 0.05


def test_gradients_with_respect_to_each_panel_equal_finite_differences(four_panels):
    """Reverse-mode gradients of a weighted image sum with respect to each panel's in-plane
    position (beam_f, beam_s), its distance (close_distance) and its rotations about x, y, z
    equal central differences; a panel's leaves do not move another panel's pixels."""
    _, _, exp, cfg = four_panels
    weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, exp.detector.shape))

    def loss(det, panel=None):
        image = jaxdiff.simulate(dataclasses.replace(exp, detector=det), cfg)
        w = weights if panel is None else weights.at[panel].set(0.0)
        return jnp.sum(image * w)

    loss_jit = jax.jit(loss, static_argnums=1)
    grad = jax.grad(loss)(exp.detector)
    steps = {"beam_f": 1e-7, "beam_s": 1e-7, "close_distance": 1e-7, "rotations": 1e-7}
    checked, worst = 0, 0.0
    for name, h in steps.items():
        value = np.asarray(getattr(exp.detector, name))
        for p in range(PANELS):
            for idx in [(p,)] if value.ndim == 1 else [(p, k) for k in range(3)]:
                up, down = value.copy(), value.copy()
                up[idx] += h
                down[idx] -= h
                fd = (
                    loss_jit(dataclasses.replace(exp.detector, **{name: up}))
                    - loss_jit(dataclasses.replace(exp.detector, **{name: down}))
                ) / (2 * h)
                ad = np.asarray(getattr(grad, name))[idx]
                assert abs(ad) > 0.0, (name, idx)
                assert abs(fd - ad) <= 1e-5 * abs(ad), (name, idx, float(fd), float(ad))
                worst = max(worst, float(abs(fd - ad) / abs(ad)))
                checked += 1
    assert checked == PANELS * 6
    print(f"per-panel gradients against central differences: worst relative {worst:.1e}")
    # panel 2's leaves do not reach the other panels' pixels
    others = jax.grad(lambda d: loss(d, panel=2))(exp.detector)
    # (weights zeroed on panel 2 only: panel 2's gradient comes from nowhere else)
    for name in steps:
        assert np.all(np.asarray(getattr(others, name))[2] == 0.0), name


def test_multi_panel_mistakes_are_refused(four_panels):
    _, _, exp, cfg = four_panels
    with pytest.raises(ValueError, match="c-parity"):
        jaxdiff.simulate(exp, dataclasses.replace(cfg, carryover="c-parity"))
    with pytest.raises(ValueError, match="panel 4 outside 0..3"):
        trace_pixel(exp, cfg, 0, 0, panel=4)
    with pytest.raises(ValueError, match="say which panel"):
        trace_pixel(exp, cfg, 0, 0)
    with pytest.raises(ValueError, match="mask is 16x20, the detector 4 panels of 16x20"):
        jaxdiff.simulate(dataclasses.replace(exp, mask=jnp.ones((20, 16))), cfg)
    small = Detector.from_vectors((1, 0, 0), (0, -1, 0), (0, 0, -0.1), 1e-4, (8, 8))
    with pytest.raises(ValueError, match="share one image size"):
        Detector.from_panels([exp.detector.panel(0), small])


def test_the_command_renders_and_traces_every_panel(four_panels, tmp_path, monkeypatch, capsys):
    """``jaxdiff --expt`` of the 4-panel file: the float file is (panel, slow, fast), the SMV
    images one file per panel, the NXmx file holds the four modules, and -trace_pixel traces
    the --trace-panel panel; single-panel flags and an unnamed or missing panel are refused."""
    from jaxdiff.cli import main
    from jaxdiff.io import read_smv

    path, ref, exp, cfg = four_panels
    monkeypatch.chdir(tmp_path)
    model = ["--expt", str(path), "-default_F", "100", "-N", "5", "-oversample", "1"]
    outputs = ["-floatfile", "f.bin", "-intfile", "i.img", "-nopgm", "-seed", "2"]
    argv = [*model, *outputs, "--hdf5", "f.h5", "-trace_pixel", "7", "11", "--trace-panel", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    image = np.fromfile("f.bin", "<f4").reshape(PANELS, IMAGE[1], IMAGE[0])
    expected = np.asarray(jaxdiff.simulate(exp, cfg), dtype=np.float32)
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    for p in range(PANELS):
        header, counts = read_smv(tmp_path / f"i_panel{p}.img")
        assert counts.shape == (IMAGE[1], IMAGE[0])
        assert abs(float(header["PIXEL_SIZE"]) - 0.5) < 1e-12
    for p in range(PANELS):
        _, noisy = read_smv(tmp_path / f"noiseimage_panel{p}.img")
        assert noisy.shape == (IMAGE[1], IMAGE[0])
    hkl = [line for line in out.splitlines() if line.startswith("TRACE_PY: hkl_frac ")]
    assert hkl, out[-2000:]
    traced = np.array([float(v) for v in hkl[0].split()[2:]])
    assert np.max(np.abs(traced - ref["hkl"][3, PIXELS.index((7, 11))])) < HKL_TOLERANCE
    images, _, _ = read_hdf5(tmp_path / "f.h5")
    np.testing.assert_array_equal(images[0], image)

    for bad, flag in (
        (["-trace_pixel", "7", "11"], "--trace-panel P"),
        (["-trace_pixel", "7", "11", "--trace-panel", "4"], "--trace-panel: panel 4 outside 0..3"),
        (["-distance", "100"], "-distance:"),
        (["--phi-carryover-mode", "c-parity"], "--phi-carryover-mode:"),
    ):
        for name in tmp_path.iterdir():
            name.unlink()
        assert main([*model, *outputs, *bad]) == 2
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1, err
        assert list(tmp_path.iterdir()) == []


def test_batch_renders_a_stack_of_every_panel_that_dxtbx_reads(four_panels, tmp_path):
    """``jaxdiff-batch --expt`` of the 4-panel file: each image of the stack is the crystal's
    own four-panel render, and dxtbx loads the stack's modules where the experiment list puts
    the panels, with the first image's pixels."""
    from jaxdiff import batch

    path, ref, exp, cfg = four_panels
    out = tmp_path / "stack.h5"
    argv = ["--expt", str(path), "-default_F", "100", "-N", "5", "-oversample", "1"]
    assert batch.main(argv + ["--random-orientations", "2", "--hdf5", str(out)]) == 0
    images, experiments, config = read_hdf5(out)
    assert images.shape == (2, PANELS, IMAGE[1], IMAGE[0]) and config == cfg
    for image, stored in zip(images, experiments, strict=True):
        assert stored.detector.panels == PANELS
        one = dataclasses.replace(exp, crystal=stored.crystal)
        expected = np.asarray(jaxdiff.simulate(one, cfg), dtype=np.float32)
        assert expected.max() > 0.0
        np.testing.assert_allclose(image, expected, rtol=1e-6, atol=1e-6 * expected.max())
    assert not np.array_equal(images[0], images[1])
    loaded = dxtbx("nxmx", out)
    assert np.max(np.abs(loaded["positions"] - ref["positions"])) < MM_TOLERANCE
    for p in range(PANELS):
        np.testing.assert_array_equal(
            np.asarray(loaded["raw"][p], dtype=np.float32), images[0, p].ravel()
        )
