"""The compare command: parsing, tolerances, caveat rules, and naming exactly the quantity that
was changed in a deliberately perturbed trace."""

from __future__ import annotations

import json

import pytest
from conftest import GOLDEN, INPUTS, golden_argv

from jaxdiff.experiment import build
from jaxdiff.io import fmt_g
from jaxdiff.trace import trace_lines
from jaxdiff.trace_compare import BEAM_PIVOT_CONSTANTS, compare, main, parse_trace

# Beam pivot with sub-pixels (repeated names), sample pivot, φ steps (TRACE_C_PHI), sources
# (TRACE_C_SOURCE2), a lost line (tricubic switch-off) and beam-pivot constants (ADXV).
TRACES = [
    ("oversample2", 17, 84),
    ("det_rot_twotheta_custom_pivot_sample", 53, 71),
    ("phi_osc5_cparity", 0, 1),
    ("sourcefile", 39, 102),
    ("hkl_tricubic_out_of_range", 10, 10),
    ("conv_adxv_Xbeam_Ybeam", 43, 82),
]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """(C text, jaxdiff text) for each of TRACES."""
    out = {}
    for name, slow, fast in TRACES:
        cwd = tmp_path_factory.mktemp(name)
        (cwd / "inputs").symlink_to(INPUTS)
        setup = build(golden_argv(name), cwd)
        c_text = (GOLDEN / name / f"trace_{slow}_{fast}.txt").read_text()
        out[name] = (c_text, "\n".join(trace_lines(setup, slow, fast)) + "\n")
    return out


def _perturb(text: str, index: int, factor: float = 1.0 + 1e-6) -> tuple[str, tuple]:
    """``text`` with one value of its ``index``-th TRACE_C/TRACE_PY line changed; returns the
    new text and (kind, name, occurrence, element) of what was changed."""
    trace = parse_trace(text)
    line = trace.lines[index]
    occurrence = sum(1 for q in trace.lines[:index] if q.key == line.key)
    raw = text.splitlines()
    row = line.lineno - 1
    if line.numbers is None:
        raw[row] = raw[row] + "X"
        return "\n".join(raw) + "\n", (line.kind, line.name, occurrence, None)
    # The φ step of a _PHI line is part of its key (what aligns it), not a value.
    values = [i for i in range(len(line.numbers)) if line.labels[i] != "phi_tic"]
    element = max(values, key=lambda i: abs(line.numbers[i]))
    old = line.numbers[element]
    # Lines of small values may be rounding noise (the scattering vector at the direct beam),
    # which no relative change can reveal: change them by a whole unit.
    new = old * factor if abs(old) >= 1e-3 else old + 1.0
    # Rebuild the value text with the one element replaced, keeping labels and layout.
    tokens = line.text.replace(";", " ; ").split()
    k = -1
    for t, token in enumerate(tokens):
        if token == ";" or not token.strip("[]"):
            continue
        k += 1
        if k == element:
            body = token.strip("[]")
            lead, trail = token[: token.index(body)], token[token.index(body) + len(body) :]
            label, sep, _ = body.rpartition("=") if "=" in body else body.rpartition(":")
            tokens[t] = f"{lead}{label}{sep}{fmt_g(new, 15)}{trail}"
    value = " ".join(tokens).replace(" ; ", "; ")
    raw[row] = raw[row][: raw[row].rindex(line.text)] + value
    component = element if len(line.numbers) > 1 else None
    return "\n".join(raw) + "\n", (line.kind, line.name, occurrence, component)


def _first(report) -> tuple | None:
    first = report["first"]
    return None if first is None else (first.kind, first.name, first.occurrence, first.component)


@pytest.mark.parametrize("name", [t[0] for t in TRACES])
def test_unperturbed_traces_agree(traces, name):
    c_text, py_text = traces[name]
    assert compare(parse_trace(c_text), parse_trace(py_text))["first"] is None


