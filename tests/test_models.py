"""Models built in Python: the constructors give the same pytrees (and images) as the flags,
static fields make a configuration that disagrees with the models an error, the mask is a
float leaf so a gradient over a whole experiment exists, and ``build`` as a library changes
no working directory and writes no file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN

import jaxdiff
from jaxdiff import Beam, Crystal, Detector, assemble, build, config_for, simulate
from jaxdiff.io import read_mosflm_matrix

INPUTS = GOLDEN / "inputs"
CELL = "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 5 -lambda 1.0 -distance 100"
SMALL = (CELL + " -pixel 0.1 -detpixels 32 -oversample 1").split()


def leaves_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def python_models():
    """The XDS-convention run of ``SMALL`` built without flags (DIALS-style names, SI units)."""
    beam = Beam.from_wavelength(1.0e-10, (0.0, 0.0, 1.0), polar_vector=(1.0, 0.0, 0.0))
    # XDS convention, default ORGX/ORGY: the point nearest the sample at the detector's centre
    detector = Detector.from_vectors(
        (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (-1.6e-3, -1.6e-3, 0.1), 1e-4, (32, 32)
    )
    crystal = Crystal.from_cell(
        (70.0, 80.0, 90.0, *np.radians((85.0, 95.0, 105.0))),
        misset=np.radians((10.0, 5.0, 3.0)),
        ncells=(5, 5, 5),
    )
    return beam, detector, crystal


def test_python_models_render_the_flag_image():
    beam, detector, crystal = python_models()
    exp = assemble(beam, crystal, detector, default_F=100.0)
    image = np.asarray(simulate(exp, config_for(exp)))
    setup = build([*SMALL, "-xds"])
    reference = np.asarray(simulate(setup.experiment, setup.config))
    assert reference.max() > 1.0
    np.testing.assert_allclose(image, reference, rtol=1e-12, atol=1e-12 * reference.max())


def test_convention_constructor_is_the_flag_detector():
    flags = build([*SMALL, "-mosflm", "-Xbeam", "1.7", "-Ybeam", "1.5", "-twotheta", "3"])
    unset = -1.0  # the C program's -detector_abs when no sensor thickness is given
    det = Detector.from_convention(
        "mosflm", 1e-4, (32, 32), 0.1, (1.7e-3, 1.5e-3), twotheta=np.radians(3.0), mu=unset
    )
    leaves_equal(det, flags.experiment.detector)
    assert det.pivot == "beam"
    xds = Detector.from_convention("xds", 1e-4, (32, 32), 0.1, origin_pixel=(10.0, 12.0), mu=unset)
    assert xds.pivot == "sample"
    leaves_equal(xds, build([*SMALL, "-xds", "-ORGX", "10", "-ORGY", "12"]).experiment.detector)


def test_a_matrix_constructor_is_the_flag_crystal():
    a_s, b_s, c_s = read_mosflm_matrix(INPUTS / "A.mat")
    lam = 1.0  # Å
    mosflm_spindle = (0.0, 0.0, 1.0)
    crystal = Crystal.from_a_matrix(
        np.stack([a_s, b_s, c_s], axis=1) / lam, ncells=(5, 5, 5), rotation_axis=mosflm_spindle
    )
    flags = build(
        f"-mat {INPUTS / 'A.mat'} -default_F 1 -N 5 -lambda {lam} -detpixels 8".split()
    ).experiment.crystal
    leaves_equal(crystal, flags)
    assert crystal.defined_by == "a_matrix"
    # the same lattice from its real-space vectors
    real = np.linalg.inv(np.stack([a_s, b_s, c_s], axis=1) / lam)
    again = Crystal.from_real_space_vectors(*real, ncells=(5, 5, 5))
    np.testing.assert_allclose(again.recip0, crystal.recip0, rtol=1e-14)


def test_constructors_state_their_units_and_check_arguments():
    beam = Beam.from_wavelength(1.5e-10)
    np.testing.assert_array_equal(beam.direction, [0.0, 0.0, -1.0])
    assert float(np.dot(beam.polar_vector, beam.direction)) == 0.0
    assert beam.source_dirs.shape == (1, 3) and float(beam.wavelengths[0]) == 1.5e-10
    with pytest.raises(TypeError, match="mosaic"):
        Crystal.from_cell((50, 50, 50, 1.5, 1.5, 1.5), mosaic=0.1)
    with pytest.raises(ValueError, match="pivot"):
        dataclasses.replace(python_models()[1], pivot="corner")
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(python_models()[1], image_size=(0, 5))
    with pytest.raises(ValueError, match="square"):
        Detector.from_vectors((1, 0, 0), (0, 1, 0), (0, 0, 0.1), (1e-4, 2e-4), (8, 8))
    mosaic = Crystal.from_cell((50, 50, 50, 1.5, 1.5, 1.5), mosaic_spread=0.01, mosaic_domains=4)
    assert mosaic.mosaic_axes.shape == (4, 3)


def test_from_vectors_puts_the_first_pixel_at_the_origin():
    tilt = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    fast, slow = tilt @ [1.0, 0.0, 0.0], tilt @ [0.0, -1.0, 0.0]
    origin = np.array([-0.03, 0.028, -0.1])
    det = Detector.from_vectors(fast, slow, origin, 5e-4, (96, 80))
    geom = jaxdiff.detector.detector_geometry(det, jnp.array([0.0, 0.0, -1.0]))
    np.testing.assert_allclose(geom.pix0, origin, rtol=0, atol=1e-16)
    np.testing.assert_allclose(geom.fast, fast, rtol=0, atol=1e-16)
    assert float(geom.close_distance) > 0.0


def test_static_fields_are_metadata_not_leaves():
    _, detector, crystal = python_models()
    names = {"image_size", "pivot", "panels", "defined_by"}
    for model in (detector, crystal):
        static = {f.name for f in dataclasses.fields(model) if f.metadata.get("static")}
        assert static == names & {f.name for f in dataclasses.fields(model)}
        assert len(jax.tree_util.tree_leaves(model)) == len(dataclasses.fields(model)) - len(static)
    bigger = dataclasses.replace(detector, image_size=(64, 32))
    assert jax.tree_util.tree_structure(bigger) != jax.tree_util.tree_structure(detector)
    hash(jax.tree_util.tree_structure(crystal))


def test_changing_a_value_does_not_retrace_changing_a_static_field_does():
    traces = []

    @jax.jit
    def pix0(det):
        traces.append(1)
        return jaxdiff.detector.detector_geometry(det, jnp.array([0.0, 0.0, 1.0])).pix0

    _, det, _ = python_models()
    pix0(det)
    pix0(dataclasses.replace(det, beam_f=np.asarray(2e-3)))
    assert len(traces) == 1
    pix0(dataclasses.replace(det, pivot="beam"))
    assert len(traces) == 2


def test_a_config_that_disagrees_with_the_models_is_refused():
    setup = build(["-detpixels", "16", *SMALL[:-4]])
    exp, cfg = setup.experiment, setup.config
    with pytest.raises(ValueError, match="config is 8x8 pixels, the detector 16x16"):
        simulate(exp, dataclasses.replace(cfg, spixels=8, fpixels=8))
    with pytest.raises(ValueError, match="mask is 8x8"):
        simulate(dataclasses.replace(exp, mask=jnp.ones((8, 8))), cfg)
    with pytest.raises(ValueError, match="crystal defined by 'cell'"):
        simulate(exp, dataclasses.replace(cfg, from_cell=False))
    with pytest.raises(ValueError, match="pivot"):
        simulate(exp, dataclasses.replace(cfg, pivot_sample=True))
    a_matrix = build(f"-mat {INPUTS / 'A.mat'} -default_F 1 -detpixels 16".split())
    with pytest.raises(ValueError, match="crystal defined by 'a_matrix'"):
        simulate(a_matrix.experiment, dataclasses.replace(a_matrix.config, from_cell=True))
    assert config_for(exp, oversample=cfg.oversample) == dataclasses.replace(
        cfg, roi=(0, 16, 0, 16)
    )


def test_mask_is_float_and_the_gradient_over_a_whole_experiment_is_finite():
    setup = build(["-detpixels", "12", *SMALL[:-4]])
    exp, cfg = setup.experiment, setup.config
    assert exp.mask.dtype == jnp.float64 and set(np.unique(exp.mask)) == {1.0}
    grad = jax.grad(lambda e: jaxdiff.simulate(e, cfg).sum())(exp)
    leaves = jax.tree_util.tree_leaves(grad)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grad.detector.distance)) > 0.0
    # a masked pixel is not rendered
    mask = exp.mask.at[3, 4].set(0.0)
    image = simulate(dataclasses.replace(exp, mask=mask), cfg)
    assert float(image[3, 4]) == 0.0 and float(simulate(exp, cfg)[3, 4]) > 0.0


def test_build_reads_relative_to_cwd_and_writes_nothing(tmp_path, monkeypatch):
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    work = tmp_path / "work"
    work.mkdir()
    (work / "inputs").symlink_to(INPUTS)
    flags = "-mat inputs/A.mat -hkl inputs/scaled.hkl -lambda 1 -detpixels 8 -N 3".split()
    setup = build(flags, cwd=work)
    assert Path.cwd() == here
    assert setup.hkl_count > 0
    assert sorted(os.listdir(work)) == ["inputs"] and os.listdir(here) == []
    setup.write_fdump(work)
    assert (work / "Fdump.bin").is_file()
    # without -hkl the cache in cwd is read
    cached = build("-mat inputs/A.mat -lambda 1 -detpixels 8 -N 3".split(), cwd=work)
    assert cached.hkl_count > 0 and cached.config.table_lo == setup.config.table_lo
    np.testing.assert_array_equal(cached.experiment.fhkl, setup.experiment.fhkl)
    with pytest.raises(jaxdiff.InputError, match=f"{tmp_path}/inputs/"):
        build(flags, cwd=tmp_path)


def test_the_command_writes_the_structure_factor_cache(tmp_path, monkeypatch):
    from jaxdiff.cli import main

    (tmp_path / "inputs").symlink_to(INPUTS)
    monkeypatch.chdir(tmp_path)
    status = main(
        "-mat inputs/A.mat -hkl inputs/scaled.hkl -lambda 1 -detpixels 8 -N 3 -nonoise -nopgm"
        " -floatfile f.bin -intfile i.img".split()
    )
    assert status == 0
    assert (tmp_path / "Fdump.bin").is_file()
