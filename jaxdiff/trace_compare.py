"""``jaxdiff-trace``: compare a C program trace with a jaxdiff trace and find the first divergence.

Both files are read line by line; ``TRACE_C`` lines (from nanoBragg's instrumented build) are
aligned with ``TRACE_PY`` lines (from ``jaxdiff ... -trace_pixel S F``) by kind and name (and φ
step for ``_PHI`` lines), in order, so the third ``hkl_frac`` of one file meets the third of the
other and a line missing from one file shows as missing. Each quantity is
compared element by element: it diverges where

    |jaxdiff − C| > max(tol · max(|C|, |jaxdiff|), floor · (largest |value| on the line),
                        half a unit in the last digit the C program printed)

(``tol`` 1e-9 and ``floor`` 1e-12 by default; the C program prints its TRACE_C values with
``%.15g``, so the last term only matters for tolerances below about 1e-14). Two quantities are
differences that cancel to rounding noise at the direct beam, where the whole line is near
zero: for them the floor is relative to their natural size instead when that is larger, 1/λ
for the scattering vector and |a|/λ for the fractional Miller indices. Text values
(conventions, labels) must be equal. A line present in one file only diverges too. Lines are
taken in the order the C program computes and prints them, and the first divergence is named.

The C program's trace has quirks; they are applied here by rule and reported, never silently:

* ``TRACE:`` lines are the C program's ``%g`` set-up prints; jaxdiff has no counterpart and they
  are counted, not compared. So are the ``TRACE_C_TAP5*`` lines (printed only when an
  environment variable asks for them).
* In the beam-pivot set-up the C program prints constants: ``detector_convention=MOSFLM``,
  MOSFLM's ``initial_fdet/sdet/odet`` and MOSFLM's ``convention_mapping``, whatever the
  convention. jaxdiff prints the run's own. When jaxdiff's convention is not MOSFLM and the C
  line holds the constant, a difference there is a caveat, not a divergence (jaxdiff's value
  has nothing to be checked against); otherwise the lines are compared as usual.
* Names that do not say what the C program prints (jaxdiff prints the same quantity, so they
  are compared): ``rot_a_star_A_inv`` etc. are the unrotated reciprocal vectors;
  ``scattering_vec_A_inv`` is in 1/m; ``beam_center_m`` is the beam centre in metres divided by
  1000; the beam-pivot block's ``*_after_rotz`` are the axes after the two-theta swing too.
* The C program ends its tricubic switch-off warning without a newline, so the next TRACE_C line
  is glued to it: a file of whole ``TRACE`` lines lacks it. Glued lines are recovered when the
  file holds the whole output; when the traced pixel's first line (``pix0_vector_meters``) is
  lost, jaxdiff's value is compared with the C program's set-up pix0 instead.

Exit status: 0 when nothing diverges, 1 when something does, 2 for a usage or file error.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
from pathlib import Path

C_DIGITS = 15
FAMILIES = ("TRACE_C", "TRACE_PY")
IGNORED_KINDS = ("TAP5", "TAP5_HKL")
# Conventions, besides MOSFLM, that pivot about the beam: their set-up lines differ from the
# constants the C program prints.
OTHER_BEAM_PIVOTS = ("DENZO", "ADXV", "CUSTOM")
BEAM_PIVOT_CONSTANTS = {
    "detector_convention": "MOSFLM",
    "initial_fdet": "0 0 1",
    "initial_sdet": "0 -1 0",
    "initial_odet": "1 0 0",
    "convention_mapping": "Fbeam←Ybeam_mm(+0.5px),Sbeam←Xbeam_mm(+0.5px),beam_vec=[1 0 0]",
}
NOTES = {
    "detector_convention": "the C program's beam-pivot branch prints MOSFLM for every convention",
    "initial_fdet": "the C program's beam-pivot branch prints MOSFLM's unrotated fast axis",
    "initial_sdet": "the C program's beam-pivot branch prints MOSFLM's unrotated slow axis",
    "initial_odet": "the C program's beam-pivot branch prints MOSFLM's unrotated normal",
    "convention_mapping": "the C program's beam-pivot branch prints MOSFLM's mapping",
    "rot_a_star_A_inv": "the C program prints the unrotated a* (jaxdiff prints the same)",
    "rot_b_star_A_inv": "the C program prints the unrotated b* (jaxdiff prints the same)",
    "rot_c_star_A_inv": "the C program prints the unrotated c* (jaxdiff prints the same)",
    "scattering_vec_A_inv": "the values are in 1/m, as the C program stores them",
    "beam_center_m": "the C program prints the beam centre in metres divided by 1000",
}
AFTER_ROTZ_NOTE = "the beam-pivot block prints the axes after the two-theta swing under this name"
LOST_LINE_NOTE = (
    "absent from the C trace: the C program ends its tricubic switch-off warning without a "
    "newline, so this line was glued to it; jaxdiff's value is compared with the C set-up {}"
)
GLUED_NOTE = "recovered from the end of a line the C program printed without a newline"

_LINE = re.compile(
    r"(?P<family>TRACE_C|TRACE_PY)(?:_(?P<kind>[A-Z0-9_]+?))?"
    r"(?:(?P<setup>:(?P<sname>\w+)=)|(?P<colon>: )|(?P<space> ))(?P<rest>.*)$"
)
_CONFIG = re.compile(r"TRACE_CONFIG: tracing pixel \(spixel=(-?\d+), fpixel=(-?\d+)\)")
_GLUED = re.compile(r"(TRACE_C(?:_[A-Z0-9_]+)?(?::\w+=|: | ).*)$")


@dataclasses.dataclass
class Line:
    """One parsed trace line: its kind ("setup", "pixel", or the suffix after the family, as
    "PHI"), name, value text, and numbers with their labels (None for a text value)."""

    kind: str
    name: str
    text: str
    labels: tuple[str, ...] | None
    numbers: tuple[float, ...] | None
    lineno: int
    glued: bool = False
    occurrence: int = 0

    @property
    def tag(self) -> float | None:
        """The φ step of a ``_PHI`` line (part of its key), else None."""
        if self.labels and self.labels[0] == "phi_tic":
            return self.numbers[0]
        return None

    @property
    def key(self) -> tuple[str, str, float | None]:
        return self.kind, self.name, self.tag


@dataclasses.dataclass
class Trace:
    """A parsed trace file: its TRACE_C or TRACE_PY lines in order, the traced pixel, and what
    was counted but not compared."""

    lines: list[Line]
    pixel: tuple[int, int] | None
    ignored: dict[str, int]
    families: set[str]

    def find(self, kind: str, name: str) -> Line | None:
        return next((ln for ln in self.lines if (ln.kind, ln.name) == (kind, name)), None)

    @property
    def beam_pivot(self) -> bool:
        return self.find("setup", "convention_mapping") is not None


def _numbers(text: str) -> tuple[tuple[str, ...], tuple[float, ...]] | None:
    """Labels and numbers of a value text ("1 0 -0", "rotx:0 roty:0", "[1 0; 0 1]", "k=1"), or
    None when some token is not a number."""
    labels, numbers = [], []
    for token in text.replace(";", " ").split():
        token = token.strip("[]")
        if not token:
            continue
        label, _, value = token.rpartition("=") if "=" in token else token.rpartition(":")
        try:
            numbers.append(float(value))
        except ValueError:
            return None
        labels.append(label)
    return tuple(labels), tuple(numbers)


def _parse_line(text: str, lineno: int) -> tuple[str, Line | None]:
    m = _LINE.match(text)
    if not m:
        return "", None
    family, kind, rest = m["family"], m["kind"], m["rest"].strip()
    if m["setup"]:
        kind, name, value = kind or "setup", m["sname"], rest
    elif m["colon"]:
        name, _, value = rest.partition(" ")
        kind = kind or "pixel"
    else:
        if not kind:
            return "", None
        name, value = kind, rest
    parsed = _numbers(value)
    labels, numbers = parsed if parsed else (None, None)
    return family, Line(kind, name, value.strip(), labels, numbers, lineno)


def parse_trace(text: str) -> Trace:
    """Parse a trace file (whole program output or only its TRACE lines)."""
    lines, ignored, families, counts = [], {}, set(), {}
    pixel = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        raw = raw.rstrip("\n")
        if m := _CONFIG.match(raw):
            pixel = (int(m[1]), int(m[2]))
            continue
        if raw.startswith("TRACE:"):
            ignored["TRACE: (C set-up prints in %g; no jaxdiff counterpart)"] = (
                ignored.get("TRACE: (C set-up prints in %g; no jaxdiff counterpart)", 0) + 1
            )
            continue
        glued = False
        if not raw.startswith(FAMILIES) and (g := _GLUED.search(raw)):
            raw, glued = g[1], True
        family, line = _parse_line(raw, lineno)
        if line is None:
            continue
        if line.kind in IGNORED_KINDS:
            label = f"{family}_{line.kind} (diagnostic lines printed on request; not compared)"
            ignored[label] = ignored.get(label, 0) + 1
            continue
        line.glued = glued
        line.occurrence = counts.get(line.key, 0)
        counts[line.key] = line.occurrence + 1
        families.add(family)
        lines.append(line)
    return Trace(lines, pixel, ignored, families)


@dataclasses.dataclass
class Row:
    """One compared quantity (a line, matched by kind, name and occurrence)."""

    kind: str
    name: str
    occurrence: int
    c: str | None
    jaxdiff: str | None
    delta: float | None
    rel: float | None
    status: str  # ok, diverged, missing in C, missing in jaxdiff, caveat
    component: int | None = None
    label: str | None = None
    note: str | None = None
    tag: float | None = None

    @property
    def quantity(self) -> str:
        head = self.name if self.kind in ("setup", "pixel") else f"{self.kind} {self.name}"
        if self.kind == self.name:
            head = self.kind
        if self.tag is not None:
            head = f"{head} phi_tic={self.tag:g}"
        return f"{head} #{self.occurrence + 1}"

    @property
    def diverged(self) -> bool:
        return self.status in ("diverged", "missing in C", "missing in jaxdiff")

    def describe(self) -> str:
        where = ""
        if self.component is not None:
            label = f" ({self.label})" if self.label else ""
            where = f", element {self.component + 1}{label}"
        return f"{self.quantity}{where}"


def _compare_values(c: Line, p: Line, tol: float, floor: float, reference: float = 0.0):
    """(max |Δ|, max relative Δ, first failing element or None, reason) of two lines; the floor
    is relative to the larger of the line's largest value and ``reference``."""
    if c.numbers is None or p.numbers is None:
        same = c.text == p.text
        return None, None, (None if same else 0), "" if same else "text differs"
    if len(c.numbers) != len(p.numbers):
        return None, None, 0, f"{len(c.numbers)} values in C, {len(p.numbers)} in jaxdiff"
    if c.labels != p.labels:
        return None, None, 0, "labels differ"
    pairs = zip(c.numbers, p.numbers, strict=True)
    scale = max([reference] + [max(abs(a), abs(b)) for a, b in pairs])
    max_delta = max_rel = 0.0
    first = None
    for i, (a, b) in enumerate(zip(c.numbers, p.numbers, strict=True)):
        if math.isnan(a) or math.isnan(b):
            bad = not (math.isnan(a) and math.isnan(b))
            delta, rel = (math.nan, math.nan) if bad else (0.0, 0.0)
        else:
            delta = abs(b - a)
            big = max(abs(a), abs(b))
            rel = delta / big if big > 0.0 else 0.0
            printed = 0.5 * 10.0 ** (math.floor(math.log10(abs(a))) - C_DIGITS + 1) if a else 0.0
            bad = delta > max(tol * big, floor * scale, printed)
        if not math.isnan(delta):
            max_delta = max(max_delta, delta)
            max_rel = max(max_rel, rel)
        if bad and first is None:
            first = i
    return max_delta, max_rel, first, ""


