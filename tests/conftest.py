"""Test set-up: float64 on, strict dtype promotion, and the golden cases of the C program.

Rank promotion stays at NumPy's rules: the kernels are written for one element and broadcast
over leading axes (pixels, layers, sub-pixels, sources, φ, mosaic) by design.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"


def golden_cases() -> list[str]:
    """Names of every golden case, in cases.json order."""
    return [c["name"] for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]]


def golden_cmd(name: str) -> dict:
    """The case's cmd.json: argv as run, and the C variant (spec or c-parity)."""
    return json.loads((GOLDEN / name / "cmd.json").read_text())


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory where inputs/NAME resolves to the golden inputs.

    The C program (and jaxdiff) writes Fdump.bin into the working directory when -hkl is given
    and reads it back when -hkl is absent, so each run gets its own folder, never the golden one.
    """
    (tmp_path / "inputs").symlink_to(GOLDEN / "inputs")
    monkeypatch.chdir(tmp_path)
    return tmp_path