@pytest.mark.parametrize("name", [t[0] for t in TRACES])
@pytest.mark.parametrize("side", ["C", "jaxdiff"])
def test_every_perturbed_line_is_named(traces, name, side):
    """Change one value of one line, for every line in turn: that line is the first divergence.

    jaxdiff's lines that stand against a constant of the C program (the beam-pivot constants in
    a run of another beam-pivot convention) have nothing to be checked against and are left out
    on the jaxdiff side; on the C side, where the unperturbed values differ already (a caveat
    row), only the line is checked, not the element.
    """
    c_text, py_text = traces[name]
    text = c_text if side == "C" else py_text
    n_lines = len(parse_trace(text).lines)
    assert n_lines > 60
    report = compare(parse_trace(c_text), parse_trace(py_text))
    caveats = {(r.kind, r.name, r.occurrence) for r in report["rows"] if r.status == "caveat"}
    checked = 0
    for index in range(n_lines):
        changed, expected = _perturb(text, index)
        constant = name == "conv_adxv_Xbeam_Ybeam" and expected[1] in BEAM_PIVOT_CONSTANTS
        if side == "jaxdiff" and constant:
            continue
        checked += 1
        pair = (changed, py_text) if side == "C" else (c_text, changed)
        report = compare(parse_trace(pair[0]), parse_trace(pair[1]))
        got = _first(report)
        if expected[:3] in caveats:  # the unperturbed values differ already
            got, expected = got[:3], expected[:3]
        assert got == expected, (index, expected, report["first"])
    assert checked >= n_lines - 5


def test_changes_within_tolerance_are_not_divergences(traces):
    c_text, py_text = traces["oversample2"]
    n_lines = len(parse_trace(c_text).lines)
    for index in range(0, n_lines, 7):
        if max(map(abs, parse_trace(c_text).lines[index].numbers or [0.0])) < 1e-3:
            continue  # text, or small values that _perturb changes by a whole unit
        changed, _ = _perturb(c_text, index, 1.0 + 2e-10)
        assert compare(parse_trace(changed), parse_trace(py_text))["first"] is None
    changed, expected = _perturb(c_text, 40, 1.0 + 2e-9)
    assert _first(compare(parse_trace(changed), parse_trace(py_text))) == expected
    report = compare(parse_trace(changed), parse_trace(py_text), tol=1e-8)
    assert report["first"] is None


def test_near_zero_entries_use_the_floor():
    """1e-12 of the line's largest value is allowed for an entry near zero."""
    c = parse_trace("TRACE_C: rot_b_angstroms -0 100 6.12323399573677e-15\n")
    ok = parse_trace("TRACE_PY: rot_b_angstroms 0 100 5e-11\n")
    bad = parse_trace("TRACE_PY: rot_b_angstroms 0 100 2e-10\n")
    assert compare(c, ok)["first"] is None
    first = compare(c, bad)["first"]
    assert (first.name, first.component) == ("rot_b_angstroms", 2)


def test_missing_and_extra_lines_are_divergences(traces):
    c_text, py_text = traces["phi_osc5_cparity"]
    lines = py_text.splitlines()
    dropped = [ln for ln in lines if not ln.startswith("TRACE_PY_PHI phi_tic=4")]
    report = compare(parse_trace(c_text), parse_trace("\n".join(dropped)))
    first = report["first"]
    assert (first.kind, first.tag, first.status) == ("PHI", 4, "missing in jaxdiff")
    assert first.quantity == "PHI phi_tic=4 #1"
    assert [r.status for r in report["rows"]].count("missing in jaxdiff") == 1
    extra = lines + ["TRACE_PY: F_cell 100"]
    first = compare(parse_trace(c_text), parse_trace("\n".join(extra)))["first"]
    assert (first.name, first.occurrence, first.status) == ("F_cell", 1, "missing in C")


def test_c_caveats_are_reported(traces):
    c_text, py_text = traces["conv_adxv_Xbeam_Ybeam"]
    report = compare(parse_trace(c_text), parse_trace(py_text))
    status = {r.name: r.status for r in report["rows"] if r.occurrence == 0}
    assert status["detector_convention"] == "caveat"
    assert status["initial_fdet"] == status["initial_odet"] == "caveat"
    assert status["convention_mapping"] == "caveat"
    assert "rot_a_star_A_inv" in report["caveats"]
    assert any(k.startswith("TRACE:") for k in c_trace_ignored(report))
    # A constant the C program would not print is compared as usual.
    changed = c_text.replace("detector_convention=MOSFLM", "detector_convention=XDS")
    first = compare(parse_trace(changed), parse_trace(py_text))["first"]
    assert first.name == "detector_convention"


