"""--hdf5 files are NXmx: the nxmx reader and dxtbx load them, with jaxdiff's geometry.

dxtbx is imported by the system Python (``/usr/bin/python3``) in a subprocess; these tests fail
if it is missing. Frames: a jaxdiff lab vector v goes to NeXus' McStas frame by
``lab_to_mcstas`` (MOSFLM: (x, y, z) -> (-z, y, x); XDS, beam along +z: unchanged) and from
there to dxtbx's imgCIF frame by diag(-1, 1, -1). Lengths are compared in mm, angles in rad,
wavelengths in Å, all to 1e-6.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import nxmx
import pytest

import jaxdiff
from jaxdiff.batch import vary_crystal
from jaxdiff.detector import detector_geometry, pixel_position_components
from jaxdiff.io.hdf5 import StackWriter, read_hdf5, write_hdf5
from jaxdiff.io.nexus import lab_to_mcstas
from jaxdiff.simulate import simulate

TOL = 1e-6
IMGCIF = np.diag([-1.0, 1.0, -1.0])
# The frame changes written out by hand, to check lab_to_mcstas against.
MOSFLM_TO_MCSTAS = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
XDS_TO_MCSTAS = np.eye(3)

CRYSTAL = "-cell 70 80 90 85 95 105 -default_F 100 -N 3 -lambda 1.3 -pixel 0.2".split()
# Tilted, off-centre, rectangular detectors and a tilted spindle.
SHAPE = "-detpixels_x 40 -detpixels_y 24".split()
TILT = "-detector_rotx 3 -detector_roty -4 -detector_rotz 7".split()
SPINDLE = "-spindle_axis 0.2 0.9 0.3".split()
CASES = {
    "mosflm-twotheta": (
        CRYSTAL + SHAPE + TILT + SPINDLE + "-distance 120 -Xbeam 3 -Ybeam 5 -twotheta -20".split(),
        MOSFLM_TO_MCSTAS,
    ),
    "mosflm-beam-pivot": (
        CRYSTAL + SHAPE + TILT + SPINDLE + "-distance 110 -Xbeam 1.5 -Ybeam 3.7".split(),
        MOSFLM_TO_MCSTAS,
    ),
    "xds-twotheta": (
        CRYSTAL
        + SHAPE
        + TILT
        + SPINDLE
        + "-xds -distance 90 -ORGX 12.5 -ORGY 30 -twotheta -15".split(),
        XDS_TO_MCSTAS,
    ),
}

DXTBX = r"""
import json, math, sys
from dxtbx.model.experiment_list import ExperimentListFactory

out = {}
for path in json.load(sys.stdin):
    experiments = ExperimentListFactory.from_filenames([path])
    found = []
    for e in experiments:
        panel = e.detector[0]
        nf, ns = panel.get_image_size()
        s0 = e.beam.get_s0()
        pixels = [(f + 0.5, s + 0.5) for s in range(ns) for f in range(nf)]
        iset = e.imageset
        found.append({
            "imageset": type(iset).__name__,
            "images": len(iset),
            "wavelength": e.beam.get_wavelength(),
            "beam": list(e.beam.get_unit_s0()),
            "image_size": [nf, ns],
            "pixel_size": list(panel.get_pixel_size()),
            "positions": [list(panel.get_pixel_lab_coord(p)) for p in pixels],
            "two_theta": [panel.get_two_theta_at_pixel(s0, p) for p in pixels],
            "axis": list(e.goniometer.get_rotation_axis()) if e.goniometer else None,
            "oscillation": list(e.scan.get_oscillation()) if e.scan else None,
            "image_range": list(e.scan.get_image_range()) if e.scan else None,
            "raw": [iset.get_raw_data(i)[0].as_numpy_array().astype(float).ravel().tolist()
                    for i in range(len(iset))],
        })
    out[path] = found
