"""DIALS experiment lists: jaxdiff reads what dxtbx writes and writes what dxtbx loads.

dxtbx is installed for the system Python only, so each check runs a small dxtbx script in a
subprocess (``/usr/bin/python3``): it writes an experiment list (DIALS lab frame, beam along
−z, a tilted off-centre panel, a random crystal orientation, optionally a goniometer with
setting and fixed rotations, a scan, and the panel within a turned detector group) and
computes the fractional Miller indices h = A⁻¹·(s1 − s0) at pixel centres. jaxdiff's traced
``hkl_frac`` at the same pixels must agree to 1e-6. The tests fail, never skip, when dxtbx
is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import InputError
from jaxdiff import simulate as jaxdiff_simulate
from jaxdiff.experiment import build
from jaxdiff.io.dials import read_experiment, read_experiments, write_experiments
from jaxdiff.trace import trace_pixel

SYSTEM_PYTHON = "/usr/bin/python3"
PIXELS = [(0, 0), (3, 91), (40, 47), (79, 0), (79, 95), (12, 60)]  # (slow, fast)
TOLERANCE = 1e-6  # fractional Miller index; both sides work in float64

DXTBX = textwrap.dedent(
    r"""
    import json, math, random, sys
    from cctbx import uctbx
    from dxtbx.model import (BeamFactory, Crystal, DetectorFactory, Experiment,
                             ExperimentList, GoniometerFactory, ScanFactory)
    from dxtbx.model.experiment_list import ExperimentListFactory
    from scitbx import matrix

    job = json.loads(sys.argv[1])

    def rot(axis, deg):
        return matrix.col(axis).normalize().axis_and_angle_as_r3_rotation_matrix(deg, deg=True)

    if job["write"]:
        random.seed(job["seed"])
        beam = BeamFactory.simple(0.9795)
        tilt = rot((1, 0, 0), 12.0) * rot((0, 1, 0), -8.0)
        detector = DetectorFactory.make_detector(
            "PAD", tilt * matrix.col((1, 0, 0)), tilt * matrix.col((0, -1, 0)),
            matrix.col((-30.0, 28.0, -100.0)), (0.5, 0.5), (96, 80), (-1, 1e6))
        axis = matrix.col([random.gauss(0, 1) for _ in range(3)])
        u = rot(axis, random.uniform(0, 360))
        cell = uctbx.unit_cell((61.2, 73.5, 88.1, 83.0, 97.0, 108.0))
        o = matrix.sqr(cell.orthogonalization_matrix())
        a, b, c = (u * matrix.col(o.transpose().elems[3 * i : 3 * i + 3]) for i in range(3))
        crystal = Crystal(a, b, c, space_group_symbol="P1")
        models = dict(beam=beam, detector=detector, crystal=crystal)
        if job["rotating"]:  # and the panel placed within a group of the hierarchy
            group = detector.hierarchy()
            turn = rot((0.2, 0.1, 1.0), 20.0)
            x, y = turn * matrix.col((1, 0, 0)), turn * matrix.col((0, 1, 0))
            group.set_frame(x, y, (2.0, -3.0, 1.5))
            gonio = GoniometerFactory.make_goniometer((1.0, 0.1, 0.05), (1, 0, 0, 0, 1, 0, 0, 0, 1))
            gonio.set_fixed_rotation(rot((0.3, 1, 0.2), 25.0))
            gonio.set_setting_rotation(rot((0, 0.2, 1), -15.0))
            models["goniometer"] = gonio
            models["scan"] = ScanFactory.make_scan((1, 1), 0.1, (7.5, 0.6), [0])
        ExperimentList([Experiment(**models)]).as_file(job["path"])

    expt = ExperimentListFactory.from_json_file(job["path"], check_format=False)[0]
    panel = expt.detector[0]
    s0 = matrix.col(expt.beam.get_s0())
    wavelength = expt.beam.get_wavelength()
    out = {"A": list(expt.crystal.get_A()), "hkl": []}
    for phi in job["phis"]:
        a = matrix.sqr(expt.crystal.get_A())
        if expt.goniometer is not None:
            g = expt.goniometer
            r = rot(g.get_rotation_axis_datum(), phi)
            a = matrix.sqr(g.get_setting_rotation()) * r * matrix.sqr(g.get_fixed_rotation()) * a
        rows = []
        for s, f in job["pixels"]:
            lab = matrix.col(panel.get_pixel_lab_coord((f + 0.5, s + 0.5)))
            s1 = lab.normalize() / wavelength
            rows.append(list(a.inverse() * (s1 - s0)))
        out["hkl"].append(rows)
    print(json.dumps(out))
    """
)


def dxtbx(path, *, write=False, rotating=False, phis=(0.0,), seed=7) -> dict:
    """Run the dxtbx script; its Miller indices are (φ, pixel, 3)."""
    job = dict(
        path=str(path), write=write, rotating=rotating, phis=list(phis), pixels=PIXELS, seed=seed
    )
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", DXTBX, json.dumps(job)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"dxtbx script failed (is dxtbx installed?):\n{done.stderr}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["hkl"] = np.asarray(out["hkl"])
    return out


def traced_hkl(exp, cfg, phisteps: int) -> np.ndarray:
    """jaxdiff's fractional hkl (φ, pixel, 3): first layer, sub-pixel, source and domain."""
    rows = []
    for s, f in PIXELS:
        hkl = np.asarray(trace_pixel(exp, cfg, s, f)["hkl_frac"])
        rows.append(hkl[0, 0, 0, :phisteps, 0])
    return np.stack(rows, axis=1)


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    path = tmp_path_factory.mktemp("dials") / "still.expt"
    return path, dxtbx(path, write=True)