def _reference_scales(lines: list[Line]) -> list[float]:
    """For each line, the natural size of its quantity where its values are a difference that
    can cancel to rounding noise (0 elsewhere): 1/λ for the scattering vector (at the direct
    beam it is (d − i)/λ with d ≈ i), and |a|/λ for the fractional Miller indices."""
    out = []
    inv_lambda = cell = 0.0
    for line in lines:
        values = line.numbers or ()
        if line.kind == "pixel" and line.name == "lambda_meters" and values and values[0]:
            inv_lambda = 1.0 / abs(values[0])
        if line.kind == "pixel" and line.name.startswith("rot_") and "star" not in line.name:
            if values and line.name.startswith("rot_a"):
                cell = 0.0
            cell = max([cell] + [abs(v) * 1e-10 for v in values])
        scale = 0.0
        if line.kind == "pixel" and line.name == "scattering_vec_A_inv":
            scale = inv_lambda
        elif line.kind == "pixel" and line.name == "hkl_frac":
            scale = cell * inv_lambda
        out.append(scale)
    return out


def compare(c_trace: Trace, py_trace: Trace, tol: float = 1e-9, floor: float = 1e-12) -> dict:
    """Compare two parsed traces. Returns a report: ``rows`` (one :class:`Row` per quantity, in
    computation order), ``first`` (the first diverging row or None), ``caveats`` and
    ``ignored``.

    The two sequences of line keys are aligned (longest matching runs, as ``difflib`` does), so
    a line missing from one file is reported as missing rather than shifting every later line.
    """
    rows: list[Row] = []
    caveats: dict[str, str] = {}
    beam_pivot = c_trace.beam_pivot
    convention = py_trace.find("setup", "detector_convention")
    py_convention = convention.text if convention else None
    c_lines, py_lines = c_trace.lines, py_trace.lines
    matcher = difflib.SequenceMatcher(
        None, [ln.key for ln in c_lines], [ln.key for ln in py_lines], autojunk=False
    )
    references = _reference_scales(c_lines)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for k, p in enumerate(py_lines[j1:j2]):
                c = c_lines[i1 + k]
                row = _row(c, p, tol, floor, references[i1 + k], beam_pivot, py_convention, caveats)
                if c.glued:
                    row.note = f"{row.note}; {GLUED_NOTE}" if row.note else GLUED_NOTE
                    caveats[f"{c.name} (glued)"] = GLUED_NOTE
                rows.append(row)
            continue
        for c in c_lines[i1:i2]:
            rows.append(
                Row(
                    c.kind,
                    c.name,
                    c.occurrence,
                    c.text,
                    None,
                    None,
                    None,
                    "missing in jaxdiff",
                    tag=c.tag,
                )
            )
        for p in py_lines[j1:j2]:
            row = Row(
                p.kind, p.name, p.occurrence, None, p.text, None, None, "missing in C", tag=p.tag
            )
            if p.key == ("pixel", "pix0_vector_meters", None) and p.occurrence == 0:
                row = _lost_pix0(c_trace, p, tol, floor, caveats) or row
            rows.append(row)
    if c_trace.pixel and py_trace.pixel and c_trace.pixel != py_trace.pixel:
        note = "the two traces are of different pixels"
        pixels = (str(c_trace.pixel), str(py_trace.pixel))
        rows.insert(0, Row("config", "traced pixel", 0, *pixels, None, None, "diverged", note=note))
    first = next((r for r in rows if r.diverged), None)
    ignored = {f"C {k}": v for k, v in c_trace.ignored.items()}
    ignored.update({f"jaxdiff {k}": v for k, v in py_trace.ignored.items()})
    return dict(rows=rows, first=first, caveats=caveats, ignored=ignored, tol=tol, floor=floor)


