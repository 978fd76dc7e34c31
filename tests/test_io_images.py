"""SMV images, nanoBragg's integer conversion, raw float images and PGM previews."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fabio
import numpy as np
import pytest
from conftest import GOLDEN

from jaxdiff.errors import InputError
from jaxdiff.io import (
    atomic_output,
    auto_int_scale,
    auto_pgm_scale,
    c_header_lines,
    fmt_g,
    header_float,
    read_float_image,
    read_smv,
    smv_header,
    to_int_image,
    write_float_image,
    write_pgm,
    write_smv,
)


def case_flag(case: str, flag: str, default: float) -> float:
    """The value following ``flag`` in a golden case's command line."""
    argv = json.loads((GOLDEN / case / "cmd.json").read_text())["argv"]
    return float(argv[argv.index(flag) + 1]) if flag in argv else default


SMV_FILES = [
    ("cubic_default_F_basic", "int.img", 64),
    ("intfile_scale_adc", "int.img", 128),
    ("noise_seed", "int.img", 128),
    ("noise_seed", "noise.img", 128),
]


@pytest.mark.parametrize(("case", "name", "pixels"), SMV_FILES)
def test_read_golden_smv(case: str, name: str, pixels: int) -> None:
    path = GOLDEN / case / name
    header, data = read_smv(path)
    assert header["HEADER_BYTES"] == "512"
    assert header["BYTE_ORDER"] == "little_endian"
    assert header["TYPE"] == "unsigned_short"
    assert header["SIZE1"] == header["SIZE2"] == str(pixels)
    assert header["DIALS_ORIGIN"].count(",") == 2
    assert header_float(header, "PIXEL_SIZE") == 0.1
    assert header_float(header, "DISTANCE") == 100.0
    # DIALS_ORIGIN holds three numbers; header_float reads the first, like C's atof
    assert header_float(header, "DIALS_ORIGIN") == float(f"{-(pixels + 2) / 20:g}")
    assert header_float(header, "NO_SUCH_KEY") is None
    assert data.shape == (pixels, pixels) and data.dtype == np.uint16
    raw = np.fromfile(path, dtype="<u2", offset=512).reshape(pixels, pixels)
    np.testing.assert_array_equal(data, raw)
    assert data.min() >= case_flag(case, "-adc", 40.0)  # every pixel carries the ADC offset


@pytest.mark.parametrize("case", ["cubic_default_F_basic", "intfile_scale_adc", "noise_seed"])
def test_int_conversion_reproduces_golden_int_img(case: str) -> None:
    _, golden = read_smv(GOLDEN / case / "int.img")
    photons = read_float_image(GOLDEN / case / "float.bin", golden.shape)
    # -scale absent (0) means C's automatic 55000 / max_I over the rendered (ROI) pixels.
    scale = case_flag(case, "-scale", 0.0) or auto_int_scale(float(photons.max()))
    counts = to_int_image(photons, scale, case_flag(case, "-adc", 40.0))
    # Exact, not just within 1 count: the double sum rounded through float32 floorf is
    # reproduced as C does it.
    np.testing.assert_array_equal(counts, golden)


def test_auto_int_scale_matches_c_stdout() -> None:
    photons = np.fromfile(GOLDEN / "cubic_default_F_basic" / "float.bin", dtype="<f4")
    # stdout.txt: "max_I = 154.652", "intfile_scale = 355.636"
    assert fmt_g(float(photons.max())) == "154.652"
    assert fmt_g(auto_int_scale(float(photons.max()))) == "355.636"
    assert auto_int_scale(0.0) == 1.0 and auto_int_scale(-3.0) == 1.0


def test_int_conversion_clips_rounds_and_masks() -> None:
    photons = np.array([[0.0, 1.49, 1.5, -100.0], [1e9, 2.4, 7.0, np.nan]], np.float32)
    roi = np.ones(photons.shape, dtype=bool)
    roi[1, 2] = False
    counts = to_int_image(photons, 1.0, 0.0, roi)
    assert counts.dtype == np.uint16
    np.testing.assert_array_equal(counts, [[0, 1, 2, 0], [65535, 2, 0, 0]])
    # float32(2.4999999 + 0.5) rounds to 3.0 before floorf, as in C; the double would give 2
    assert to_int_image(np.array([[2.4999999]], np.float32), 1.0, 0.0)[0, 0] == 3
    assert to_int_image(np.array([[0.0]], np.float32), 1.0, 2.4999999)[0, 0] == 3
    np.testing.assert_array_equal(to_int_image(photons[:1, :2], 2.0, 40.0), [[40, 43]])