@pytest.fixture(scope="module")
def rotating(tmp_path_factory):
    path = tmp_path_factory.mktemp("dials") / "rotation.expt"
    # nanoBragg's -osc without -phisteps: two φ steps, at the start and half the width on
    return path, dxtbx(path, write=True, rotating=True, phis=(7.5, 7.8))


FLAGS = ["-default_F", "1", "-oversample", "1"]


def test_still_hkl_matches_dxtbx(still):
    path, ref = still
    setup = build(["--expt", str(path), *FLAGS])
    assert setup.experiment.detector.image_size == (96, 80)
    assert setup.experiment.crystal.defined_by == "a_matrix"
    ours = traced_hkl(setup.experiment, setup.config, 1)
    err = np.max(np.abs(ours - ref["hkl"]))
    print(f"still: max |dhkl| = {err:.3g}")
    assert err < TOLERANCE
    assert np.ptp(ref["hkl"]) > 1.0  # the pixels span several reflections


def test_rotation_hkl_matches_dxtbx(rotating):
    """Setting and fixed rotations, a tilted φ axis, a scan starting at 7.5°, and a panel
    whose frame is given within a turned and shifted detector group."""
    path, ref = rotating
    setup = build(["--expt", str(path), *FLAGS])
    assert setup.config.phisteps == 2
    ours = traced_hkl(setup.experiment, setup.config, 2)
    err = np.max(np.abs(ours - ref["hkl"]))
    print(f"rotation: max |dhkl| = {err:.3g}")
    assert err < TOLERANCE
    assert np.max(np.abs(ours[1] - ours[0])) > 1e-3  # the two φ steps differ


def test_flags_override_the_file(still):
    path, _ = still
    base = build(["--expt", str(path), *FLAGS])
    other = build(["--expt", str(path), *FLAGS, "-lambda", "1.2", "-N", "7", "-detpixels", "64"])
    assert float(base.experiment.beam.wavelengths[0]) == pytest.approx(0.9795e-10, rel=1e-12)
    assert float(other.experiment.beam.wavelengths[0]) == pytest.approx(1.2e-10, rel=1e-12)
    assert np.all(np.asarray(other.experiment.crystal.ncells) == 7.0)
    assert other.experiment.detector.image_size == (64, 64)
    farther = build(["--expt", str(path), *FLAGS, "-distance", "150"])
    assert float(farther.header["distance"]) == pytest.approx(0.150, rel=1e-12)
    assert float(base.header["distance"]) != pytest.approx(0.150, rel=1e-3)
    cell = build(["--expt", str(path), *FLAGS, "-cell", "50", "60", "70", "90", "90", "90"])
    assert cell.experiment.crystal.defined_by == "cell"


