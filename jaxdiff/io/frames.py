"""File names of image series in the DIALS template convention (``image_#####.img``).

A run of ``#`` in a file name stands for the zero-padded frame number, counted from 1 unless a
first number is given. Only the last run in the name counts, as in dxtbx's templates.
"""

from __future__ import annotations

import re

from jaxdiff.errors import InputError

_RUN = re.compile(r"#+")


def is_template(path: str) -> bool:
    """True when ``path`` holds a run of ``#`` (a frame-number placeholder)."""
    return "#" in path


def frame_path(template: str, number: int) -> str:
    """``template`` with its last run of ``#`` replaced by ``number``, zero-padded to the run.

    A name without ``#`` is returned unchanged. A number too wide for the run is an error, so
    two frames never share a file.
    """
    runs = list(_RUN.finditer(template))
    if not runs:
        return template
    run = runs[-1]
    width = run.end() - run.start()
    text = f"{number:0{width}d}"
    if len(text) > width or number < 0:
        raise InputError(f"{template}: frame {number} does not fit in {width} '#' characters")
    return template[: run.start()] + text + template[run.end() :]


def frame_paths(template: str, count: int, first: int = 1) -> list[str]:
    """The file names of ``count`` frames numbered from ``first``."""
    if count > 1 and not is_template(template):
        raise InputError(f"{template}: {count} frames need a '#' run in the file name")
    return [frame_path(template, first + k) for k in range(count)]