def header_for_64px_mosflm_default() -> list[str]:
    """c_header_lines for cubic_default_F_basic, with the geometry worked out from its flags.

    -detpixels 64, default pixel 0.1 mm: detsize 6.4 mm. MOSFLM default beam centre:
    Xbeam = Ybeam = (6.4 + 0.1)/2 = 3.25 mm; Fbeam = Ybeam + 0.5 px = 3.3 mm, Sbeam = Xbeam +
    0.5 px = 3.3 mm. -distance 100 mm, no detector rotation: close distance 100 mm. pix0 =
    distance*o - Fbeam*f - Sbeam*s with o = (1,0,0), f = (0,0,1), s = (0,-1,0): (100, 3.3,
    -3.3) mm, so DIALS origin (pix0_z, pix0_y, -pix0_x) = (-3.3, 3.3, -100) mm and XDS
    ORGX = ORGY = 3.3/0.1 + 0.5 = 33.5. -lambda 6.2 Å. phi, osc and twotheta are 0.
    """
    return c_header_lines(
        fpixels=64,
        spixels=64,
        pixel_size_m=0.1e-3,
        distance_m=100e-3,
        wavelength_m=6.2e-10,
        Xbeam_m=3.25e-3,
        Ybeam_m=3.25e-3,
        Fbeam_m=3.3e-3,
        Sbeam_m=3.3e-3,
        detsize_s_m=6.4e-3,
        dials_origin_mm=(-3.3, 3.3, -100.0),
        orgx=33.5,
        orgy=33.5,
        close_distance_m=100e-3,
        phi0_rad=0.0,
        osc_rad=0.0,
        twotheta_rad=0.0,
    )


def test_c_header_text_matches_golden_byte_for_byte() -> None:
    golden = (GOLDEN / "cubic_default_F_basic" / "int.img").read_bytes()[:512]
    mine = smv_header(header_for_64px_mosflm_default())
    assert mine == golden


def test_c_header_angles_and_keys() -> None:
    lines = c_header_lines(
        fpixels=3, spixels=2, pixel_size_m=0.172e-3, distance_m=0.25, wavelength_m=1e-6,
        Xbeam_m=0.01, Ybeam_m=0.02, Fbeam_m=0.03, Sbeam_m=0.04, detsize_s_m=0.1,
        dials_origin_mm=(1e6, -0.0, 1e-5), orgx=1.5, orgy=2.5, close_distance_m=0.2,
        phi0_rad=math.radians(10), osc_rad=math.radians(0.1), twotheta_rad=math.radians(-20),
    )  # fmt: skip
    keys = [line.partition("=")[0] for line in lines]
    assert keys == [
        "SIZE1", "SIZE2", "PIXEL_SIZE", "DISTANCE", "WAVELENGTH", "BEAM_CENTER_X",
        "BEAM_CENTER_Y", "ADXV_CENTER_X", "ADXV_CENTER_Y", "MOSFLM_CENTER_X", "MOSFLM_CENTER_Y",
        "DENZO_X_BEAM", "DENZO_Y_BEAM", "DIALS_ORIGIN", "XDS_ORGX", "XDS_ORGY", "CLOSE_DISTANCE",
        "PHI", "OSC_START", "OSC_RANGE", "TWOTHETA", "DETECTOR_SN", "BEAMLINE",
    ]  # fmt: skip
    assert "WAVELENGTH=10000;" in lines
    assert "ADXV_CENTER_Y=60;" in lines
    assert "MOSFLM_CENTER_X=39.914;" in lines
    assert "MOSFLM_CENTER_Y=29.914;" in lines
    assert "DENZO_X_BEAM=40;" in lines
    assert "DIALS_ORIGIN=1e+06,-0,1e-05" in lines
    assert "PHI=10;" in lines and "OSC_START=10;" in lines and "OSC_RANGE=0.1;" in lines
    assert "TWOTHETA=-20;" in lines


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1234567.0, "1.23457e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.0, "-0"),
        (3.25, "3.25"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (-math.nan, "-nan"),
    ],
)
def test_fmt_g_is_printf_g(value: float, text: str) -> None:
    assert fmt_g(value) == text


