"""Write files so that a failure never leaves a partial output behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from jaxdiff.errors import InputError


def _create_temporary(final: Path) -> Path:
    """Create an empty, new file beside ``final`` with the permissions ``open()`` would give."""
    directory = final.parent
    for _ in range(100):
        tmp = directory / f".{final.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise InputError(f"{final}: cannot create output file ({err.strerror})") from err
        os.close(fd)
        return tmp
    raise InputError(f"{final}: cannot create a temporary file in {directory}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The temporary file lives in the destination's directory so that the final ``os.replace``
    is a rename within one file system (atomic on POSIX). If the block raises, the temporary
    file is removed and ``path`` is left as it was. A destination whose directory is missing
    or not writable raises :class:`~jaxdiff.errors.InputError` naming it.
    """
    final = Path(path)
    tmp = _create_temporary(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