json.dump(out, sys.stdout)
"""


def load_with_dxtbx(paths) -> dict:
    """What dxtbx (system Python) makes of each file: a list of experiments per path."""
    res = subprocess.run(
        ["/usr/bin/python3", "-c", DXTBX],
        input=json.dumps([str(p) for p in paths]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def jaxdiff_pixels(exp, cfg) -> np.ndarray:
    """(slow·fast, 3) pixel centres [m] in jaxdiff's lab frame, as the renderer places them."""
    geom = detector_geometry(exp.detector, exp.beam.direction, cfg.pivot_sample)
    s, f = np.meshgrid(np.arange(cfg.spixels), np.arange(cfg.fpixels), indexing="ij")
    xyz = pixel_position_components(
        geom,
        jnp.asarray(s.ravel(), dtype=jnp.float64),
        jnp.asarray(f.ravel(), dtype=jnp.float64),
        1,
        jnp.zeros(1),
        exp.detector.pixel_size,
        exp.beam.direction,
        False,
    )
    return np.stack([np.asarray(c)[0, 0] for c in xyz], axis=-1)


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    """Each geometry case written as one still; the image counts up so its order shows."""
    folder = tmp_path_factory.mktemp("nxmx")
    made = {}
    for name, (flags, _) in CASES.items():
        setup = jaxdiff.build(flags)
        cfg = setup.config
        image = np.arange(cfg.spixels * cfg.fpixels, dtype=np.float32).reshape(cfg.spixels, -1)
        path = folder / f"{name}.h5"
        write_hdf5(path, image, setup.experiment, cfg)
        made[name] = (path, setup, image)
    found = load_with_dxtbx([p for p, _, _ in made.values()])
    return {
        name: (path, setup, image, found[str(path)]) for name, (path, setup, image) in made.items()
    }


def test_lab_to_mcstas_is_the_documented_frame_change():
    np.testing.assert_allclose(lab_to_mcstas([1.0, 0.0, 0.0]), MOSFLM_TO_MCSTAS, atol=1e-15)
    np.testing.assert_allclose(lab_to_mcstas([0.0, 0.0, 1.0]), XDS_TO_MCSTAS, atol=1e-15)
    beam = np.array([0.3, -0.2, 0.9]) / np.linalg.norm([0.3, -0.2, 0.9])
    turn = lab_to_mcstas(beam)
    np.testing.assert_allclose(turn @ beam, [0.0, 0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-15)
    assert np.linalg.det(turn) == pytest.approx(1.0)


@pytest.mark.parametrize("case", list(CASES))
def test_dxtbx_geometry_matches_jaxdiff(stills, case):
    _, setup, image, found = stills[case]
    exp, cfg = setup.experiment, setup.config
    assert len(found) == 1
    (dx,) = found
    assert dx["image_size"] == [cfg.fpixels, cfg.spixels] == [40, 24]
    assert dx["pixel_size"] == pytest.approx([0.2, 0.2], abs=TOL)
    wavelength = float(np.mean(np.asarray(exp.beam.wavelengths))) * 1e10
    assert dx["wavelength"] == pytest.approx(wavelength, abs=TOL)

    to_imgcif = IMGCIF @ CASES[case][1]
    ours = jaxdiff_pixels(exp, cfg) * 1e3 @ to_imgcif.T
    np.testing.assert_allclose(np.array(dx["positions"]), ours, rtol=0, atol=TOL)

    # Frame-invariant: the scattering angle of every pixel and the spindle's angle to the beam.
    beam = np.asarray(exp.beam.direction)
    lab = jaxdiff_pixels(exp, cfg)
    two_theta = np.arccos(lab @ beam / np.linalg.norm(lab, axis=1))
    np.testing.assert_allclose(dx["two_theta"], two_theta, rtol=0, atol=TOL)
    spindle = np.asarray(exp.crystal.spindle)
    np.testing.assert_allclose(dx["axis"], to_imgcif @ spindle, rtol=0, atol=TOL)
    ours_angle = math.acos(float(spindle @ beam))
    theirs = math.acos(float(np.dot(dx["axis"], dx["beam"])))
    assert theirs == pytest.approx(ours_angle, abs=TOL)

    # A still: one image, no oscillation; slow × fast exactly as written.
    assert dx["images"] == 1 and dx["oscillation"][1] == 0.0
    np.testing.assert_array_equal(np.array(dx["raw"][0], dtype=np.float32), image.ravel())


def test_geometry_cases_cover_what_they_claim(stills):
    twotheta = {n: float(s.experiment.detector.twotheta) for n, (_, s, _, _) in stills.items()}
    assert twotheta["mosflm-twotheta"] < 0 and twotheta["xds-twotheta"] < 0
    pivots = {n: s.config.pivot_sample for n, (_, s, _, _) in stills.items()}
    assert pivots == {"mosflm-twotheta": True, "mosflm-beam-pivot": False, "xds-twotheta": True}
    for _, setup, _, _ in stills.values():
        det = setup.experiment.detector
        assert np.all(np.asarray(det.rotations) != 0.0)
        geom = detector_geometry(det, setup.experiment.beam.direction, setup.config.pivot_sample)
        # off-centre: the direct beam is not at the middle of the detector
        pix = float(det.pixel_size)
        beam = np.asarray(setup.experiment.beam.direction)
        hit = float(np.asarray(geom.pix0) @ np.asarray(geom.normal)) / float(
            beam @ np.asarray(geom.normal)
        ) * beam - np.asarray(geom.pix0)
        centre = np.array([20 * pix, 12 * pix])
        assert (
            np.linalg.norm([hit @ np.asarray(geom.fast), hit @ np.asarray(geom.slow)] - centre)
            > pix
        )


def test_nxmx_reads_one_entry_with_its_module(stills):
    path, setup, image, _ = stills["mosflm-twotheta"]
    cfg, exp = setup.config, setup.experiment
    with h5py.File(path, "r") as f:
        entries = nxmx.NXmx(f).entries
        assert len(entries) == 1
        entry = entries[0]
        assert entry.definition == "NXmx" and entry.start_time is not None
        (instrument,) = entry.instruments
        (detector,) = instrument.detectors
        (module,) = detector.modules
        assert list(module.data_origin) == [0, 0]
        assert list(module.data_size) == [cfg.spixels, cfg.fpixels]
        (beam,) = instrument.beams
        wavelength = float(np.mean(np.asarray(exp.beam.wavelengths)))
        assert beam.incident_wavelength.to("m").magnitude == pytest.approx(wavelength, rel=1e-12)
        (sample,) = entry.samples
        axes = nxmx.get_rotation_axes(nxmx.get_dependency_chain(sample.depends_on))
        assert list(axes.names) == ["phi"]
        # The module chain composes to jaxdiff's first-pixel corner, in McStas, in mm.
        chain = nxmx.get_dependency_chain(module.fast_pixel_direction.depends_on)
        corner = nxmx.get_cumulative_transformation(chain)[0, :3, 3]
        geom = detector_geometry(exp.detector, exp.beam.direction, cfg.pivot_sample)
        expected = MOSFLM_TO_MCSTAS @ np.asarray(geom.pix0) * 1e3
        np.testing.assert_allclose(corner, expected, rtol=0, atol=TOL)
        assert detector.sensor_material == "Si"
        np.testing.assert_array_equal(f["/entry/data/data"][0], image)
        # every group says its class; every unit is one pint understands
        groups, units = [], []
        f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) else None)
        f.visititems(lambda n, o: units.append(o.attrs["units"]) if "units" in o.attrs else None)
        assert all("NX_class" in f[g].attrs for g in groups)
        for unit in units:
            nxmx.ureg.Unit(unit)


