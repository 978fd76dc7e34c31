"""nanoBragg's command-line flags, parsed the way the C program parses them.

The C program tests every argument that starts with '-' against each option in turn with a
substring match (``strstr``), so one argument can set several things and an option's name can
be a prefix of another's. The rule table below keeps that order and those matches, so that a
command line means here what it means to the C program. Unlike the C program, an unknown flag,
a missing value or a value that is not a number is an error (:class:`InputError`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

from jaxdiff.beam import energy_to_wavelength
from jaxdiff.errors import InputError

RTD = 180.0 / math.pi


@dataclasses.dataclass
class Options:
    """The C program's variables after argument parsing (its units: m, rad, as it stores them)."""

    Na: float = 1.0
    Nb: float = 1.0
    Nc: float = 1.0
    cell: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    user_cell: bool = False
    misset: tuple | str | None = None
    sample_size: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    Xbeam: float = math.nan
    Ybeam: float = math.nan
    Xclose: float = math.nan
    Yclose: float = math.nan
    ORGX: float = math.nan
    ORGY: float = math.nan
    pivot: str = "beam"
    convention: str = "mosflm"
    fdet: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 1.0])
    sdet: list = dataclasses.field(default_factory=lambda: [0.0, -1.0, 0.0])
    odet: list = dataclasses.field(default_factory=lambda: [1.0, 0.0, 0.0])
    beam: list = dataclasses.field(default_factory=lambda: [1.0, 0.0, 0.0])
    polar_vector: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 1.0])
    spindle: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 1.0])
    twotheta_axis: list = dataclasses.field(default_factory=lambda: [0.0, 1.0, 0.0])
    pix0_given: bool = False
    distance: float = 0.1
    close_distance: float = math.nan
    detector_mu: float = -1.0
    detector_thick: float = 0.0
    detector_thicksteps: int = -1
    twotheta: float = 0.0
    detector_rot: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    detsize_f: float = 0.1024
    detsize_s: float = 0.1024
    fpixels: int = 0
    spixels: int = 0
    curved: bool = False
    pixel_size: float = 0.0001
    point_pixel: bool = False
    polarization: float = 0.0
    nopolar: bool = False
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False
    oversample: int = -1
    roi: list = dataclasses.field(default_factory=lambda: [-1, -1, -1, -1])
    lambda0: float = 1.0e-10
    fluence: float = 125932015286227086360700780544.0
    flux: float = 0.0
    exposure: float = 1.0
    beamsize: float = 1e-4
    mosaic_spread: float = -1.0
    mosaic_domains: int = -1
    dispersion: float = 0.0
    dispsteps: int = -1
    hdivrange: float = -1.0
    vdivrange: float = -1.0
    hdivstep: float = -1.0
    vdivstep: float = -1.0
    hdivsteps: int = -1
    vdivsteps: int = -1
    round_div: bool = True
    adc_offset: float = 40.0
    phi0: float = 0.0
    osc: float = -1.0
    phistep: float = -1.0
    phisteps: int = -1
    dmin: float = 0.0
    matfile: str | None = None
    hklfile: str | None = None
    default_F: float = 0.0
    imgfile: str | None = None
    maskfile: str | None = None
    stolfile: str | None = None
    sourcefile: str | None = None
    floatfile: str = "floatimage.bin"
    intfile: str = "intimage.img"
    pgmfile: str = "image.pgm"
    noisefile: str = "noiseimage.img"
    write_pgm: bool = True
    calculate_noise: bool = True
    intfile_scale: float = 0.0
    pgm_scale: float = 0.0
    progress: bool = True
    printout: bool = False
    interpolate: int = 2
    shape: str = "square"
    fudge: float = 1.0
    trace_pixel: tuple | None = None
    seed: int | None = None
    mosaic_seed: int = -12345678
    misset_seed: int | None = None
    water_size: float = 0.0
    # jaxdiff's own options (two dashes)
    carryover: str = "spec"
    dtype: str = "float64"
    hdf5: str | None = None
    frames: int = 1
    expt: str | None = None
    trace_panel: int | None = None
    given: set = dataclasses.field(default_factory=set)


