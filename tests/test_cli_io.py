"""Inputs and outputs of the CLI beyond the float image: the run summary, image headers as
geometry (-img, -mask), HDF5 with the full model, and bad input files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN, golden_argv, golden_cmd

from jaxdiff import simulate
from jaxdiff.cli import main
from jaxdiff.io import c_header_lines, read_smv, write_smv
from jaxdiff.io.hdf5 import read_hdf5

CUBIC = "-cell 100 100 100 90 90 90 -default_F 100 -N 5".split()
QUIET = ["-nopgm", "-nonoise", "-floatfile", "out.bin", "-intfile", "out.img"]


@pytest.mark.parametrize("name", ["noise_seed", "roi", "water", "cubic_default_F_basic"])
def test_run_summary_matches_the_c_program(name, workdir, capsys):
    assert main(golden_argv(name)) == 0
    ours = capsys.readouterr().out.splitlines()
    theirs = (GOLDEN / name / "stdout.txt").read_text().splitlines()
    for prefix in ("mean=", "intfile_scale =", "max_I ="):
        want = [line for line in theirs if line.startswith(prefix)]
        got = [line for line in ours if line.startswith(prefix)]
        assert want and got and got[0].startswith(want[0]), prefix


def test_img_header_sets_the_geometry(workdir):
    """The golden int.img header carries pixel size, size, distance, wavelength and beam
    centre: with it, flags naming none of those render the golden image again."""
    img = GOLDEN / "cubic_default_F_basic" / "int.img"
    assert main(CUBIC + ["-img", str(img)] + QUIET + ["--phi-carryover-mode", "c-parity"]) == 0
    got = np.fromfile(workdir / "out.bin", "<f4")
    ref = np.fromfile(GOLDEN / "cubic_default_F_basic" / "float.bin", "<f4")
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * ref.max())


def test_flags_override_the_header_and_mask_zeros_are_skipped(workdir):
    lines = c_header_lines(
        32,
        32,
        1e-4,
        0.2,
        6.2e-10,
        1.65e-3,
        1.65e-3,
        1.65e-3,
        1.65e-3,
        3.2e-3,
        (0, 0, 0),
        16.5,
        16.5,
        0.2,
        0.0,
        0.0,
        0.0,
    )
    mask = np.ones((32, 32), dtype=np.uint16)
    mask[5:9, 20:30] = 0
    write_smv(workdir / "mask.img", mask, lines)
    argv = CUBIC + ["-lambda", "3", "-mask", "mask.img", "-distance", "100"] + QUIET
    assert main(argv) == 0
    head, _ = read_smv(workdir / "out.img")
    assert head["SIZE1"] == "32" and float(head["WAVELENGTH"]) == 3.0  # flag beats header
    # as in the C program, the header's CLOSE_DISTANCE still fixes the distance
    assert float(head["DISTANCE"]) == 200.0
    image = np.fromfile(workdir / "out.bin", "<f4").reshape(32, 32)
    assert np.all(image[mask == 0] == 0.0) and np.all(image[mask != 0] > 0.0)


def test_hdf5_round_trip_renders_the_same_image(workdir):
    cmd = golden_cmd("mosaic")
    assert main(list(cmd["argv"]) + ["--hdf5", "run.h5", "--phi-carryover-mode", "c-parity"]) == 0
    images, experiments, config = read_hdf5(workdir / "run.h5")
    ref = np.fromfile(workdir / "float.bin", "<f4").reshape(images.shape[1:])
    np.testing.assert_array_equal(images[0], ref)
    again = np.asarray(simulate(experiments[0], config)).astype(np.float32)
    np.testing.assert_array_equal(again, ref)
    assert config.carryover == "c-parity" and config.spixels == 128


def test_hdf5_stack_holds_several_images(tmp_path):
    from jaxdiff import build
    from jaxdiff.io.hdf5 import write_hdf5

    setups = [build(CUBIC + ["-detpixels", "16", "-misset", str(m), "0", "0"]) for m in (1, 2)]
    images = [np.asarray(simulate(s.experiment, s.config)) for s in setups]
    write_hdf5(
        tmp_path / "stack.h5", np.stack(images), [s.experiment for s in setups], setups[0].config
    )
    back, exps, cfg = read_hdf5(tmp_path / "stack.h5")
    assert back.shape == (2, 16, 16)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(simulate(exps[i], cfg)), images[i], rtol=1e-12)


@pytest.mark.parametrize(
    ("files", "flags", "needle"),
    [
        ({"bad.hkl": "1 2 3 100\n1 2 x 5\n"}, ["-hkl", "bad.hkl"], "bad.hkl line 2"),
        ({"frac.hkl": "1 2 3 100\n1.5 2 3 5\n"}, ["-hkl", "frac.hkl"], "frac.hkl line 2"),
        ({"short.mat": "0.01 0 0\n0 0.01 0\n0 0\n"}, ["-mat", "short.mat"], "short.mat"),
        ({"flat.mat": "1 2 3\n2 4 6\n0 0 1\n"}, ["-mat", "flat.mat"], "flat.mat"),
        ({"src.txt": "-10 0 0 1 1e-10 7 8\n"}, ["-sourcefile", "src.txt"], "src.txt line 1"),
        ({"junk.img": "not an image"}, ["-img", "junk.img"], "junk.img"),
        ({}, ["-mat", "missing.mat"], "missing.mat"),
    ],
)
def test_bad_files_exit_2_naming_file_and_line(files, flags, needle, workdir, capsys):
    for name, text in files.items():
        (workdir / name).write_text(text)
    base = ["-default_F", "10", "-lambda", "1", "-detpixels", "16"]
    crystal = [] if "-mat" in flags else ["-cell", "50", "50", "50", "90", "90", "90"]
    assert main(crystal + base + flags + QUIET) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("jaxdiff: error: ")
    assert not (workdir / "out.bin").exists() and not (workdir / "out.img").exists()
