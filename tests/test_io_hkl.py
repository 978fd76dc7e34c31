"""HKL text files and the Fdump.bin structure-factor cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import INPUTS

from jaxdiff.errors import InputError
from jaxdiff.io import HKLGrid, read_fdump, read_hkl, write_fdump


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def F_at(grid: HKLGrid, h: int, k: int, l: int) -> float:  # noqa: E741
    return float(grid.F[h - grid.h_min, k - grid.k_min, l - grid.l_min])


@pytest.mark.parametrize("stem", ["P1", "minimal", "negative_indices", "sparse", "test_pattern"])
def test_commented_original_reads_like_the_copy_c_can_read(stem: str) -> None:
    original = read_hkl(INPUTS / f"{stem}.hkl", default_F=7.0)
    copy = read_hkl(INPUTS / f"{stem}_nocomment.hkl", default_F=7.0)
    bounds = ("h_min", "h_max", "k_min", "k_max", "l_min", "l_max", "count")
    assert [getattr(original, b) for b in bounds] == [getattr(copy, b) for b in bounds]
    np.testing.assert_array_equal(original.F, copy.F)
    assert original.count == sum(1 for line in (INPUTS / f"{stem}_nocomment.hkl").open())


def test_minimal_values_and_c_padding() -> None:
    grid = read_hkl(INPUTS / "minimal.hkl")
    assert (grid.h_min, grid.h_max, grid.k_min, grid.k_max, grid.l_min, grid.l_max) == (
        0, 1, 0, 1, 0, 1,
    )  # fmt: skip
    assert (grid.h_range, grid.k_range, grid.l_range) == (2, 2, 2)
    assert grid.F.shape == (3, 3, 3) and grid.F.dtype == np.float64
    assert grid.count == 8
    assert F_at(grid, 0, 0, 0) == 100.0
    assert F_at(grid, 1, 0, 0) == 50.0
    assert F_at(grid, 1, 1, 1) == 25.0
    # C allocates range+1 per axis; the extra planes stay zero.
    assert not grid.F[2, :, :].any() and not grid.F[:, 2, :].any() and not grid.F[:, :, 2].any()


def test_negative_indices_offset_by_minimum() -> None:
    grid = read_hkl(INPUTS / "negative_indices.hkl")
    assert (grid.h_min, grid.k_min, grid.l_min) == (-1, -1, -1)
    assert F_at(grid, -1, 0, 0) == 50.0
    assert F_at(grid, 0, -1, 0) == 60.0
    assert F_at(grid, 0, 0, -1) == 70.0


def test_default_F_fills_missing_points_but_not_the_padding() -> None:
    grid = read_hkl(INPUTS / "sparse.hkl", default_F=3.5)
    assert F_at(grid, 1, 0, 0) == 3.5  # deliberately absent from the file
    assert F_at(grid, 0, 0, 0) == 100.0
    assert F_at(grid, 2, 2, 0) == 30.0
    assert grid.F[-1].max() == 0.0 and grid.F[:, -1].max() == 0.0 and grid.F[:, :, -1].max() == 0.0
    assert read_hkl(INPUTS / "sparse.hkl").F[1 - grid.h_min, 0 - grid.k_min, 0] == 0.0


@pytest.mark.parametrize("name", ["with_phase.hkl", "with_sigma.hkl"])
def test_extra_columns_are_ignored(name: str) -> None:
    # These files hold the reflections of minimal.hkl plus sigma/phase columns.
    extra = read_hkl(INPUTS / name)
    minimal = read_hkl(INPUTS / "minimal.hkl")
    np.testing.assert_array_equal(extra.F, minimal.F)
    assert extra.count == minimal.count


def test_large_real_file() -> None:
    grid = read_hkl(INPUTS / "scaled.hkl")
    assert (grid.h_min, grid.h_max) == (-24, 24)
    assert (grid.k_min, grid.k_max) == (-28, 28)
    assert (grid.l_min, grid.l_max) == (-31, 30)
    assert grid.count == 64333
    assert F_at(grid, 23, 15, -1) == 23.0
    assert F_at(grid, 22, 15, -2) == 13.21


def test_duplicates_last_wins_and_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.hkl", "0 0 0 1\n1 0 0 2\n0 0 0 3\n1 0 0 4\n0 0 0 5\n")
    grid = read_hkl(path)
    assert F_at(grid, 0, 0, 0) == 5.0
    assert F_at(grid, 1, 0, 0) == 4.0
    assert grid.count == 5


def test_near_integer_indices_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.hkl", "\n  # comment\n1.0000000001 -2.0 3 1e2\n\n   \n-1 0 0 2.5")
    grid = read_hkl(path)
    assert F_at(grid, 1, -2, 3) == 100.0
    assert F_at(grid, -1, 0, 0) == 2.5
    assert grid.count == 2


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("0 0 0 1\n1 0 0 2\n0 0.5 0 3\n", 3, "index k = 0.5 is not an integer"),
        ("# header\n0 0 0 1\n1 b 0 2\n", 3, "'b' is not a number"),
        ("0 0 0 1\n\n1 0 0\n", 3, "expected 4 numbers 'h k l F', got '1 0 0'"),
        ("0 0 0 1 sigma\n", 1, "'sigma' is not a number"),
        ("0 0 0 1_0\n", 1, "'1_0' is not a number"),
        ("0 0 0 nan\n", 1, "'nan' is not a number"),
        ("0 0 0 1e999\n", 1, "out of range"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, "bad.hkl", text)
    with pytest.raises(InputError) as info:
        read_hkl(path)
    message = str(info.value)
    assert message.startswith(f"{path} line {line}: ")
    assert fragment in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_no_reflections_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.hkl", text)
    with pytest.raises(InputError, match="no reflections"):
        read_hkl(path)


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.hkl"
    with pytest.raises(InputError, match=str(path)):
        read_hkl(path)


def test_fdump_round_trip_and_c_layout(tmp_path: Path) -> None:
    grid = read_hkl(INPUTS / "negative_indices.hkl", default_F=1.25)
    path = tmp_path / "Fdump.bin"
    write_fdump(path, grid)
    raw = path.read_bytes()
    header = b"-1 1 -1 1 -1 1\n\f"
    assert raw.startswith(header)
    assert len(raw) == len(header) + 8 * 4 * 4 * 4
    np.testing.assert_array_equal(
        np.frombuffer(raw[len(header) :], dtype="<f8").reshape(4, 4, 4), grid.F
    )
    back = read_fdump(path)
    np.testing.assert_array_equal(back.F, grid.F)
    assert (back.h_min, back.h_max, back.k_min, back.k_max, back.l_min, back.l_max) == (
        grid.h_min, grid.h_max, grid.k_min, grid.k_max, grid.l_min, grid.l_max,
    )  # fmt: skip
    assert back.count == 27  # C sets hkls = h_range * k_range * l_range after a dump read
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"0 1 0 1 0 1\n" + bytes(8 * 27), "no header line"),
        (b"0 1 0 1 0\n\f" + bytes(8 * 27), "expected 6 integers"),
        (b"0 1 0 1 0 x\n\f" + bytes(8 * 27), "expected 6 integers"),
        (b"0 1 0 1 0 1\n\f" + bytes(8 * 27 - 1), "found 215"),
        (b"0 1 0 1 0 1\n\f" + bytes(8 * 28), "found 224"),
        (b"1 0 0 1 0 1\n\f", "empty index range"),
    ],
)
def test_malformed_fdump(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "Fdump.bin"
    path.write_bytes(content)
    with pytest.raises(InputError, match=str(path)) as info:
        read_fdump(path)
    assert fragment in str(info.value)


def test_missing_fdump(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Fdump file not found"):
        read_fdump(tmp_path / "Fdump.bin")


def test_grid_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        HKLGrid(F=np.zeros((2, 2, 2)), h_min=0, h_max=1, k_min=0, k_max=1, l_min=0, l_max=1,
                count=8)  # fmt: skip