def _has(*names: str) -> Callable[[str], bool]:
    return lambda arg: any(n in arg for n in names)


def _is(name: str) -> Callable[[str], bool]:
    return lambda arg: arg == name


def _has_len(name: str, length: int) -> Callable[[str], bool]:
    return lambda arg: name in arg and len(arg) == length


def _parsed(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{flag}: expected a number, got {text!r}") from None
    if math.isnan(value):
        raise InputError(f"{flag}: expected a number, got {text!r}")
    return value


def _number(flag: str, text: str) -> float:
    value = _parsed(flag, text)
    if math.isinf(value):
        raise InputError(f"{flag}: expected a finite number, got {text!r}")
    return value


def _integer(flag: str, text: str) -> int:
    value = _parsed(flag, text)
    if not math.isfinite(value) or value != int(value):
        raise InputError(f"{flag}: expected a whole number, got {text!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One option: which arguments it matches, how many values it takes, what it sets."""

    match: Callable[[str], bool]
    nvalues: int
    apply: Callable[[Options, str, list[str]], None]
    stop: bool = False  # the C program's `continue`: no later option is tried
    needs: int | None = None  # arguments that must follow (the C program's argc test)
    lenient: bool = False  # when they do not, skip the option silently, as the C program does


def _set(attr, conv=_number, scale=1.0):
    def apply(o, flag, vals):
        setattr(o, attr, conv(flag, vals[0]) * scale if conv is _number else conv(flag, vals[0]))

    return apply


def _setter(fn):
    return fn


def _cell(o, flag, vals):
    o.user_cell = True
    scales = [1.0, 1.0, 1.0, 1 / RTD, 1 / RTD, 1 / RTD]
    for i, v in enumerate(vals):
        if v.startswith("-"):
            break
        o.cell[i] = _number(flag, v) * scales[i]


def _cell_values(argv: list[str], i: int) -> list[str]:
    return argv[i + 1 : i + 7]


def _vector(attr, convention="custom"):
    def apply(o, flag, vals):
        o.convention = convention
        setattr(o, attr, [_number(flag, v) for v in vals])

    return apply


def _convention(name, pivot):
    def apply(o, flag, vals):
        o.convention = name
        o.pivot = pivot

    return apply


def _with_pivot(attr, pivot, scale=1.0, conv=_number):
    def apply(o, flag, vals):
        setattr(o, attr, conv(flag, vals[0]) * scale)
        o.pivot = pivot

    return apply


def _flag(attr, value=True):
    def apply(o, flag, vals):
        setattr(o, attr, value)

    return apply


def _misset(o, flag, vals):
    if "rand" in vals[0]:
        o.misset = "random"
        return
    o.misset = tuple(_number(flag, v) / RTD for v in vals)


def _misset_random(o, flag, vals):
    o.misset = "random"


def _sample(axes, scale=1e-3):
    def apply(o, flag, vals):
        v = _number(flag, vals[0]) * scale
        for ax in axes:
            o.sample_size[ax] = v

    return apply


def _pivot(o, flag, vals):
    if "sample" in vals[0]:
        o.pivot = "sample"
    elif "beam" in vals[0]:
        o.pivot = "beam"
    else:
        raise InputError(f"{flag}: expected 'beam' or 'sample', got {vals[0]!r}")


def _pix0(o, flag, vals):
    o.convention = "custom"
    o.pix0_given = True
    for v in vals:
        _number(flag, v)


def _detector_abs(o, flag, vals):
    if "inf" in vals[0] or _number(flag, vals[0]) == 0.0:
        o.detector_thick = 0.0
        o.detector_mu = 0.0
    else:
        o.detector_mu = 1.0 / (_number(flag, vals[0]) * 1e-6)


def _detpixels(attrs):
    def apply(o, flag, vals):
        n = _integer(flag, vals[0])
        for a in attrs:
            setattr(o, a, n)

    return apply


def _detsize(attrs):
    def apply(o, flag, vals):
        v = _number(flag, vals[0]) / 1000.0
        for a in attrs:
            setattr(o, a, v)

    return apply


def _polar(o, flag, vals):
    o.polarization = _number(flag, vals[0])
    o.nopolar = False


def _roi(o, flag, vals):
    o.roi = [_integer(flag, v) for v in vals]


def _energy(o, flag, vals):
    energy = _number(flag, vals[0])
    if not energy > 0.0:
        raise InputError(f"{flag}: photon energy must be positive, got {vals[0]} eV")
    o.lambda0 = energy_to_wavelength(energy)


def _div(attrs, conv=_number, scale=1e-3):
    def apply(o, flag, vals):
        v = conv(flag, vals[0])
        for a in attrs:
            setattr(o, a, v * scale if conv is _number else v)

    return apply


def _path(attr, enable=None):
    """A file name (input or output); an output may also switch its writer on (``enable``)."""

    def apply(o, flag, vals):
        setattr(o, attr, vals[0])
        if enable:
            setattr(o, enable, True)

    return apply


def _pgmscale(o, flag, vals):
    o.pgm_scale = _number(flag, vals[0])
    o.write_pgm = True


def _trace(o, flag, vals):
    o.trace_pixel = (_integer(flag, vals[0]), _integer(flag, vals[1]))


def _seed(attr):
    def apply(o, flag, vals):
        seed = _integer(flag, vals[0])
        if not -(2**31) < seed < 2**31:
            raise InputError(f"{flag}: seed must fit a 32-bit integer, got {vals[0]}")
        setattr(o, attr, -seed)

    return apply


def _shape(name):
    return _flag("shape", name)


def _n_all(o, flag, vals):
    o.Na = o.Nb = o.Nc = float(_integer(flag, vals[0]))


def _n_one(attr):
    def apply(o, flag, vals):
        setattr(o, attr, float(_integer(flag, vals[0])))

    return apply


def _ignore_values(o, flag, vals):
    for v in vals:
        _number(flag, v)


def _detector_rot(axis):
    def apply(o, flag, vals):
        o.detector_rot[axis] = _number(flag, vals[0]) / RTD

    return apply


def _mosaic_match(arg: str) -> bool:
    return ("-mosaic" in arg and len(arg) == 7) or "-mosaici" in arg or "-mosaic_spr" in arg


RULES: list[Rule] = [
    Rule(_has("-Na"), 1, _n_one("Na"), stop=True),
    Rule(_has("-Nb"), 1, _n_one("Nb"), stop=True),
    Rule(_has("-Nc"), 1, _n_one("Nc"), stop=True),
    Rule(_is("-N"), 1, _n_all, stop=True),
    Rule(_has("-cell"), 6, _cell),
    Rule(_is("-misset"), 1, _misset_random, stop=True),  # only when the value says "rand..."
    Rule(_is("-misset"), 3, _misset),
    Rule(_has("-samplesize", "-sample_size"), 1, _sample((0, 1, 2))),
    Rule(_has("-sample_thick", "-sample_x"), 1, _sample((0,))),
    Rule(_has("-sample_width", "-sample_y", "-width"), 1, _sample((1,))),
    Rule(_has("-sample_heigh", "-sample_z", "-heigh"), 1, _sample((2,))),
    Rule(_has("-xtalsize", "-xtal_size"), 1, _sample((0, 1, 2))),
    Rule(_has("-xtal_thick", "-xtal_x"), 1, _sample((0,))),
    Rule(_has("-xtal_width", "-xtal_y", "-width"), 1, _sample((1,))),
    Rule(_has("-xtal_heigh", "-xtal_z", "-heigh"), 1, _sample((2,))),
    Rule(_has("-density", "-sample_den"), 1, _ignore_values),
    Rule(lambda a: a == "-MW" or "-molec" in a, 1, _ignore_values),
    Rule(_has("-Xbeam"), 1, _with_pivot("Xbeam", "beam", 1e-3)),
    Rule(_has("-Ybeam"), 1, _with_pivot("Ybeam", "beam", 1e-3)),
    Rule(_has("-Xclose"), 1, _with_pivot("Xclose", "sample", 1e-3)),
    Rule(_has("-Yclose"), 1, _with_pivot("Yclose", "sample", 1e-3)),
    Rule(_has("-ORGX"), 1, _with_pivot("ORGX", "sample")),
    Rule(_has("-ORGY"), 1, _with_pivot("ORGY", "sample")),
    Rule(_has("-pivot"), 1, _pivot),
    Rule(_has("-mosflm"), 0, _convention("mosflm", "beam")),
    Rule(_has("-xds"), 0, _convention("xds", "sample")),
    Rule(_has("-adxv"), 0, _convention("adxv", "beam")),
    Rule(_has("-denzo"), 0, _convention("denzo", "beam")),
    Rule(_has("-dials"), 0, _convention("dials", "beam")),
    Rule(_has("-fdet_vector"), 3, _vector("fdet")),
    Rule(_has("-sdet_vector"), 3, _vector("sdet")),
    Rule(_has("-odet_vector"), 3, _vector("odet")),
    Rule(_has("-beam_vector"), 3, _vector("beam")),
    Rule(_has("-polar_vector"), 3, _vector("polar_vector")),
    Rule(_has("-spindle_axis"), 3, _vector("spindle")),
    Rule(_has("-twotheta_axis"), 3, _vector("twotheta_axis")),
    Rule(_has("-pix0_vector"), 3, _pix0),
    Rule(_has("-distance"), 1, _with_pivot("distance", "beam", 1e-3)),
    Rule(_has("-close_distance"), 1, _with_pivot("close_distance", "sample", 1e-3)),
    Rule(_has("-detector_abs"), 1, _detector_abs),
    Rule(_has_len("-detector_thick", 15), 1, _set("detector_thick", scale=1e-6)),
    Rule(_has("-detector_thicksteps"), 1, _set("detector_thicksteps", _integer)),
    Rule(_has("-thicksteps"), 1, _set("detector_thicksteps", _integer)),
    Rule(_has("-twotheta"), 1, _with_pivot("twotheta", "sample", 1 / RTD)),
    Rule(_has("-detector_rotx"), 1, _detector_rot(0)),
    Rule(_has("-detector_roty"), 1, _detector_rot(1)),
    Rule(_has("-detector_rotz"), 1, _detector_rot(2)),
    Rule(_has_len("-detsize", 8), 1, _detsize(("detsize_f", "detsize_s"))),
    Rule(_has("-detsize_f"), 1, _detsize(("detsize_f",))),
    Rule(_has("-detsize_s"), 1, _detsize(("detsize_s",))),
    Rule(_has_len("-detpixels", 10), 1, _detpixels(("fpixels", "spixels"))),
    Rule(_has("-detpixels_f", "-detpixels_x"), 1, _detpixels(("fpixels",))),
    Rule(_has("-detpixels_s", "-detpixels_y"), 1, _detpixels(("spixels",))),
    Rule(_has("-curved_det"), 0, _flag("curved"), needs=1, lenient=True),
    Rule(_has("-pixel"), 1, _set("pixel_size", scale=1e-3)),
    Rule(_has("-point_pixel"), 0, _flag("point_pixel")),
    Rule(_has_len("-polar", 6), 1, _polar),
    Rule(_has("-nopolar"), 0, _flag("nopolar")),
    Rule(_has("-oversample_thick"), 0, _flag("oversample_thick"), stop=True),
    Rule(_has("-oversample_polar"), 0, _flag("oversample_polar"), stop=True),
    Rule(_has("-oversample_omega"), 0, _flag("oversample_omega"), stop=True),
    Rule(_has("-oversample"), 1, _set("oversample", _integer)),
    Rule(_has("-roi"), 4, _roi),
    Rule(_has("-lambda", "-wave"), 1, _set("lambda0", scale=1e-10)),
    Rule(_has("-energy"), 1, _energy),
    Rule(_has("-fluence"), 1, _set("fluence")),
    Rule(_has("-flux"), 1, _set("flux")),
    Rule(_has("-exposure"), 1, _set("exposure")),
    Rule(_has("-beamsize"), 1, _set("beamsize", scale=1e-3)),
    Rule(_mosaic_match, 1, _set("mosaic_spread", scale=1 / RTD)),
    Rule(_has("-mosaic_dom"), 1, _set("mosaic_domains", _integer)),
    Rule(_has("-dispersion"), 1, _set("dispersion", scale=0.01)),
    Rule(_has("-dispsteps"), 1, _set("dispsteps", _integer)),
    Rule(_has("-divergence"), 1, _div(("hdivrange", "vdivrange"))),
    Rule(_has("-hdivrange"), 1, _div(("hdivrange",))),
    Rule(_has("-vdivrange"), 1, _div(("vdivrange",))),
    Rule(_has_len("-hdivstep", 9), 1, _div(("hdivstep",))),
    Rule(_has("-hdivsteps"), 1, _div(("hdivsteps",), _integer)),
    Rule(_has_len("-vdivstep", 9), 1, _div(("vdivstep",))),
    Rule(_has("-vdivsteps"), 1, _div(("vdivsteps",), _integer)),
    Rule(_has("-divsteps"), 1, _div(("hdivsteps", "vdivsteps"), _integer)),
    Rule(_has("-round_div"), 0, _flag("round_div", True)),
    Rule(_has("-square_div"), 0, _flag("round_div", False)),
    Rule(_has("-adc"), 1, _set("adc_offset")),
    Rule(_has_len("-phi", 4), 1, _set("phi0", scale=1 / RTD)),
    Rule(_has("-osc"), 1, _set("osc", scale=1 / RTD)),
    Rule(_has_len("-phistep", 8), 1, _set("phistep", scale=1 / RTD)),
    Rule(_has("-phisteps"), 1, _set("phisteps", _integer)),
    Rule(_has("-dmin"), 1, _set("dmin", scale=1e-10)),
    Rule(_has("-mat"), 1, _path("matfile")),
    Rule(_has("-hkl"), 1, _path("hklfile")),
    Rule(_has("-default_F"), 1, _set("default_F")),
    Rule(_has("-img"), 1, _path("imgfile")),
    Rule(lambda a: "-stolout" in a and len(a) > 7, 1, _path("stolfile")),
    Rule(_has_len("-stol", 5), 1, _path("stolfile")),
    Rule(_has_len("-4stol", 6), 1, _path("stolfile")),
    Rule(_has_len("-Q", 2), 1, _path("stolfile")),
    Rule(_has("-sourcefile"), 1, _path("sourcefile")),
    Rule(_has("-floatfile", "-floatimage"), 1, _path("floatfile")),
    Rule(_has("-intfile", "-intimage"), 1, _path("intfile")),
    Rule(_has("-pgmfile", "-pgmimage"), 1, _path("pgmfile", "write_pgm")),
    Rule(_has("-noisefile", "-noiseimage"), 1, _path("noisefile", "calculate_noise")),
    Rule(_has("-nonoise"), 0, _flag("calculate_noise", False)),
    Rule(_has("-nopgm"), 0, _flag("write_pgm", False)),
    Rule(_has("-scale"), 1, _set("intfile_scale")),
    Rule(_has("-pgmscale"), 1, _pgmscale),
    Rule(_has("-coherent"), 0, _ignore_values),
    Rule(_has("-printout"), 0, _flag("printout")),
    Rule(_has("-noprogress"), 0, _flag("progress", False)),
    Rule(_has("-progress"), 0, _flag("progress", True)),
    Rule(_has("-interpolate"), 0, _flag("interpolate", 1)),
    Rule(_has("-nointerpolate"), 0, _flag("interpolate", 0)),
    Rule(_has("-round_xtal"), 0, _shape("round")),
    Rule(_has("-square_xtal"), 0, _shape("square")),
    Rule(_has("-gauss_xtal"), 0, _shape("gauss")),
    Rule(_has("-binary_spots", "-tophat_spots"), 0, _shape("tophat")),
    Rule(_has("-fudge"), 1, _set("fudge")),
    Rule(_has("-printout_pixel"), 2, _ignore_values),
    Rule(_has("-trace_pixel", "-dump_pixel"), 2, _trace),
    Rule(_has("-seed"), 1, _seed("seed")),
    Rule(_has("-mosaic_seed"), 1, _seed("mosaic_seed")),
    Rule(_has("-misset_seed"), 1, _seed("misset_seed")),
    Rule(_has("-water"), 1, _set("water_size", scale=1e-6)),
    Rule(_has("-mask"), 1, _path("maskfile")),
]


def _frame_count(flag: str, text: str) -> int:
    count = _integer(flag, text)
    if count < 1:
        raise InputError(f"{flag}: the number of frames must be at least 1, got {text}")
    return count


def _panel_index(flag: str, text: str) -> int:
    index = _integer(flag, text)
    if index < 0:
        raise InputError(f"{flag}: a panel number counts from 0, got {text}")
    return index


# jaxdiff's own options: attribute, and the allowed values (a tuple), a converter, or None
LONG_OPTIONS = {
    "--phi-carryover-mode": ("carryover", ("spec", "c-parity")),
    "--dtype": ("dtype", ("float64", "float32")),
    "--hdf5": ("hdf5", None),
    "--expt": ("expt", None),
    "--frames": ("frames", _frame_count),
    "--trace-panel": ("trace_panel", _panel_index),
}


def _looks_numeric(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def _values(rule: Rule, arg: str, argv: list[str], i: int) -> list[str] | None:
    """The values ``rule`` takes at ``argv[i]``, or None when it does not apply there."""
    rest = argv[i + 1 :]
    if rule.apply is _cell:
        vals = []
        for v in rest[:6]:
            if v.startswith("-"):
                break
            vals.append(v)
        if not vals:
            raise InputError(f"{arg}: missing values (a b c [alpha beta gamma])")
        return vals
    if rule.apply is _misset_random:
        return rest[:1] if rest and "rand" in rest[0] else None
    need = rule.nvalues if rule.needs is None else rule.needs
    if len(rest) < need:
        if rule.lenient:
            return None
        what = "value" if need == 1 else f"{need} values"
        raise InputError(f"{arg}: missing {what}")
    vals = rest[: rule.nvalues]
    if any(v.startswith("-") and not _looks_numeric(v) for v in vals):
        what = "value" if rule.nvalues == 1 else f"{rule.nvalues} values"
        raise InputError(f"{arg}: missing {what} (got option {vals[-1]!r} instead)")
    return vals


def _long_option(o: Options, argv: list[str], i: int, consumed: list[bool]) -> None:
    name, eq, inline = argv[i].partition("=")
    if name not in LONG_OPTIONS:
        raise InputError(f"{name}: unknown option")
    attr, choices = LONG_OPTIONS[name]
    if eq:
        value = inline
    elif i + 1 < len(argv):
        value = argv[i + 1]
        consumed[i + 1] = True
    else:
        raise InputError(f"{name}: missing value")
    if callable(choices):
        value = choices(name, value)
    elif choices and value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    setattr(o, attr, value)


@functools.lru_cache(maxsize=4096)
def _matching(arg: str) -> tuple[Rule, ...]:
    """The rules whose name test ``arg`` passes, in table order (a command file repeats the
    same flags on every line)."""
    return tuple(rule for rule in RULES if rule.match(arg))


def parse(argv: list[str], base: Options | None = None) -> Options:
    """Parse a nanoBragg command line (without the program name) into :class:`Options`,
    starting from ``base`` (e.g. values read from an image header) when given."""
    o = base if base is not None else Options()
    consumed = [False] * len(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            _long_option(o, argv, i, consumed)
            consumed[i] = True
            continue
        if not arg.startswith("-") or _looks_numeric(arg):
            continue
        matched = False
        for rule in _matching(arg):
            vals = _values(rule, arg, argv, i)
            if vals is None:
                matched = matched or rule.lenient
                continue
            rule.apply(o, arg, vals)
            consumed[i + 1 : i + 1 + len(vals)] = [True] * len(vals)
            matched = True
            o.given.add(arg)
            if rule.stop:
                break
        if not matched:
            raise InputError(f"{arg}: unknown option")
        consumed[i] = True
    for k, arg in enumerate(argv):
        if not consumed[k]:
            raise InputError(f"{arg!r}: unexpected argument (no option takes it)")
    return o