def test_rotation_scan_is_one_dxtbx_sweep(tmp_path):
    flags = CASES["mosflm-twotheta"][0] + "-phi 10 -osc 0.5 -phisteps 2".split()
    setup = jaxdiff.build(flags)
    exp, cfg = setup.experiment, setup.config
    phi0, osc = 10 / 180 * math.pi, 0.5 / 180 * math.pi
    assert float(exp.crystal.phi0) == pytest.approx(phi0)
    assert float(exp.crystal.phistep) * cfg.phisteps == pytest.approx(osc)
    frames = [
        dataclasses.replace(
            exp, crystal=dataclasses.replace(exp.crystal, phi0=jnp.asarray(phi0 + k * osc))
        )
        for k in range(3)
    ]
    stack = np.stack([np.asarray(simulate(e, cfg), dtype=np.float32) for e in frames])
    assert not np.array_equal(stack[0], stack[1])
    counts = np.minimum(stack * 10, 65535).astype(np.uint16)
    listed, shared = tmp_path / "listed.h5", tmp_path / "shared.h5"
    write_hdf5(listed, stack, frames, cfg, oscillation=(phi0, osc), int_images=counts)
    write_hdf5(shared, stack, exp, cfg, oscillation=(phi0, osc), noise_images=counts)

    for path in (listed, shared):
        (dx,) = load_with_dxtbx([path])[str(path)]
        assert dx["imageset"] == "ImageSequence"
        assert dx["images"] == 3 and dx["image_range"] == [1, 3]
        assert dx["oscillation"] == pytest.approx([10.0, 0.5], abs=1e-9)
        for k in range(3):
            np.testing.assert_array_equal(
                np.array(dx["raw"][k], dtype=np.float32), stack[k].ravel()
            )
        images, experiments, config = read_hdf5(path)
        np.testing.assert_array_equal(images, stack)
        assert config == cfg and len(experiments) == 3
        # frame k's model (φ0 + k·osc) renders frame k again
        again = np.asarray(simulate(experiments[2], config), dtype=np.float32)
        np.testing.assert_array_equal(again, stack[2])
    with h5py.File(listed, "r") as f:
        np.testing.assert_array_equal(f["/entry/data/int_image"][()], counts)
        assert "noise_image" not in f["/entry/data"]
        phi = f["/entry/sample/transformations"]
        np.testing.assert_allclose(phi["phi"][()], [10.0, 10.5, 11.0], atol=1e-12)
        np.testing.assert_allclose(phi["phi_end"][()], [10.5, 11.0, 11.5], atol=1e-12)
        assert phi["phi_increment_set"][()] == pytest.approx(0.5)
    with h5py.File(shared, "r") as f:
        np.testing.assert_array_equal(f["/entry/data/noise_image"][()], counts)


