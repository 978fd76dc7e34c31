"""File input and output in nanoBragg's formats (NumPy only, never traced by JAX)."""

from jaxdiff.io.atomic import atomic_output

__all__ = ["atomic_output"]
