"""Shared helpers for the text readers: opening files and parsing numbers strictly."""

from __future__ import annotations

import os
import re
from pathlib import Path

from jaxdiff.errors import InputError

# A plain decimal number as C's strtod reads it (no underscores, hex, nan or inf).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """Return the contents of ``path``; a missing or unreadable file raises InputError."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"{path}: {what} not found") from err
    except IsADirectoryError as err:
        raise InputError(f"{path}: {what} is a directory, not a file") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from err


def read_lines(path: str | os.PathLike[str], what: str) -> list[str]:
    """Return the lines of a text file (without line endings); errors name the file."""
    return read_bytes(path, what).decode("utf-8", errors="replace").splitlines()


def parse_number(token: str) -> float | None:
    """Return ``token`` as a float if the whole token is a decimal number, else None."""
    if _NUMBER.fullmatch(token) is None:
        return None
    return float(token)
