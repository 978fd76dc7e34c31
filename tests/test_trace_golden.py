"""Every golden trace of the C program against jaxdiff's trace of the same pixel.

For each trace_S_F.txt of each case, jaxdiff traces pixel (S, F) with the case's flags and φ
carryover mode, and ``jaxdiff-trace``'s comparison must find no divergence: every per-pixel and
set-up quantity within 1e-9 relative, or 1e-12 of its line's largest value for entries near zero
(the C program prints them with 15 significant digits; float64 arithmetic done in a different
order agrees to about 1e-13 here). The C program's own trace quirks are applied by the compare
command's rules, and only where expected (the rows marked "caveat" are checked below).
"""

from __future__ import annotations

import re

import pytest
from conftest import GOLDEN, golden_argv, golden_cases, golden_cmd

from jaxdiff.experiment import build
from jaxdiff.trace import trace_lines
from jaxdiff.trace_compare import compare, format_report, parse_trace

pytestmark = pytest.mark.golden

# Rows where the C program prints a constant or loses a line (see jaxdiff.trace_compare).
CAVEAT_NAMES = {"detector_convention", "initial_fdet", "initial_odet", "initial_sdet"}
CAVEAT_NAMES |= {"convention_mapping", "pix0_vector_meters"}


def _trace_files(name: str) -> list[tuple[int, int, str]]:
    out = []
    for path in sorted((GOLDEN / name).glob("trace_*_*.txt")):
        slow, fast = map(int, re.fullmatch(r"trace_(\d+)_(\d+)\.txt", path.name).groups())
        out.append((slow, fast, path.read_text()))
    return out


@pytest.mark.parametrize("name", golden_cases())
def test_golden_traces_match(name, workdir):
    cmd = golden_cmd(name)
    setup = build(golden_argv(name), workdir)
    files = _trace_files(name)
    assert len(files) >= 2
    for slow, fast, text in files:
        c_trace = parse_trace(text)
        lines = trace_lines(setup, slow, fast)
        report = compare(c_trace, parse_trace("\n".join(lines)))
        assert report["first"] is None, f"trace_{slow}_{fast}\n" + format_report(report)
        assert len(report["rows"]) >= len(c_trace.lines)
        assert c_trace.pixel == (slow, fast)
        caveats = {r.name for r in report["rows"] if r.status == "caveat"}
        assert caveats <= CAVEAT_NAMES, caveats
        if "-interpolate" not in cmd["argv"]:
            assert "pix0_vector_meters" not in caveats


def test_every_golden_trace_is_checked():
    """The parametrized test above covers every case folder that holds traces."""
    with_traces = {p.parent.name for p in GOLDEN.glob("*/trace_*_*.txt")}
    assert with_traces == set(golden_cases())
    assert sum(len(_trace_files(name)) for name in with_traces) >= 184
