"""Build of jaxdiff's one compiled module; everything else is declared in pyproject.toml.

``_jaxdiff_noise`` draws nanoBragg's Poisson noise image bit for bit (src/_jaxdiff_noise.c).
It is a top-level module so that it is found both when jaxdiff is imported from an installed
copy and when it is imported from a source checkout (``python -m pytest`` in the repository).
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

# The noise must round exactly as the C program does: no fused multiply-add, no fast-math.
FLAGS = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off", "-fno-fast-math"]


class BuildExt(build_ext):
    """build_ext that says plainly what is missing when the C compiler fails."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, ExecError, PlatformError, OSError) as err:
            raise SystemExit(
                f"error: jaxdiff needs a C compiler to build {ext.name} (its Poisson noise "
                f"image); install one (Debian/Ubuntu: apt-get install gcc python3-dev) and "
                f"run pip install again. The compiler said: {err}"
            ) from err


setup(
    ext_modules=[
        Extension(
            "_jaxdiff_noise",
            sources=["src/_jaxdiff_noise.c"],
            extra_compile_args=FLAGS,
            libraries=[] if sys.platform == "win32" else ["m"],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
