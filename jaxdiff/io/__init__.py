"""File input and output in nanoBragg's formats (NumPy only, never traced by JAX)."""

from jaxdiff.io.atomic import atomic_output
from jaxdiff.io.hkl import HKLGrid, read_fdump, read_hkl, write_fdump
from jaxdiff.io.matrix import read_mosflm_matrix
from jaxdiff.io.sources import SOURCE_COLUMNS, read_sourcefile

__all__ = [
    "SOURCE_COLUMNS",
    "HKLGrid",
    "atomic_output",
    "read_fdump",
    "read_hkl",
    "read_mosflm_matrix",
    "read_sourcefile",
    "write_fdump",
]