def _row(c: Line, p: Line, tol, floor, reference, beam_pivot, py_convention, caveats) -> Row:
    delta, rel, bad, reason = _compare_values(c, p, tol, floor, reference)
    status = "ok" if bad is None else "diverged"
    occ = c.occurrence
    row = Row(c.kind, c.name, occ, c.text, p.text, delta, rel, status, tag=c.tag)
    if bad is not None:
        row.component = bad if c.numbers is not None and len(c.numbers) > 1 else None
        if row.component is not None and c.labels and c.labels[bad]:
            row.label = c.labels[bad]
        row.note = reason or None
    note = NOTES.get(c.name) if c.kind == "setup" or c.name.startswith("rot_") else None
    if c.kind == "pixel" and c.name == "scattering_vec_A_inv":
        note = NOTES[c.name]
    if c.kind == "setup" and beam_pivot and c.name.endswith("_after_rotz") and occ == 1:
        note = AFTER_ROTZ_NOTE
    constant = BEAM_PIVOT_CONSTANTS.get(c.name)
    if c.kind == "setup" and constant is not None:
        if not beam_pivot:
            note = None
        elif c.text == constant and p.text != c.text and py_convention in OTHER_BEAM_PIVOTS:
            row.status, row.component, row.label = "caveat", None, None
    if note:
        row.note = f"{row.note}; {note}" if row.note else note
        caveats[c.name] = note
    return row