def test_image_stacks_must_match(tmp_path):
    setup = jaxdiff.build(CRYSTAL + ["-detpixels", "8"])
    image = np.zeros((2, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="2 images but 3 experiments"):
        write_hdf5(tmp_path / "a.h5", image, [setup.experiment] * 3, setup.config)
    with pytest.raises(ValueError, match="int_image"):
        write_hdf5(
            tmp_path / "b.h5",
            image,
            setup.experiment,
            setup.config,
            int_images=np.zeros((2, 8, 7), dtype=np.uint16),
        )
    assert not list(tmp_path.iterdir())


def _layout(path) -> dict:
    """Every object's path with its kind, NX_class and attribute names."""
    found = {}
    with h5py.File(path, "r") as f:

        def visit(name, node):
            kind = "group" if isinstance(node, h5py.Group) else "dataset"
            found[name] = (kind, node.attrs.get("NX_class"), sorted(node.attrs))

        f.visititems(visit)
    return found


def test_stack_writer_writes_the_write_hdf5_layout(tmp_path):
    setup = jaxdiff.build(CASES["mosflm-beam-pivot"][0])
    exp, cfg = setup.experiment, setup.config
    turns = np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.0, 0.02, 0.0]])
    crystals = vary_crystal(exp.crystal, rotation=turns)
    images = np.random.default_rng(0).random((3, cfg.spixels, cfg.fpixels), dtype=np.float32)
    streamed, whole = tmp_path / "streamed.h5", tmp_path / "whole.h5"
    with StackWriter(streamed, 3, exp, cfg) as writer:
        writer.write(0, images[:2], jax.tree_util.tree_map(lambda x: x[:2], crystals))
        writer.write(2, images[2:], jax.tree_util.tree_map(lambda x: x[2:], crystals))
    singles = [
        dataclasses.replace(exp, crystal=jax.tree_util.tree_map(lambda x, i=i: x[i], crystals))
        for i in range(3)
    ]
    write_hdf5(whole, images, singles, cfg)
    assert _layout(streamed) == _layout(whole)

    found = load_with_dxtbx([streamed])[str(streamed)]
    assert len(found) == 3  # three stills, each its own image of the file's one image set
    for k, dx in enumerate(found):
        assert dx["image_range"] == [k + 1, k + 1] and dx["oscillation"][1] == 0.0
        raw = np.array(dx["raw"][k], dtype=np.float32)
        np.testing.assert_array_equal(raw, images[k].ravel())
    back, experiments, _ = read_hdf5(streamed)
    np.testing.assert_array_equal(back, images)
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(experiments[k].crystal.rotation), turns[k])


def test_command_line_rotation_series_is_one_sweep(tmp_path, monkeypatch):
    from jaxdiff.cli import main
    from jaxdiff.io.smv import read_smv

    monkeypatch.chdir(tmp_path)
    flags = CASES["xds-twotheta"][0] + "-phi 5 -osc 0.25 -phisteps 2 -seed 3".split()
    names = "-floatfile f_###.bin -intfile i_###.img -noisefile n_###.img".split()
    assert main(flags + names + ["--frames", "3", "--hdf5", "sweep.h5"]) == 0
    (dx,) = load_with_dxtbx([tmp_path / "sweep.h5"])[str(tmp_path / "sweep.h5")]
    assert dx["imageset"] == "ImageSequence" and dx["images"] == 3
    assert dx["oscillation"] == pytest.approx([5.0, 0.25], abs=1e-9)
    with h5py.File(tmp_path / "sweep.h5", "r") as f:
        for k in range(3):
            floats = np.fromfile(tmp_path / f"f_{k + 1:03d}.bin", "<f4")
            np.testing.assert_array_equal(np.array(dx["raw"][k], dtype=np.float32), floats)
            ints = read_smv(tmp_path / f"i_{k + 1:03d}.img")[1]
            np.testing.assert_array_equal(f["/entry/data/int_image"][k], ints)
            noise = read_smv(tmp_path / f"n_{k + 1:03d}.img")[1]
            np.testing.assert_array_equal(f["/entry/data/noise_image"][k], noise)


def test_a_file_without_the_model_is_refused(tmp_path):
    from jaxdiff.errors import InputError

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["/entry/data/data"] = np.zeros((1, 4, 4), dtype=np.float32)
    with pytest.raises(InputError, match="other.h5"):
        read_hdf5(tmp_path / "other.h5")
