"""Shared helpers for benchmark scripts: where the golden cases are, and a scratch cwd."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"


def cases() -> list[dict]:
    """Every golden case's cmd.json with its name."""
    names = [c["name"] for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]]
    return [dict(json.loads((GOLDEN / n / "cmd.json").read_text()), name=n) for n in names]


def scratch() -> Path:
    """A temporary working directory in which inputs/NAME resolves to the golden inputs."""
    tmp = Path(tempfile.mkdtemp(prefix="jaxdiff-bench-"))
    (tmp / "inputs").symlink_to(GOLDEN / "inputs")
    return tmp