def test_sensor_thickness_and_attenuation_are_read(still, tmp_path):
    path, _ = still

    def sensor(mu):
        def change(doc):
            doc["detector"][0]["panels"][0].update(thickness=0.32, mu=mu)

        return change

    thick = build(["--expt", _edit(path, tmp_path, sensor(3.9)), *FLAGS])
    assert thick.config.absorption and thick.config.thicksteps == 2
    np.testing.assert_allclose(thick.experiment.detector.mu, 3900.0)
    np.testing.assert_allclose(thick.experiment.detector.layer_thickness, 0.16e-3)
    # without an attenuation coefficient the sensor is not modelled (it would capture nothing)
    assert not build(["--expt", _edit(path, tmp_path, sensor(0.0)), *FLAGS]).config.absorption


def write_and_reread(tmp_path, exp, phisteps, template, phis):
    out = tmp_path / "written.expt"
    write_experiments(out, exp, phisteps, template=template)
    return out, dxtbx(out, phis=phis)


def test_written_orientation_loads_in_dxtbx(still, rotating, tmp_path):
    """A turned crystal written back (with the file as template) loads in dxtbx with that
    orientation: its Miller indices are jaxdiff's for the turned crystal."""
    for (path, ref), phis, steps in ((still, (0.0,), 1), (rotating, (7.5, 7.8), 2)):
        setup = build(["--expt", str(path), *FLAGS])
        exp = setup.experiment
        turned = dataclasses.replace(
            exp, crystal=dataclasses.replace(exp.crystal, rotation=jnp.array([0.01, -0.02, 0.015]))
        )
        out, back = write_and_reread(tmp_path, turned, steps, setup.expt, phis)
        ours = traced_hkl(turned, setup.config, steps)
        err = np.max(np.abs(ours - back["hkl"]))
        print(f"written {path.name}: max |dhkl| = {err:.3g}")
        assert err < TOLERANCE
        assert np.max(np.abs(back["hkl"] - ref["hkl"])) > 0.01  # the orientation did change
        doc = json.loads(out.read_text())
        assert doc["goniometer"] == setup.expt.document.get("goniometer")


def test_flag_model_written_as_a_new_experiment_list(tmp_path):
    """A model from nanoBragg flags (MOSFLM frame, beam pivot, detector rotations, φ) written
    without a template loads in dxtbx with the same geometry."""
    flags = "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 1 -lambda 1.0 -distance 100"
    flags += " -pixel 0.5 -detpixels_f 96 -detpixels_s 80 -oversample 1 -Xbeam 22 -Ybeam 17"
    flags += " -detector_rotx 4 -detector_roty -3 -twotheta 5 -phi 10 -osc 1"
    setup = build(flags.split())
    assert setup.config.phisteps == 2
    out, back = write_and_reread(tmp_path, setup.experiment, 2, None, (10.0, 10.5))
    ours = traced_hkl(setup.experiment, setup.config, 2)
    err = np.max(np.abs(ours - back["hkl"]))
    print(f"flag model: max |dhkl| = {err:.3g}")
    assert err < TOLERANCE
    again = build(["--expt", str(out), "-default_F", "1", "-oversample", "1"])
    assert np.max(np.abs(traced_hkl(again.experiment, again.config, 2) - ours)) < TOLERANCE


def test_reader_units_and_frame(still):
    path, ref = still
    e = read_experiment(path)
    assert e.wavelength == pytest.approx(0.9795e-10)
    np.testing.assert_allclose(e.beam_direction, [0.0, 0.0, -1.0])
    assert e.pixel_size == pytest.approx(0.5e-3) and e.image_size == (96, 80)
    np.testing.assert_allclose(e.origin, [-0.030, 0.028, -0.100])
    a_matrix = np.asarray(ref["A"]).reshape(3, 3)
    np.testing.assert_allclose(np.linalg.inv(e.real_space), a_matrix, rtol=0, atol=1e-14)
    assert e.rotation_axis is None and e.oscillation is None
    # the library's own models from the file render without flags
    crystal = e.crystal(ncells=(5, 5, 5))
    assert crystal.defined_by == "a_matrix"
    assert e.detector().pivot == "sample"


def _edit(path, tmp_path, change) -> str:
    doc = json.loads(path.read_text())
    change(doc)
    out = tmp_path / "edited.expt"
    out.write_text(json.dumps(doc))
    return str(out)


