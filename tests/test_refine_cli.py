"""The ``jaxdiff-refine`` command: fits from SMV (noisy, with ADC offset and overloads), raw float
and HDF5 observations and from the frames of a sweep, its outputs (MOSFLM A matrix, JSON report
with the verdict, PNG picture), exit status 3 for a fit that did not converge, and one message
with exit status 2 and no output file for each kind of bad input.

The observed images come from the ``jaxdiff`` command on the A.mat crystal; the model starts
from the same flags with a misset of a few tenths of a degree (as in test_refine.py, so the
compiled fit is shared).
"""

from __future__ import annotations

import dataclasses
import json

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import INPUTS
from refinecase import (
    FLAGS,
    MISSET,
    SWEEP,
    SWEEP_FRAMES,
    TOLERANCE_DEG,
    orientation_error_deg,
)

from jaxdiff import Detector, assemble
from jaxdiff import cli as simulate_cli
from jaxdiff.experiment import build
from jaxdiff.flags import Options
from jaxdiff.io import read_float_image, read_mosflm_matrix, read_smv
from jaxdiff.io.dials import read_experiment, write_experiments
from jaxdiff.refine.cli import _parser, main, read_observed, split_argv
from jaxdiff.rotation import rotate_xyz

OUTPUTS = ("refined.mat", "refine.json", "fit.png")
DEFAULT_FLUENCE = Options().fluence
BRIGHTER = 20.0


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """A folder with inputs/, the noisy SMV image obs.img and the noise-free obs.bin, both at
    a fluence ``BRIGHTER`` times the model's (the strongest pixels overload the SMV image)."""
    cwd = tmp_path_factory.mktemp("refine_cli")
    (cwd / "inputs").symlink_to(INPUTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        status = simulate_cli.main(
            [*FLAGS, "-floatfile", "obs.bin", "-intfile", "int.img", "-noisefile", "obs.img"]
            + ["-seed", "5", "-fluence", str(BRIGHTER * DEFAULT_FLUENCE)]
        )
    assert status == 0
    return cwd


@pytest.fixture
def run(observed, monkeypatch):
    monkeypatch.chdir(observed)
    for name in OUTPUTS:
        (observed / name).unlink(missing_ok=True)

    def call(*args):
        return main(list(args))

    return call


def fitted_error(folder) -> float:
    a_fit = np.stack(read_mosflm_matrix(folder / "refined.mat"), axis=1)
    return orientation_error_deg(a_fit, np.loadtxt(INPUTS / "A.mat"))


def test_fit_from_a_noisy_smv_image(run, observed, capsys):
    status = run("--observed", "obs.img", "--picture", "fit.png", "--", *FLAGS, *MISSET)
    assert status == 0
    out = capsys.readouterr().out
    assert "stage 1/3 step   1" in out and "wrote refined.mat and refine.json" in out
    assert "\nconverged: the loss is" in out
    assert fitted_error(observed) < TOLERANCE_DEG
    report = json.loads((observed / "refine.json").read_text())
    assert report["converged"] is True and "Poisson noise" in report["reason"]
    assert report["frames"] == ["obs.img"] and report["search"]["spots"] > 0
    assert report["format"] == "smv" and report["adc_offset"] == 40.0
    assert report["fit"] == ["rotation", "scale"]
    assert report["final_loss"] < report["initial_loss"]
    assert len(report["history"]) == report["steps"] == len(report["stages"])
    # The fitted rotation undoes the misset.
    misset = np.radians([float(v) for v in MISSET[1:]])
    turn = np.asarray(rotate_xyz(jnp.eye(3), *misset))
    assert report["rotation_change_deg"] == pytest.approx(
        orientation_error_deg(turn, np.eye(3)), abs=TOLERANCE_DEG
    )
    np.testing.assert_allclose(
        np.asarray(report["a_matrix"]), np.loadtxt(observed / "refined.mat"), atol=1e-12
    )
    # Overloaded pixels (65535 counts) are left out of the fit; the scale takes up the
    # brighter exposure.
    overloads = int(np.sum(read_smv(observed / "obs.img")[1] == 65535))
    assert overloads > 0 and report["pixels_fitted"] == 96 * 96 - overloads
    assert report["fitted"]["scale"][0] == pytest.approx(BRIGHTER, rel=0.01)
    assert (observed / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_from_raw_float_and_hdf5(run, observed):
    assert run("--observed", "obs.bin", "--quiet", "--", *FLAGS, *MISSET) == 0
    # Noise-free: the fit is limited by the optimiser's tolerance only.
    assert fitted_error(observed) < 1e-4
    image = read_float_image(observed / "obs.bin", (96, 96))
    with h5py.File(observed / "obs.h5", "w") as f:
        f["entry/data/data"] = image[None]
        f["stack"] = np.stack([np.zeros_like(image), image])
    (observed / "refined.mat").unlink()
    assert run("--observed", "obs.h5", "--quiet", "--", *FLAGS, *MISSET) == 0
    assert fitted_error(observed) < 1e-4
    (observed / "refined.mat").unlink()
    args = ("--observed", "obs.h5", "--dataset", "stack", "--frame", "1", "--quiet")
    assert run(*args, "--", *FLAGS, *MISSET) == 0
    assert fitted_error(observed) < 1e-4
    assert json.loads((observed / "refine.json").read_text())["format"] == "hdf5"


def test_a_fit_that_does_not_converge_exits_3_and_writes_its_outputs(run, observed, capsys):
    far = ["-misset", "6", "-5", "4"]
    args = ("--observed", "obs.img", "--search-radius", "0", "--picture", "fit.png", "--quiet")
    assert run(*args, "--", *FLAGS, *far) == 3
    out = capsys.readouterr().out
    assert "NOT CONVERGED: the loss is" in out
    report = json.loads((observed / "refine.json").read_text())
    assert report["converged"] is False and "the model misses the data" in report["reason"]
    assert report["loss_ratio"] > 2.0 and report["search"] is None
    assert fitted_error(observed) > 1.0
    assert (observed / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep_files(observed):
    """Noisy SMV frames sw_00001.img ... and an HDF5 stack of the noise-free ones, rendered by
    ``jaxdiff --frames`` from frame 1's flags."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(observed)
        status = simulate_cli.main(
            [*FLAGS, *SWEEP, "--frames", str(SWEEP_FRAMES), "-noisefile", "sw_#####.img"]
            + ["-floatfile", "sw_#####.bin", "-intfile", "swi_#####.img", "-seed", "9"]
        )
    assert status == 0
    stack = [read_float_image(observed / f"sw_{k:05d}.bin", (96, 96)) for k in (1, 2, 3, 4)]
    with h5py.File(observed / "sweep.h5", "w") as f:
        f["entry/data/data"] = np.stack([np.zeros_like(stack[0]), *stack])
    return observed


def test_sweep_from_a_template_and_from_an_hdf5_stack(run, sweep_files, capsys):
    folder = sweep_files
    args = ("--observed", "sw_#####.img", "--frames", str(SWEEP_FRAMES), "--quiet")
    assert run(*args, "--", *FLAGS, *SWEEP, *MISSET) == 0
    assert "sweep of 4 frames sw_00001.img" in capsys.readouterr().out
    assert fitted_error(folder) < TOLERANCE_DEG
    report = json.loads((folder / "refine.json").read_text())
    assert report["frames"] == [f"sw_{k:05d}.img" for k in (1, 2, 3, 4)]
    assert report["orientation"] == "shared" and report["converged"] is True
    assert len(report["fitted"]["scale"]) == SWEEP_FRAMES
    # The frames after image 0 of the stack, to its end.
    (folder / "refined.mat").unlink()
    args = ("--observed", "sweep.h5", "--frame", "1", "--frames", "all", "--quiet")
    assert run(*args, "--", *FLAGS, *SWEEP, *MISSET) == 0
    assert fitted_error(folder) < 1e-4
    report = json.loads((folder / "refine.json").read_text())
    assert report["frames"] == [f"sweep.h5[{k}]" for k in (1, 2, 3, 4)]


def test_options_can_be_mixed_with_the_model_flags():
    own, model = split_argv(["-mat", "A.mat", "--observed", "x.img", "-N", "5", "--quiet"])
    assert own == ["--observed", "x.img", "--quiet"]
    assert model == ["-mat", "A.mat", "-N", "5"]
    own, model = split_argv(["--fit=rotation", "--", "--dtype", "float32"])
    assert own == ["--fit=rotation"] and model == ["--dtype", "float32"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--observed", "missing.img"), "missing.img: no such file"),
        (("--observed", "obs.img", "--fit", "rotation,twist"), "--fit: unknown group 'twist'"),
        (("--observed", "obs.img", "--coarse", "0.5,x"), "--coarse: 'x' is not a number"),
        (("--observed", "obs.img", "--coarse", "2"), "--coarse: factors must be in (0, 1]"),
        (("--observed", "obs.img", "--background", "0"), "needs a positive background"),
        (("--observed", "obs.img", "--matrix", "nowhere/x.mat"), "--matrix: nowhere/x.mat"),
        (("--observed", "obs.img", "--steps", "0"), "--steps: must be at least 1"),
        (("--observed", "obs.img", "-frobnicate"), "-frobnicate: unknown option"),
        (
            (
                "--observed",
                "int.img",
                "--",
                "-mat",
                "inputs/A.mat",
                "-default_F",
                "1",
                "-detpixels",
                "64",
            ),
            "int.img has 96x96 pixels, but the flags describe a 64x64",
        ),
        (
            (
                "--observed",
                "obs.bin",
                "--",
                "-mat",
                "inputs/A.mat",
                "-default_F",
                "1",
                "-detpixels",
                "64",
            ),
            "expected 16384 bytes",
        ),
        (("--observed", "obs.h5", "--dataset", "nope"), "--dataset: obs.h5 has no dataset"),
        (("--observed", "obs.h5", "--dataset", "stack", "--frame", "2"), "--frame: obs.h5"),
        (("--observed", "fit.png"), "is a PNG"),
        (("--observed", "obs.img", "--frames", "3"), "--frames: 3 frames need a '#' template"),
        (("--observed", "obs_###.img", "--frames", "x"), "--frames: 'x' is not a number"),
        (("--observed", "obs_###.img", "--frames", "all"), "--frames: 'all' is for an HDF5"),
        (("--observed", "obs_###.img", "--frames", "2"), "obs_001.img: no such file"),
        (("--observed", "obs.h5", "--dataset", "stack", "--frames", "3"), "--frames: obs.h5"),
        (("--observed", "obs.img", "--search-radius", "-1"), "--search-radius: give 0 to 90"),
    ],
)
def test_bad_input_gives_one_message_and_status_2(run, observed, capsys, args, message):
    (observed / "fit.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    if not (observed / "obs.h5").exists():
        with h5py.File(observed / "obs.h5", "w") as f:
            f["stack"] = np.zeros((2, 96, 96))
    if "--" not in args:
        args = (*args, "--", *FLAGS)
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxdiff-refine: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (observed / "refined.mat").exists() and not (observed / "refine.json").exists()


def test_no_model_flags_and_no_observed_image(run, capsys):
    assert run("--observed", "obs.img") == 2
    assert "no model" in capsys.readouterr().err
    assert run("--", *FLAGS) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jaxdiff-refine: error: the following arguments are required: --observed"


# FLAGS' 96 x 96 detector cut into four 48 x 48 panels with 1 mm gaps, as a DIALS experiment
# list; the model flags that --expt leaves to the command line.
QUADRANT = 48
PANEL_GAP = 1e-3  # m
PANEL_FLAGS = ["-default_F", "100", "-N", "6", "-oversample", "1"]


@pytest.fixture(scope="module")
def four_panels(tmp_path_factory):
    """A folder with true.expt (the A.mat crystal on the four-panel detector) and its image,
    at a fluence ``BRIGHTER`` times the default: noise-free as HDF5 (obs.h5) and raw float32
    (obs.bin), and with noise as the panels' SMV files noisy_panel0.img ... noisy_panel3.img."""
    cwd = tmp_path_factory.mktemp("refine_panels")
    (cwd / "inputs").symlink_to(INPUTS)
    setup = build(FLAGS, cwd=cwd)
    exp, det = setup.experiment, setup.experiment.detector
    step = QUADRANT * float(det.pixel_size) + PANEL_GAP
    panels = [
        dataclasses.replace(
            det,
            image_size=(QUADRANT, QUADRANT),
            beam_f=det.beam_f - j * step,
            beam_s=det.beam_s - i * step,
        )
        for i in range(2)
        for j in range(2)
    ]
    true = assemble(exp.beam, exp.crystal, Detector.from_panels(panels), default_F=100.0)
    write_experiments(cwd / "true.expt", true)
    outputs = ["-floatfile", "obs.bin", "--hdf5", "obs.h5", "-intfile", "int.img"]
    outputs += ["-noisefile", "noisy.img", "-seed", "5"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        status = simulate_cli.main(
            ["--expt", "true.expt", *PANEL_FLAGS, *outputs, "-nopgm"]
            + ["-fluence", str(BRIGHTER * DEFAULT_FLUENCE)]
        )
    assert status == 0
    return cwd


def test_fit_on_a_multi_panel_detector(four_panels, monkeypatch, capsys):
    """The four panels' image from HDF5 (noise-free) and from the panels' SMV files (noisy):
    the fit undoes the misset, and the fitted experiment list keeps the four panels. Raw
    float32 (panels one above the other) is read as the same observation as HDF5."""
    monkeypatch.chdir(four_panels)
    model = ["--expt", "true.expt", "--", *PANEL_FLAGS, *MISSET]
    outputs = ["--expt-out", "fit.expt", "--picture", "fit.png", "--quiet"]
    for name in ("refined.mat", "refine.json", "fit.expt", "fit.png"):
        (four_panels / name).unlink(missing_ok=True)
    assert main(["--observed", "obs.h5", *outputs, *model]) == 0
    out = capsys.readouterr().out
    assert f"4 panels of {QUADRANT}x{QUADRANT} pixels" in out and "\nconverged:" in out
    # Noise-free: the fit is limited by the optimiser's tolerance only.
    assert fitted_error(four_panels) < 1e-4
    report = json.loads((four_panels / "refine.json").read_text())
    assert report["pixels_fitted"] == 4 * QUADRANT * QUADRANT
    assert report["search"]["spots"] > 0
    fitted = read_experiment(four_panels / "fit.expt")
    assert len(fitted.panels) == 4
    assert (four_panels / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    defaults = _parser().parse_args(["--observed", "-"])
    shape = (4 * QUADRANT, QUADRANT)
    from_h5 = read_observed("obs.h5", shape, defaults, 40.0, 4)
    from_bin = read_observed("obs.bin", shape, defaults, 40.0, 4)
    assert from_h5[2] == "hdf5" and from_bin[2] == "float"
    np.testing.assert_array_equal(from_bin[0][0], from_h5[0][0])
    assert from_bin[0][0].max() > 0.0
    # With noise, from the SMV files of the panels, named as they were written: overloaded
    # pixels are left out.
    assert main(["--observed", "noisy.img", "--quiet", *model]) == 0
    assert fitted_error(four_panels) < TOLERANCE_DEG
    report = json.loads((four_panels / "refine.json").read_text())
    assert report["format"] == "smv" and report["converged"] is True
    overloads = sum(
        int(np.sum(read_smv(four_panels / f"noisy_panel{p}.img")[1] == 65535)) for p in range(4)
    )
    assert overloads > 0 and report["pixels_fitted"] == 4 * QUADRANT * QUADRANT - overloads
    # the search finds spots on every panel
    from jaxdiff.refine.search import image_spots

    image = read_float_image(four_panels / "obs.bin", (4 * QUADRANT, QUADRANT))
    image = image.reshape(4, QUADRANT, QUADRANT)
    panel, _, _ = image_spots(image, np.ones(image.shape, bool), 400)
    assert set(panel.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--observed", "int_panel0.img"),
            "SMV image of one panel; the model's detector has 4 panels: give int.img for "
            "int_panel0.img .. int_panel3.img",
        ),
        (("--observed", "part.img"), "part_panel1.img: no such file (panel 1 of part.img)"),
        (("--observed", "obs.bin", "--frames", "2"), "--frames: 2 frames need a '#' template"),
        (
            ("--observed", "obs.h5", "--fit", "rotation,distance"),
            "--fit: distance is fitted for single-panel detectors only",
        ),
        (("--observed", "int_panel0.img", "--fit", "beam_centre"), "--fit: beam_centre"),
    ],
)
def test_multi_panel_mistakes_give_one_message(four_panels, monkeypatch, capsys, args, message):
    monkeypatch.chdir(four_panels)
    for name in ("refined.mat", "refine.json"):
        (four_panels / name).unlink(missing_ok=True)
    (four_panels / "part_panel0.img").write_bytes((four_panels / "int_panel0.img").read_bytes())
    assert main([*args, "--expt", "true.expt", "--", *PANEL_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxdiff-refine: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (four_panels / "refined.mat").exists()
    assert not (four_panels / "refine.json").exists()