def _lost_pix0(c_trace: Trace, p: Line, tol, floor, caveats) -> Row | None:
    """The traced pixel's first line, lost from the C trace: compare with the set-up pix0."""
    setup_name = "pix0_vector" if c_trace.beam_pivot else "pix0_after_twotheta"
    ref = c_trace.find("setup", setup_name)
    if ref is None or c_trace.find("pixel", "pix0_vector_meters") is not None:
        return None
    delta, rel, bad, _ = _compare_values(ref, p, tol, floor)
    note = LOST_LINE_NOTE.format(setup_name)
    caveats["pix0_vector_meters (lost)"] = note
    status = "caveat" if bad is None else "diverged"
    return Row(
        p.kind, p.name, 0, f"({setup_name}) {ref.text}", p.text, delta, rel, status, note=note
    )


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def format_report(report: dict) -> str:
    """The report as a table with the first divergence, caveats and uncompared lines."""
    rows = report["rows"]
    header = ("quantity", "C", "jaxdiff", "Δ", "relative Δ", "status")
    table = [header]
    for r in rows:
        status = r.status if not r.note else f"{r.status}: {r.note}"
        table.append((r.quantity, r.c or "", r.jaxdiff or "", _fmt(r.delta), _fmt(r.rel), status))
    widths = [min(max(len(t[i]) for t in table), 60) for i in range(5)]
    out = []
    for t in table:
        cells = [t[i].ljust(widths[i]) for i in range(5)] + [t[5]]
        out.append("  ".join(cells).rstrip())
    out.append("")
    out.append(
        f"{len(rows)} quantities compared (tolerance {report['tol']:g} relative, "
        f"floor {report['floor']:g} of the line's largest value)"
    )
    if report["caveats"]:
        out.append("C trace caveats applied:")
        out.extend(f"  {name}: {text}" for name, text in report["caveats"].items())
    for what, n in report["ignored"].items():
        out.append(f"not compared: {n} {what}")
    first = report["first"]
    if first is None:
        out.append("no divergence")
    else:
        detail = f": C {first.c!s}, jaxdiff {first.jaxdiff!s}"
        if first.status != "diverged":
            detail = f" ({first.status})"
        elif first.delta is not None:
            detail += f", Δ {_fmt(first.delta)}, relative Δ {_fmt(first.rel)}"
        out.append(f"first divergence: {first.describe()}{detail}")
    return "\n".join(out)