def test_bad_files_are_refused(still, tmp_path):
    path, _ = still

    def two_sizes(doc):
        panel = dict(doc["detector"][0]["panels"][0], image_size=[10, 12])
        doc["detector"][0]["panels"].append(panel)

    edited = _edit(path, tmp_path, two_sizes)
    assert len(read_experiments(edited)[0].panels) == 2
    with pytest.raises(InputError, match="share one image size"):
        read_experiments(edited)[0].detector()
    with pytest.raises(InputError, match="share one image size"):
        build(["--expt", edited, *FLAGS])

    def rectangular(doc):
        doc["detector"][0]["panels"][0]["pixel_size"] = [0.5, 0.4]

    with pytest.raises(InputError, match="square"):
        read_experiments(_edit(path, tmp_path, rectangular))
    (tmp_path / "junk.expt").write_text("{not json")
    with pytest.raises(InputError, match="junk.expt"):
        read_experiments(tmp_path / "junk.expt")
    with pytest.raises(InputError, match="missing.expt"):
        build(["--expt", str(tmp_path / "missing.expt"), *FLAGS])

    def no_crystal(doc):
        del doc["experiment"][0]["crystal"]

    with pytest.raises(InputError, match="no crystal"):
        build(["--expt", _edit(path, tmp_path, no_crystal), "-default_F", "1"])


def test_refine_from_an_experiment_list_writes_the_fit_back(still, tmp_path, monkeypatch):
    """jaxdiff-refine --expt START --expt-out FIT: the observed image is rendered from the
    file's crystal, the start is that crystal turned by 0.21°, and dxtbx reads the fitted
    orientation back from FIT."""
    from jaxdiff.refine.cli import main

    path, ref = still
    model = ["-default_F", "100", "-N", "10", "-oversample", "1"]
    truth = build(["--expt", str(path), *model])
    observed = np.asarray(jaxdiff_simulate(truth.experiment, truth.config), dtype=np.float32)
    observed.tofile(tmp_path / "obs.bin")
    crystal = dataclasses.replace(
        truth.experiment.crystal, rotation=jnp.array([0.002, -0.003, 0.001])
    )
    turned = dataclasses.replace(truth.experiment, crystal=crystal)
    write_experiments(tmp_path / "start.expt", turned, 1, template=truth.expt)
    monkeypatch.chdir(tmp_path)
    status = main(
        ["--observed", "obs.bin", "--expt", "start.expt", "--expt-out", "fit.expt"]
        + ["--search-radius", "0", "--coarse", "", "--quiet", "--", *model]
    )
    assert status == 0
    a_true = np.asarray(ref["A"]).reshape(3, 3)

    def turn_deg(a):  # angle of the rotation taking the true A to ``a`` (same cell)
        r = a @ np.linalg.inv(a_true)
        return math.degrees(math.acos(min(1.0, (np.trace(r) - 1.0) / 2.0)))

    start = np.asarray(dxtbx(tmp_path / "start.expt")["A"]).reshape(3, 3)
    fitted = np.asarray(dxtbx(tmp_path / "fit.expt")["A"]).reshape(3, 3)
    print(f"refined orientation: start {turn_deg(start):.4f} deg, fit {turn_deg(fitted):.2g} deg")
    assert turn_deg(start) > 0.2
    assert turn_deg(fitted) < 1e-3


def test_the_command_renders_an_experiment_list(still, tmp_path, monkeypatch, capsys):
    """``jaxdiff --expt``: the SMV header's DIALS_ORIGIN is the file's panel origin (the file
    is in DIALS' frame already), and a flag that would move one panel of a multi-panel file
    stops with exit status 2."""
    from jaxdiff.cli import main
    from jaxdiff.io import read_smv

    path, _ = still
    monkeypatch.chdir(tmp_path)
    common = ["-default_F", "1", "-nonoise", "-nopgm", "-floatfile", "f.bin", "-intfile", "i.img"]
    assert main(["--expt", str(path), *common]) == 0
    header, data = read_smv(tmp_path / "i.img")
    assert data.shape == (80, 96)
    origin = [float(v) for v in header["DIALS_ORIGIN"].split(",")]
    np.testing.assert_allclose(origin, [-30.0, 28.0, -100.0], rtol=0, atol=1e-9)

    def two_panels(doc):
        doc["detector"][0]["panels"].append(doc["detector"][0]["panels"][0])

    (tmp_path / "i.img").unlink()
    (tmp_path / "f.bin").unlink()
    capsys.readouterr()
    assert main(["--expt", _edit(path, tmp_path, two_panels), "-distance", "90", *common]) == 2
    assert "-distance: the --expt file's detector has 2 panels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.expt"]
