"""SMV (ADSC) images as nanoBragg writes them: a 512-byte text header, then uint16 pixels."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io._text import read_bytes
from jaxdiff.io.atomic import atomic_output

HEADER_BYTES = 512
# C's RTD = 180.0*M_1_PI, with glibc's M_1_PI literal.
_M_1_PI = 0.31830988618379067154
_RTD = 180.0 * _M_1_PI
_LEADING_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")


def fmt_g(x: float, precision: int = 6) -> str:
    """``x`` as C's ``printf("%.<precision>g")`` prints it with glibc (``1e+06``, ``-0``,
    ``-nan``, ``inf``)."""
    x = float(x)
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    # Python's "g" formatting is correctly rounded and follows C's rules (trailing zeros
    # removed, an exponent of at least two digits, "inf"), as glibc's printf is and does.
    return f"{x:.{precision}g}"


def smv_header(lines: Sequence[str]) -> bytes:
    """Build an SMV header around ``lines``: 512 bytes, or the next multiple of 512 that holds it.

    The fixed opening (``HEADER_BYTES``, ``DIM``, ``BYTE_ORDER=little_endian``,
    ``TYPE=unsigned_short``) comes first, then each of ``lines`` followed by a newline (so each
    line carries its own ``;``), then ``}`` and a form feed, padded with spaces. The C program
    writes ``HEADER_BYTES=512`` even when its text is longer, which shifts its pixels; here the
    size is rounded up so that ``HEADER_BYTES`` always says where the pixels start.
    """
    body = "DIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
    body += "".join(f"{line}\n" for line in lines)
    body += "}\f"
    size = HEADER_BYTES
    while True:
        raw = f"{{\nHEADER_BYTES={size};\n{body}".encode("ascii")
        if len(raw) <= size:
            return raw.ljust(size, b" ")
        size = -(-len(raw) // HEADER_BYTES) * HEADER_BYTES


def c_header_lines(
    fpixels: int,
    spixels: int,
    pixel_size_m: float,
    distance_m: float,
    wavelength_m: float,
    Xbeam_m: float,
    Ybeam_m: float,
    Fbeam_m: float,
    Sbeam_m: float,
    detsize_s_m: float,
    dials_origin_mm: Sequence[float],
    orgx: float,
    orgy: float,
    close_distance_m: float,
    phi0_rad: float,
    osc_rad: float,
    twotheta_rad: float,
) -> list[str]:
    """The header lines nanoBragg writes after ``TYPE``, formatted with C's ``%g``.

    Lengths come in metres and angles in radians, as nanoBragg keeps them; the header holds
    millimetres, Ångström (``WAVELENGTH``), pixels (``XDS_ORGX/Y``) and degrees. The beam
    centres for each convention are derived as C does: ``ADXV_CENTER_Y = detsize_s - Sbeam``,
    ``MOSFLM_CENTER_X/Y = Sbeam/Fbeam - pixel/2``, ``DENZO_X/Y_BEAM = Sbeam/Fbeam``.
    ``DIALS_ORIGIN`` (mm) has no trailing semicolon, exactly like nanoBragg's output.
    """
    g = fmt_g
    px = pixel_size_m
    ox, oy, oz = (float(v) for v in dials_origin_mm)
    return [
        f"SIZE1={int(fpixels)};",
        f"SIZE2={int(spixels)};",
        f"PIXEL_SIZE={g(px * 1000.0)};",
        f"DISTANCE={g(distance_m * 1000.0)};",
        f"WAVELENGTH={g(wavelength_m * 1e10)};",
        f"BEAM_CENTER_X={g(Xbeam_m * 1000.0)};",
        f"BEAM_CENTER_Y={g(Ybeam_m * 1000)};",
        f"ADXV_CENTER_X={g(Fbeam_m * 1000.0)};",
        f"ADXV_CENTER_Y={g((detsize_s_m - Sbeam_m) * 1000)};",
        f"MOSFLM_CENTER_X={g((Sbeam_m - 0.5 * px) * 1000.0)};",
        f"MOSFLM_CENTER_Y={g((Fbeam_m - 0.5 * px) * 1000)};",
        f"DENZO_X_BEAM={g((Sbeam_m - 0.0 * px) * 1000.0)};",
        f"DENZO_Y_BEAM={g((Fbeam_m - 0.0 * px) * 1000)};",
        f"DIALS_ORIGIN={g(ox)},{g(oy)},{g(oz)}",
        f"XDS_ORGX={g(orgx)};",
        f"XDS_ORGY={g(orgy)};",
        f"CLOSE_DISTANCE={g(close_distance_m * 1000.0)};",
        f"PHI={g(phi0_rad * _RTD)};",
        f"OSC_START={g(phi0_rad * _RTD)};",
        f"OSC_RANGE={g(osc_rad * _RTD)};",
        f"TWOTHETA={g(twotheta_rad * _RTD)};",
        "DETECTOR_SN=000;",
        "BEAMLINE=fake;",
    ]


def write_smv(path: str | os.PathLike[str], data: np.ndarray, header_lines: Sequence[str]) -> None:
    """Write a uint16 image of shape (slow, fast) as a little-endian SMV file (atomically).

    ``header_lines`` are the lines after ``TYPE`` (see :func:`c_header_lines`); they should
    include ``SIZE1`` (fast pixels) and ``SIZE2`` (slow pixels) matching ``data``.
    """
    image = np.asarray(data)
    if image.ndim != 2:
        raise ValueError(f"SMV data must be 2-D (slow, fast), got shape {image.shape}")
    if image.dtype != np.uint16:
        raise ValueError(f"SMV data must be uint16, got {image.dtype}")
    header = smv_header(header_lines)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(np.ascontiguousarray(image, dtype="<u2"))


def _parse_header_text(text: str) -> dict[str, str]:
    header: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("}"):
            break
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        # A repeated key takes its last value, like nanoBragg's ValueOf().
        header[key.strip()] = value.strip().rstrip(";").strip()
    return header


def _required(header: dict[str, str], key: str, path: str | os.PathLike[str]) -> str:
    if key not in header:
        raise InputError(f"{path}: SMV header has no {key}")
    return header[key]


def _required_int(header: dict[str, str], key: str, path: str | os.PathLike[str]) -> int:
    value = _required(header, key, path)
    try:
        number = int(value)
    except ValueError as err:
        raise InputError(f"{path}: SMV header {key}={value} is not an integer") from err
    if number <= 0:
        raise InputError(f"{path}: SMV header {key}={value} must be positive")
    return number


def read_smv(path: str | os.PathLike[str]) -> tuple[dict[str, str], np.ndarray]:
    """Read an SMV image of unsigned shorts.

    Returns:
        ``(header, data)``: the header keys mapped to their values as strings (the ``;``
        removed), and the pixels as native uint16 of shape (SIZE2, SIZE1) = (slow, fast),
        byte-swapped when ``BYTE_ORDER`` is ``big_endian``.

    Raises:
        InputError: missing file, a file that does not start with ``{``, a missing
            ``HEADER_BYTES``, ``SIZE1``, ``SIZE2`` or ``BYTE_ORDER``, an unknown byte order or
            pixel type, or fewer pixel bytes than the header promises. The message names the
            file and, where relevant, the key.
    """
    raw = read_bytes(path, "SMV image")
    if not raw.startswith(b"{"):
        raise InputError(f"{path}: not an SMV image (does not start with '{{')")
    first = _parse_header_text(raw[:HEADER_BYTES].decode("ascii", errors="replace"))
    header_bytes = _required_int(first, "HEADER_BYTES", path)
    if header_bytes > len(raw):
        raise InputError(
            f"{path}: HEADER_BYTES={header_bytes} but the file has only {len(raw)} bytes"
        )
    header = _parse_header_text(raw[:header_bytes].decode("ascii", errors="replace"))
    fast = _required_int(header, "SIZE1", path)
    slow = _required_int(header, "SIZE2", path)
    byte_order = _required(header, "BYTE_ORDER", path)
    if byte_order not in ("little_endian", "big_endian"):
        raise InputError(f"{path}: SMV header BYTE_ORDER={byte_order} is not understood")
    pixel_type = header.get("TYPE", "unsigned_short")
    if pixel_type != "unsigned_short":
        raise InputError(f"{path}: SMV header TYPE={pixel_type}; only unsigned_short is read")
    needed = 2 * fast * slow
    body = raw[header_bytes : header_bytes + needed]
    if len(body) < needed:
        raise InputError(
            f"{path}: truncated SMV image: SIZE1={fast} x SIZE2={slow} needs {needed} bytes "
            f"after the header, found {len(body)}"
        )
    dtype = "<u2" if byte_order == "little_endian" else ">u2"
    data = np.frombuffer(body, dtype=dtype).reshape(slow, fast).astype(np.uint16)
    return header, data


def header_float(header: dict[str, str], key: str) -> float | None:
    """The number at the start of ``header[key]`` (C ``atof`` style), or None if absent."""
    value = header.get(key)
    if value is None:
        return None
    match = _LEADING_NUMBER.match(value)
    if match is None:
        return None
    return float(match.group(1))
