"""Test set-up: float64 on, strict dtype promotion, the golden cases of the C program, and a
cache of compiled programs that belongs to the test run.

x64 and strict promotion are switched on here, once, for every test module. Rank promotion
stays at NumPy's rules: the kernels are written for one element and broadcast over leading axes
(pixels, layers, sub-pixels, sources, φ, mosaic) by design.

Markers (pyproject.toml): ``golden`` (every golden case of the C program) and ``slow`` (tens of
seconds or more each); ``python -m pytest -m "not golden and not slow"`` is the fast subset.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from jaxdiff import aot

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
INPUTS = GOLDEN / "inputs"


def golden_cases() -> list[str]:
    """Names of every golden case, in cases.json order."""
    return [c["name"] for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]]


def golden_cmd(name: str) -> dict:
    """The case's cmd.json: argv as run, and the C variant (spec or c-parity)."""
    return json.loads((GOLDEN / name / "cmd.json").read_text())


def golden_argv(name: str) -> list[str]:
    """The case's command line for jaxdiff: the C program's argv and its φ carryover mode."""
    cmd = golden_cmd(name)
    return [*cmd["argv"], "--phi-carryover-mode", cmd["variant"]]


@pytest.fixture(scope="session", autouse=True)
def _cache_of_this_run(tmp_path_factory):
    """Compiled programs go to a folder of this test run (for in-process CLI calls and the
    commands tests start), never to the user's ~/.cache/jaxdiff."""
    patch = pytest.MonkeyPatch()
    patch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path_factory.mktemp("jaxdiff-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _caches_off_after_each_test():
    """A command-line entry point called in-process turns the caches on for its process;
    every test starts with them off, whatever ran before it."""
    yield
    aot.disable()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory where inputs/NAME resolves to the golden inputs.

    The C program and the jaxdiff command write Fdump.bin into the working directory when -hkl
    is given and read it back when -hkl is absent, so each run gets its own folder, never the
    golden one.
    """
    (tmp_path / "inputs").symlink_to(INPUTS)
    monkeypatch.chdir(tmp_path)
    return tmp_path