def c_trace_ignored(report) -> list[str]:
    return [k.removeprefix("C ") for k in report["ignored"]]


def test_lost_line_is_checked_against_set_up_pix0(traces):
    c_text, py_text = traces["hkl_tricubic_out_of_range"]
    report = compare(parse_trace(c_text), parse_trace(py_text))
    row = next(r for r in report["rows"] if r.name == "pix0_vector_meters")
    assert row.status == "caveat" and "pix0_vector" in row.c
    wrong = py_text.replace(
        "TRACE_PY: pix0_vector_meters 0.1 ", "TRACE_PY: pix0_vector_meters 0.2 "
    )
    first = compare(parse_trace(c_text), parse_trace(wrong))["first"]
    assert first.name == "pix0_vector_meters"
    # With the whole output, the glued line is recovered and compared directly.
    glued = c_text.replace(
        "TRACE_CONFIG: tracing pixel (spixel=10, fpixel=10)\n",
        "TRACE_CONFIG: tracing pixel (spixel=10, fpixel=10)\nWARNING: further warnings will not "
        "be printed! TRACE_C: pix0_vector_meters 0.1 0.00105 -0.00105\n",
    )
    report = compare(parse_trace(glued), parse_trace(py_text))
    assert report["first"] is None
    row = next(r for r in report["rows"] if r.name == "pix0_vector_meters")
    assert row.status == "ok" and row.c == "0.1 0.00105 -0.00105"


def test_different_pixels_are_a_divergence(traces):
    c_text, py_text = traces["oversample2"]
    other = py_text.replace("(spixel=17, fpixel=84)", "(spixel=18, fpixel=84)")
    first = compare(parse_trace(c_text), parse_trace(other))["first"]
    assert first.name == "traced pixel"


def test_command_exit_status_and_json(traces, tmp_path, capsys):
    c_text, py_text = traces["phi_osc5_cparity"]
    c_file, py_file = tmp_path / "c.txt", tmp_path / "py.txt"
    c_file.write_text(c_text)
    py_file.write_text(py_text)
    assert main([str(c_file), str(py_file)]) == 0
    out = capsys.readouterr().out
    assert "no divergence" in out and "rot_a_star_A_inv" in out
    changed, _ = _perturb(c_text, 60)
    c_file.write_text(changed)
    assert main([str(c_file), str(py_file), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert (
        data["diverged"] and data["first_divergence"]["name"] == parse_trace(c_text).lines[60].name
    )
    assert main([str(c_file), str(tmp_path / "absent.txt")]) == 2
    assert "absent.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("nothing here\n")
    assert main([str(c_file), str(tmp_path / "empty.txt")]) == 2


def test_direct_beam_noise_is_measured_against_one_over_lambda():
    """At the direct beam the scattering vector and h, k, l are rounding noise of (d − i)/λ."""
    c = parse_trace(
        "TRACE_C: lambda_meters 1e-10\n"
        "TRACE_C: scattering_vec_A_inv -8.67361737988404e-08 0 0\n"
        "TRACE_C: rot_a_angstroms 67.17 -12.82 -14.92\n"
        "TRACE_C: hkl_frac -5.82662610870289e-16 1.94377972917311e-17 -7.40049157194061e-17\n"
    )
    noise = parse_trace(
        "TRACE_PY: lambda_meters 1e-10\n"
        "TRACE_PY: scattering_vec_A_inv 0 0 5.55111512312578e-07\n"
        "TRACE_PY: rot_a_angstroms 67.17 -12.82 -14.92\n"
        "TRACE_PY: hkl_frac -8.28665900742415e-16 1.14559071597056e-15 4.90138061232862e-15\n"
    )
    assert compare(c, noise)["first"] is None
    wrong = parse_trace(
        "TRACE_PY: lambda_meters 1e-10\n"
        "TRACE_PY: scattering_vec_A_inv 0 0 0.05\n"
        "TRACE_PY: rot_a_angstroms 67.17 -12.82 -14.92\n"
        "TRACE_PY: hkl_frac 0 0 1e-9\n"
    )
    rows = {r.name: r.status for r in compare(c, wrong)["rows"]}
    assert rows["scattering_vec_A_inv"] == rows["hkl_frac"] == "diverged"
