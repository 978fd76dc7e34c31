"""File input and output in nanoBragg's formats (NumPy only, never traced by JAX)."""

from jaxdiff.io.atomic import atomic_output
from jaxdiff.io.hkl import HKLGrid, read_fdump, read_hkl, write_fdump
from jaxdiff.io.images import (
    auto_int_scale,
    auto_pgm_scale,
    read_float_image,
    to_int_image,
    write_float_image,
    write_pgm,
)
from jaxdiff.io.matrix import read_mosflm_matrix
from jaxdiff.io.noise import noise_image, noise_image_reference, poisson_deviates
from jaxdiff.io.smv import c_header_lines, fmt_g, header_float, read_smv, smv_header, write_smv
from jaxdiff.io.sources import SOURCE_COLUMNS, read_sourcefile

__all__ = [
    "SOURCE_COLUMNS",
    "HKLGrid",
    "atomic_output",
    "auto_int_scale",
    "auto_pgm_scale",
    "c_header_lines",
    "fmt_g",
    "header_float",
    "noise_image",
    "noise_image_reference",
    "poisson_deviates",
    "read_fdump",
    "read_float_image",
    "read_hkl",
    "read_mosflm_matrix",
    "read_smv",
    "read_sourcefile",
    "smv_header",
    "to_int_image",
    "write_fdump",
    "write_float_image",
    "write_pgm",
    "write_smv",
]
