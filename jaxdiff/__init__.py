"""jaxdiff: differentiable X-ray diffraction images in JAX, image-for-image with nanoBragg."""

from jaxdiff.beam import Beam
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal
from jaxdiff.detector import Detector
from jaxdiff.errors import InputError
from jaxdiff.experiment import Setup, build
from jaxdiff.simulate import Experiment, simulate

__all__ = [
    "Beam",
    "Crystal",
    "Detector",
    "Experiment",
    "InputError",
    "Setup",
    "SimConfig",
    "build",
    "simulate",
]