def test_smv_write_read_round_trip_and_fabio(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(0, 65536, size=(7, 11), dtype=np.uint16)
    path = tmp_path / "image.img"
    write_smv(path, data, ["SIZE1=11;", "SIZE2=7;", "PIXEL_SIZE=0.1;", "DISTANCE=100;"])
    raw = path.read_bytes()
    assert len(raw) == 512 + 2 * data.size
    assert raw[:512].rstrip(b" ").endswith(b"}\f")
    header, back = read_smv(path)
    np.testing.assert_array_equal(back, data)
    assert header["SIZE1"] == "11" and header["DISTANCE"] == "100"
    image = fabio.open(str(path))
    np.testing.assert_array_equal(image.data, data)
    assert int(image.header["SIZE1"]) == 11 and int(image.header["SIZE2"]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.img"]


def test_fabio_reads_c_style_header(tmp_path: Path) -> None:
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "c_style.img"
    write_smv(path, data, header_for_64px_mosflm_default())
    image = fabio.open(str(path))
    np.testing.assert_array_equal(image.data, data)
    assert float(image.header["WAVELENGTH"]) == 6.2


def test_read_big_endian_and_larger_header(tmp_path: Path) -> None:
    data = np.array([[1, 258], [65535, 4096]], dtype=np.uint16)
    text = "{\nHEADER_BYTES=  1024;\nDIM=2;\nBYTE_ORDER=big_endian;\nTYPE=unsigned_short;\n"
    text += "SIZE1=2;\nSIZE2=2;\n}\f"
    path = tmp_path / "big.img"
    path.write_bytes(text.encode().ljust(1024, b" ") + data.astype(">u2").tobytes() + b"xx")
    header, back = read_smv(path)
    assert header["HEADER_BYTES"] == "1024"
    np.testing.assert_array_equal(back, data)
    assert back.dtype == np.dtype(np.uint16)


def smv_bytes(lines: list[str], pixels: bytes) -> bytes:
    text = "{\n" + "".join(f"{line}\n" for line in lines) + "}\f"
    return text.encode().ljust(512, b" ") + pixels


GOOD = ["HEADER_BYTES=512;", "DIM=2;", "BYTE_ORDER=little_endian;", "SIZE1=2;", "SIZE2=3;"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"P5\n2 3\n255\n" + bytes(6), "does not start with '{'"),
        (smv_bytes([g for g in GOOD if "SIZE1" not in g], bytes(12)), "no SIZE1"),
        (smv_bytes([g for g in GOOD if "SIZE2" not in g], bytes(12)), "no SIZE2"),
        (smv_bytes([g for g in GOOD if "BYTE_ORDER" not in g], bytes(12)), "no BYTE_ORDER"),
        (smv_bytes(GOOD[1:], bytes(12)), "no HEADER_BYTES"),
        (smv_bytes(GOOD, bytes(11)), "truncated"),
        (smv_bytes([*GOOD, "TYPE=float;"], bytes(12)), "TYPE=float"),
        (smv_bytes([*GOOD, "SIZE1=two;"], bytes(12)), "SIZE1=two is not an integer"),
        (smv_bytes([*GOOD, "BYTE_ORDER=middle;"], bytes(12)), "BYTE_ORDER=middle"),
        (b"{\nHEADER_BYTES=4096;\n}", "HEADER_BYTES=4096"),
    ],
    ids=(
        "not_smv no_size1 no_size2 no_byte_order no_header_bytes truncated float_type "
        "bad_size1 bad_byte_order header_past_end"
    ).split(),
)
def test_bad_smv(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.img"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_smv(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_missing_smv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="SMV image not found"):
        read_smv(tmp_path / "none.img")


def test_write_smv_rejects_wrong_dtype_without_leaving_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        write_smv(tmp_path / "x.img", np.zeros((2, 2), dtype=np.int32), ["SIZE1=2;", "SIZE2=2;"])
    assert list(tmp_path.iterdir()) == []


def test_long_smv_header_rounds_up_to_a_multiple_of_512(tmp_path: Path) -> None:
    """A header longer than 512 bytes takes 1024 (HEADER_BYTES says so) and the pixels follow
    it; fabio and our reader both get the pixel values back."""
    import fabio

    data = (np.arange(6, dtype=np.uint16) * 1000 + 7).reshape(2, 3)
    lines = ["SIZE1=3;", "SIZE2=2;", "X=" + "y" * 600 + ";"]
    path = tmp_path / "long.img"
    write_smv(path, data, lines)
    raw = path.read_bytes()
    assert len(raw) == 1024 + data.nbytes
    assert b"HEADER_BYTES=1024;" in raw[:64]
    assert raw[1024:] == data.astype("<u2").tobytes()
    header, back = read_smv(path)
    assert header["HEADER_BYTES"] == "1024"
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(fabio.open(str(path)).data, data)


def test_float_image_round_trip(tmp_path: Path) -> None:
    image = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0
    path = tmp_path / "float.bin"
    write_float_image(path, image)
    assert path.read_bytes() == image.astype("<f4").tobytes()
    back = read_float_image(path, (3, 4))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, image.astype(np.float32))
    with pytest.raises(InputError, match="expected 52 bytes for a 13x1 float32 image, found 48"):
        read_float_image(path, (13, 1))
    with pytest.raises(InputError, match="float image not found"):
        read_float_image(tmp_path / "missing.bin", (3, 4))


def test_golden_float_image_shape() -> None:
    image = read_float_image(GOLDEN / "noise_seed" / "float.bin", (128, 128))
    # stdout.txt of noise_seed: "max_I = 145.102  at 0.00845 0.00185"
    assert fmt_g(float(image.max())) == "145.102"


def test_pgm(tmp_path: Path) -> None:
    photons = np.array([[0.0, 1.9, 2.0], [300.0, 127.99, 5.0]], dtype=np.float32)
    roi = np.array([[True, True, True], [True, True, False]])
    path = tmp_path / "image.pgm"
    write_pgm(path, photons, 2.0, roi)
    raw = path.read_bytes()
    header = b"P5\n3 2\n# pixels scaled by 2\n255\n"
    assert raw.startswith(header)
    # grey = min(photons * scale, 255) truncated toward zero; masked pixels stay 0
    assert list(raw[len(header) :]) == [0, 3, 4, 255, 255, 0]
    assert auto_pgm_scale(2.0, 7.0) == 25.0
    assert auto_pgm_scale(0.0, 7.0) == 7.0


def test_atomic_output_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_output_into_missing_directory_is_an_input_error(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "float.bin"
    with pytest.raises(InputError, match=f"{target}: cannot create output file"):
        write_float_image(target, np.zeros((2, 2)))
