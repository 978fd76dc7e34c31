"""The command line beyond one image: rotation series (--frames), many command lines in one
process (--commands), the usage summary, long SMV headers, and problems too big to render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxdiff.cli import main
from jaxdiff.io import read_smv

SMALL = (
    "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 5 -lambda 1.0 -distance 100 "
    "-pixel 0.1 -detpixels_x 48 -detpixels_y 40 -osc 1 -phisteps 3 -seed 7"
).split()
SUPERVISOR = (
    "-mat inputs/A.mat -hkl inputs/scaled.hkl -nonoise -nointerpolate -oversample 1 -exposure 1 "
    "-flux 1e18 -beamsize 1.0 -spindle_axis -1 0 0 -Xbeam 217.742295 -Ybeam 213.907080 "
    "-distance 231.274660 -lambda 0.976800 -pixel 0.172 -detpixels_x 2463 -detpixels_y 2527 "
    "-odet_vector -0.000088 0.004914 -0.999988 -sdet_vector -0.005998 -0.999970 -0.004913 "
    "-fdet_vector 0.999982 -0.005998 -0.000118 -pix0_vector_mm -216.336293 215.205512 -230.200866 "
    "-beam_vector 0.00051387949 0.0 -0.99999986 -Na 36 -Nb 47 -Nc 29 -osc 0.1 -phi 0 -phisteps 10 "
    "-detector_rotx 0 -detector_roty 0 -detector_rotz 0 -twotheta 0"
).split()


def _dxtbx(script: str) -> dict:
    """Run ``script`` with the system python's dxtbx; it prints one JSON object."""
    done = subprocess.run(
        ["/usr/bin/python3", "-c", textwrap.dedent(script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_frames_equal_single_runs_at_their_phi(workdir):
    outputs = ["-floatfile", "f_###.bin", "-intfile", "i_###.img", "-noisefile", "n_###.img"]
    assert main(SMALL + ["-phi", "2", "--frames", "3", "-nopgm"] + outputs) == 0
    for k, phi in enumerate((2, 3, 4), start=1):
        single = ["-floatfile", "one.bin", "-intfile", "one.img", "-noisefile", "one_n.img"]
        argv = SMALL + ["-phi", str(phi), "-nopgm"] + single
        argv[argv.index("-seed") + 1] = str(7 + k - 1)  # frame k's noise is -seed s+k-1
        assert main(argv) == 0
        assert (workdir / f"f_{k:03d}.bin").read_bytes() == (workdir / "one.bin").read_bytes()
        assert (workdir / f"i_{k:03d}.img").read_bytes() == (workdir / "one.img").read_bytes()
        assert (workdir / f"n_{k:03d}.img").read_bytes() == (workdir / "one_n.img").read_bytes()
    noise = [read_smv(workdir / f"n_{k:03d}.img")[1] for k in (1, 2, 3)]
    assert not np.array_equal(noise[0], noise[1])


def test_frames_without_a_template_are_numbered(workdir):
    assert main(SMALL + ["--frames", "2", "-nopgm", "-nonoise", "-intfile", "run.img"]) == 0
    assert sorted(p.name for p in workdir.glob("run_*.img")) == ["run_00001.img", "run_00002.img"]
    assert (workdir / "floatimage_00002.bin").exists()


def test_dxtbx_reads_the_smv_series_as_one_sweep(workdir):
    argv = SMALL + ["-phi", "10", "--frames", "4", "-nopgm", "-nonoise", "-intfile", "s_####.img"]
    assert main(argv) == 0
    got = _dxtbx(
        f"""
        import json, glob
        from dxtbx.model.experiment_list import ExperimentListFactory
        files = sorted(glob.glob("{workdir}/s_*.img"))
        experiments = ExperimentListFactory.from_filenames(files)
        imagesets = experiments.imagesets()
        scan = experiments[0].scan
        print(json.dumps(dict(
            imagesets=len(imagesets), images=len(imagesets[0]),
            oscillation=list(scan.get_oscillation()), range=list(scan.get_image_range()),
            axis=list(experiments[0].goniometer.get_rotation_axis()),
            first=int(imagesets[0].get_raw_data(3)[0][5 * 48 + 7]))))
        """
    )
    assert got["imagesets"] == 1 and got["images"] == 4
    assert got["oscillation"] == pytest.approx([10.0, 1.0])
    assert got["range"] == [1, 4]
    assert got["first"] == int(read_smv(workdir / "s_0004.img")[1][5, 7])


def test_commands_render_each_line_and_report_bad_ones(workdir, capsys):
    lines = [
        "# a parity sweep",
        "nanoBragg " + " ".join(SMALL) + " -phi 0 -nopgm -floatfile a.bin -intfile a.img",
        "",
        " ".join(SMALL) + " -phi 0 -distance nowhere -floatfile b.bin",
        "jaxdiff " + " ".join(SMALL) + " -phi 5 -nopgm -floatfile c.bin -intfile c.img",
    ]
    (workdir / "lines.txt").write_text("\n".join(lines) + "\n")
    assert main(["--commands", "lines.txt", "-nonoise"]) == 2
    err = capsys.readouterr().err
    assert "lines.txt:4: jaxdiff: error: -distance: expected a number" in err
    assert "1 of 3 lines failed: 4" in err
    assert not (workdir / "b.bin").exists()
    for name, phi in (("a", 0), ("c", 5)):
        argv = SMALL + ["-phi", str(phi), "-nopgm", "-nonoise", "-floatfile", "x.bin"]
        assert main(argv + ["-intfile", "x.img"]) == 0
        assert (workdir / f"{name}.bin").read_bytes() == (workdir / "x.bin").read_bytes()
        assert (workdir / f"{name}.img").read_bytes() == (workdir / "x.img").read_bytes()


def test_commands_run_as_the_program_match_single_runs(workdir, capsys):
    """Run as a program, --commands sets up each line on a second CPU device while the
    previous line renders: every image and summary is still that of the line run alone. The
    run imports no HDF5, optimizer or plotting library (start-up stays lean)."""
    lines = [
        " ".join(SMALL) + f" -misset {m} -distance {d} -nopgm -floatfile {n}.bin -intfile {n}.img"
        for n, m, d in (("a", "10 5 3", 100), ("b", "-40 20 170", 130), ("c", "0 90 0", 80))
    ]
    (workdir / "lines.txt").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(workdir / "cache"))
    env.pop("XLA_FLAGS", None)
    program = (
        "import sys; from jaxdiff.cli import main; status = main(); "
        "print('heavy:', sorted({'h5py', 'optax', 'matplotlib'} & set(sys.modules))); "
        "sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, "--commands", "lines.txt", "-nonoise"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "heavy: []"
    blocks = done.stdout.split("== lines.txt:")[1:]
    assert len(blocks) == 3
    for line, block in zip(lines, blocks, strict=True):
        name = line.split()[-1].removesuffix(".img")
        argv = line.replace(f"{name}.", "one.").split() + ["-nonoise"]
        assert main(argv) == 0
        alone = capsys.readouterr().out
        for ext in ("bin", "img"):
            assert (workdir / f"{name}.{ext}").read_bytes() == (workdir / f"one.{ext}").read_bytes()
        summary = [t for t in alone.splitlines() if t.startswith(("max_I", "mean=", "intfile_"))]
        assert len(summary) == 3 and all(t in block.splitlines() for t in summary)


def test_missing_command_file(workdir, capsys):
    assert main(["--commands", "none.txt"]) == 2
    assert "none.txt: command file not found" in capsys.readouterr().err


def test_help_prints_the_usage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxdiff")
    flags = ("-cell", "-mat", "-hkl", "-distance", "--frames", "--commands", "--hdf5", "--expt")
    for flag in flags + ("--trace-panel",):
        assert flag in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["-energy", "0"], "-energy: photon energy must be positive"),
        (["-N", "1e9"], "crystal size (-N/-Na/-Nb/-Nc/-xtalsize"),
        (["-oversample", "100000"], "-oversample 100000: one pixel needs"),
        (["-detpixels", "inf"], "-detpixels: expected a whole number"),
        (["--frames", "0"], "--frames: the number of frames must be at least 1"),
        (["-seed", "99999999999"], "-seed: seed must fit a 32-bit integer"),
        (["-mosaic_seed", "-3000000000"], "-mosaic_seed: seed must fit a 32-bit integer"),
    ],
)
def test_impossible_problems_are_refused(extra, needle, workdir, capsys):
    assert main(SMALL + extra + ["-floatfile", "out.bin", "-nopgm"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (workdir / "out.bin").exists()


def test_supervisor_command_writes_a_readable_smv(workdir):
    """The Pilatus command's header is longer than 512 bytes: HEADER_BYTES says 1024 and
    fabio and dxtbx find the pixels there."""
    import fabio

    roi = ["-roi", "600", "727", "1000", "1127", "-intfile", "image_00001.img"]
    assert main(SUPERVISOR + roi + ["-floatfile", "float.bin", "-nopgm"]) == 0
    header, data = read_smv(workdir / "image_00001.img")
    assert header["HEADER_BYTES"] == "1024"
    assert data.shape == (2527, 2463) and data.max() > 40
    np.testing.assert_array_equal(fabio.open(str(workdir / "image_00001.img")).data, data)
    got = _dxtbx(
        f"""
        import json
        from dxtbx.model.experiment_list import ExperimentListFactory
        e = ExperimentListFactory.from_filenames(["{workdir}/image_00001.img"])[0]
        raw = e.imageset.get_raw_data(0)[0].as_numpy_array()
        print(json.dumps(dict(sum=int(raw.sum()), max=int(raw.max()),
                              shape=list(raw.shape), distance=e.detector[0].get_distance())))
        """
    )
    assert got["shape"] == [2527, 2463]
    assert got["sum"] == int(data.sum()) and got["max"] == int(data.max())
    assert got["distance"] == pytest.approx(231.27466, abs=1e-3)


def test_a_bug_is_one_line_with_status_1_in_every_command(workdir, monkeypatch, capsys):
    """An unexpected exception (here planted in the renderer) is reported in one line, never
    as a traceback, by jaxdiff, jaxdiff-batch and jaxdiff-refine alike."""
    from jaxdiff import batch, experiment
    from jaxdiff.refine import cli as refine_cli

    def broken(*args, **kwargs):
        raise RuntimeError("planted\nsecond line")

    monkeypatch.setattr(experiment, "build", broken)  # every command builds its model first
    assert main(SMALL + ["-floatfile", "out.bin"]) == 1
    argv = SMALL[:-2] + ["--random-orientations", "2", "--hdf5", "s.h5"]
    assert batch.main(argv) == 1
    assert refine_cli.main(["--observed", "none.bin", "--", *SMALL]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["jaxdiff", "jaxdiff-batch", "jaxdiff-refine"]
    for line in lines:
        assert "internal error: RuntimeError: planted (a bug in jaxdiff" in line
    assert not (workdir / "out.bin").exists() and not (workdir / "s.h5").exists()
