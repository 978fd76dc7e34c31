"""File input and output in nanoBragg's formats (NumPy only, never traced by JAX)."""

from jaxdiff.io.atomic import atomic_output
from jaxdiff.io.hkl import HKLGrid, read_fdump, read_hkl, write_fdump

__all__ = ["HKLGrid", "atomic_output", "read_fdump", "read_hkl", "write_fdump"]
