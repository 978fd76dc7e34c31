"""A user's mistake on the command line: one message naming the flag or file, exit status 2,
and no output file left behind."""

from __future__ import annotations

import pytest

from jaxdiff.cli import main

OK = "-cell 70 80 90 90 90 90 -default_F 100 -N 3 -lambda 1 -distance 100 -detpixels 16".split()
OUT = ["-floatfile", "out.bin", "-intfile", "out.img", "-nopgm", "-nonoise"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (OK + ["-bogus"], "-bogus: unknown option"),
        (OK + ["--no-such-thing", "1"], "--no-such-thing: unknown option"),
        (OK + ["-pixel"], "-pixel: missing value"),
        (OK + ["-distance", "far"], "-distance: expected a number, got 'far'"),
        (OK + ["-phisteps", "2.5"], "-phisteps: expected a whole number"),
        (OK + ["-pixel", "0"], "-pixel: pixel size must be positive"),
        (OK + ["-lambda", "-1"], "-lambda: wavelength must be positive"),
        (OK + ["-distance", "0"], "-distance: must be positive"),
        (OK + ["-N", "0"], "-Na: number of unit cells must be positive"),
        (OK + ["-roi", "100", "200", "0", "5"], "-roi: 100 200 0 5 selects no pixel"),
        (OK + ["-mat", "inputs/A.mat"], "-cell and -mat both give the unit cell"),
        (OK[7:], "no crystal"),
        (OK + ["-hkl", "nothere.hkl"], "nothere.hkl"),
        (OK + ["stray"], "'stray': unexpected argument"),
        (OK + ["--phi-carryover-mode", "sometimes"], "--phi-carryover-mode: expected one of"),
        (OK + ["--dtype", "float16"], "--dtype: expected one of float64, float32"),
    ],
)
def test_bad_input_exits_2_without_output(argv, needle, workdir, capsys):
    assert main(argv + OUT) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("jaxdiff: error: ")
    assert not (workdir / "out.bin").exists()
    assert not (workdir / "out.img").exists()


def test_good_input_writes_the_outputs(workdir):
    assert main(OK + OUT) == 0
    assert (workdir / "out.bin").stat().st_size == 16 * 16 * 4
    assert (workdir / "out.img").stat().st_size == 512 + 16 * 16 * 2
