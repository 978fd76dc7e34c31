"""MOSFLM matrix files (-mat) and source lists (-sourcefile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN

from jaxdiff.errors import InputError
from jaxdiff.io import SOURCE_COLUMNS, read_mosflm_matrix, read_sourcefile


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_A_mat_columns_are_the_reciprocal_vectors() -> None:
    a_star, b_star, c_star = read_mosflm_matrix(GOLDEN / "inputs" / "A.mat")
    np.testing.assert_array_equal(a_star, [-0.02837711, -0.02871390, 0.01050048])
    np.testing.assert_array_equal(b_star, [-0.00305386, 0.01019549, -0.03209440])
    np.testing.assert_array_equal(c_star, [0.02535816, -0.01400049, -0.01036054])
    # inputs/README.md: the cell is about 26.75 31.31 33.67 Å with λ = 0.9768 Å. Reading the
    # file's rows as the vectors instead would give 27.97 32.77 31.21 Å.
    a_s, b_s, c_s = (v / 0.9768 for v in (a_star, b_star, c_star))
    volume_star = np.dot(a_s, np.cross(b_s, c_s))
    lengths = [
        np.linalg.norm(np.cross(b_s, c_s)) / volume_star,
        np.linalg.norm(np.cross(c_s, a_s)) / volume_star,
        np.linalg.norm(np.cross(a_s, b_s)) / volume_star,
    ]
    np.testing.assert_allclose(lengths, [26.75, 31.31, 33.67], atol=0.01)


def test_full_mosflm_file_trailing_lines_ignored(tmp_path: Path) -> None:
    text = (
        " -0.01 0.0 0.0\n 0.0 0.012 0.0\n 0.0 0.0 -0.015\n"
        "       0.000       0.000       0.000\n"
        " -1.0 0.0 0.0\n 0.0 1.0 0.0\n 0.0 0.0 -1.0\n"
        "    100.0  80.0  66.6  90.0  90.0  90.0\n"
        "       0.000       0.000       0.000\n"
        "SYMM P1\n"
    )
    a_star, b_star, c_star = read_mosflm_matrix(write(tmp_path, "full.mat", text))
    np.testing.assert_array_equal(a_star, [-0.01, 0.0, 0.0])
    np.testing.assert_array_equal(b_star, [0.0, 0.012, 0.0])
    np.testing.assert_array_equal(c_star, [0.0, 0.0, -0.015])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1 0 0\n0 1 0\n0 0\n", "expected 9 numbers (the 3x3 MOSFLM A matrix), found 8"),
        ("", "found 0"),
        ("1 0 0\n0 one 0\n0 0 1\n", "line 2: 'one' is not a number"),
        ("1 0 0\n0 1 0\n0 0 nan\n", "line 3: 'nan' is not a number"),
        ("1 2 3\n2 4 6\n0 0 1\n", "singular"),
        ("0 0 0\n0 1 0\n0 0 1\n", "singular"),
        ("1 0 1\n0 1 1\n0 0 1e-13\n", "singular"),
    ],
)
def test_bad_matrix(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "bad.mat", text)
    with pytest.raises(InputError) as info:
        read_mosflm_matrix(path)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)


def test_tiny_but_well_conditioned_matrix_is_accepted(tmp_path: Path) -> None:
    # The singularity test is relative to the vector lengths, not absolute.
    path = write(tmp_path, "tiny.mat", "1e-20 0 0\n0 1e-20 0\n0 0 1e-20\n")
    a_star, b_star, c_star = read_mosflm_matrix(path)
    assert a_star[0] == b_star[1] == c_star[2] == 1e-20


def test_missing_matrix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="matrix file not found"):
        read_mosflm_matrix(tmp_path / "A.mat")


def test_golden_source_files() -> None:
    plain = read_sourcefile(GOLDEN / "inputs" / "sources_3.txt")
    assert set(plain) == set(SOURCE_COLUMNS)
    np.testing.assert_array_equal(plain["X"], [-10, -10, -10])
    np.testing.assert_array_equal(plain["Y"], [0, 0.03, -0.024])
    np.testing.assert_array_equal(plain["Z"], [0, 0.015, 0.036])
    np.testing.assert_array_equal(plain["I"], [1, 0.7, 0.4])
    np.testing.assert_array_equal(plain["lambda"], [1e-10, 1e-10, 1e-10])
    lam = read_sourcefile(GOLDEN / "inputs" / "sources_3_lambda.txt")
    np.testing.assert_array_equal(lam["lambda"], [1.00e-10, 1.02e-10, 0.98e-10])
    assert all(v.dtype == np.float64 for v in lam.values())


def test_source_delimiters_short_lines_comments(tmp_path: Path) -> None:
    text = "# X Y Z I lambda\n\n , ;\n-1,2;3:4!5e-10\n\t-1  0\n  7\n"
    sources = read_sourcefile(write(tmp_path, "src.txt", text))
    np.testing.assert_array_equal(sources["X"], [-1, -1, 7])
    np.testing.assert_array_equal(sources["Y"][:2], [2, 0])
    np.testing.assert_array_equal(sources["lambda"][0], 5e-10)
    assert np.isnan(sources["Z"][1]) and np.isnan(sources["I"][1])
    assert np.isnan(sources["Y"][2]) and np.isnan(sources["lambda"][2])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1 2 3 4 5\n1 2 3 4 5 6\n", "line 2: expected at most 5 columns"),
        ("1 2 3\n\n1 2 x\n", "line 3: 'x' is not a number"),
        ("1 2 3 4 5e\n", "line 1: '5e' is not a number"),
    ],
)
def test_bad_sourcefile_names_file_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "src.txt", text)
    with pytest.raises(InputError) as info:
        read_sourcefile(path)
    assert str(info.value).startswith(f"{path} line ")
    assert fragment in str(info.value)


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing\n"])
def test_empty_sourcefile(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError, match="no sources"):
        read_sourcefile(write(tmp_path, "src.txt", text))


def test_missing_sourcefile(tmp_path: Path) -> None:
    path = tmp_path / "src.txt"
    with pytest.raises(InputError, match=f"{path}: source file not found"):
        read_sourcefile(path)
