"""Random, edge and malformed values for every flag of the command line: the ``jaxdiff``
command ends with status 0 or 2, never with an internal error (status 1, what a traceback
becomes), leaves no output file when it refuses, and never writes NaN into an image.

The flags are those the usage text names, each with as many values as its rule in
``jaxdiff.flags`` takes. The detector is small (8 to 16 pixels a side), so after the first
compile each example renders in milliseconds; flags that multiply the work (pixel counts,
sub-pixels, steps, domains, frames) get small whole numbers among their malformed values, so an
example never asks for hours of work.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxdiff.cli import USAGE, main
from jaxdiff.flags import LONG_OPTIONS, RULES

OUTPUTS = ["-floatfile", "out.bin", "-intfile", "out.img", "-noisefile", "noise.img", "-nopgm"]
OUTPUT_FLAGS = {"-floatfile", "-intfile", "-noisefile", "-pgmfile", "-nopgm", "-nonoise"}
LEAVE_OUT = OUTPUT_FLAGS | {"-h", "--help", "--commands", "--hdf5"}
# flags whose value multiplies the work or the memory of a run
WORK = re.compile(r"detpixels|detsize|oversample$|steps|_dom|frames|^-N|size|^-pixel$")


def _flag_table() -> dict[str, int]:
    """Every flag of the usage text and how many values it takes."""
    names = dict.fromkeys(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", USAGE))
    table = {}
    for name in names:
        if name in LEAVE_OUT:
            continue
        if name.startswith("--"):
            if name in LONG_OPTIONS:
                table[name] = 1
            continue
        rule = next((r for r in RULES if r.match(name)), None)
        assert rule is not None, f"{name}: in the usage text, but no rule takes it"
        table[name] = rule.nvalues
    return table


FLAGS = _flag_table()
EDGE = ["0", "-0", "1", "-1", "0.5", "1e-300", "1e300", "-1e300", "nan", "-nan", "inf", "-inf"]
MALFORMED = ["", "abc", "1e", "--", "-", "1,2", "0x10", "1..2", "random", "sample", "./nothere"]
SMALL = ["-3", "-1", "0", "1", "2", "3", "2.5", "16", "1e1"]


def _values(name: str) -> st.SearchStrategy[str]:
    if WORK.search(name):
        return st.sampled_from(SMALL + MALFORMED)
    numbers = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(10**6), 10**6).map(str),
    )
    return st.one_of(st.sampled_from(EDGE + MALFORMED), numbers)


@st.composite
def command_lines(draw) -> list[str]:
    """A small valid command line, then one to three fuzzed flags (the last may lack values)."""
    side = draw(st.integers(8, 16))
    argv = (
        "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 3 -lambda 1 -distance 50 "
        f"-pixel 0.5 -detpixels {side} -oversample 1 -seed 3"
    ).split()
    argv += OUTPUTS
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(FLAGS)))
        count = draw(st.sampled_from([FLAGS[name], FLAGS[name], max(FLAGS[name] - 1, 0)]))
        argv += [name, *(draw(_values(name)) for _ in range(count))]
    return argv


@contextlib.contextmanager
def _in_folder():
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)


def test_flag_table_covers_the_usage_text():
    """The fuzzed table is the command line's own: its rules, with their value counts."""
    assert len(FLAGS) > 80
    assert FLAGS["-cell"] == 6 and FLAGS["-roi"] == 4 and FLAGS["-distance"] == 1
    assert FLAGS["-nopolar"] == 0 and FLAGS["--dtype"] == 1


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=command_lines())
def test_any_command_line_exits_0_or_2_cleanly(argv, capsys):
    with _in_folder() as folder:
        status = main(argv)
        err = capsys.readouterr().err
        assert status in (0, 2), (argv, err)
        written = sorted(p.name for p in folder.iterdir())
        if status == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("jaxdiff: error: "), (argv, err)
            assert written == [], (argv, written)
            return
        # --frames N numbers the files of each frame
        floats = [folder / name for name in written if name.endswith(".bin")]
        assert floats and any(name.endswith(".img") for name in written), (argv, written)
        for path in floats:
            image = np.fromfile(path, "<f4")
            assert image.size >= 8 * 8 and not np.any(np.isnan(image)), (argv, path.name)