def report_json(report: dict) -> dict:
    """The report as plain JSON-serialisable data."""
    rows = [dict(dataclasses.asdict(r), quantity=r.quantity) for r in report["rows"]]
    first = report["first"]
    first = None if first is None else dict(dataclasses.asdict(first), quantity=first.quantity)
    return dict(
        tol=report["tol"],
        floor=report["floor"],
        diverged=first is not None,
        first_divergence=first,
        rows=rows,
        caveats=report["caveats"],
        not_compared=report["ignored"],
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxdiff-trace`` command."""
    parser = argparse.ArgumentParser(
        prog="jaxdiff-trace",
        description="Compare a nanoBragg TRACE_C trace with a jaxdiff TRACE_PY trace of the same "
        "pixel and name the first quantity that diverges.",
    )
    parser.add_argument("c_trace", help="the C program's output (or its TRACE lines)")
    parser.add_argument("jaxdiff_trace", help="jaxdiff's output with -trace_pixel S F")
    parser.add_argument("--tol", type=float, default=1e-9, help="relative tolerance (1e-9)")
    parser.add_argument(
        "--floor",
        type=float,
        default=1e-12,
        help="tolerance for entries near zero, relative to the line's largest value (1e-12)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    traces = []
    for path in (args.c_trace, args.jaxdiff_trace):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            print(f"jaxdiff-trace: error: {path}: {err.strerror}", file=sys.stderr)
            return 2
        trace = parse_trace(text)
        if not trace.families:
            print(f"jaxdiff-trace: error: {path}: no TRACE_C or TRACE_PY lines", file=sys.stderr)
            return 2
        traces.append(trace)
    report = compare(traces[0], traces[1], args.tol, args.floor)
    if args.json:
        print(json.dumps(report_json(report), indent=1))
    else:
        print(format_report(report))
    return 1 if report["first"] is not None else 0


if __name__ == "__main__":
    sys.exit(main())
