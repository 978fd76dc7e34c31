"""jaxdiff: differentiable X-ray diffraction images in JAX, image-for-image with nanoBragg."""

from jaxdiff.beam import Beam
from jaxdiff.config import SimConfig
from jaxdiff.crystal import Crystal
from jaxdiff.detector import Detector
from jaxdiff.errors import InputError
from jaxdiff.experiment import Setup, assemble, build, config_for
from jaxdiff.simulate import Experiment, check_config, simulate

__all__ = [
    "Beam",
    "Crystal",
    "Detector",
    "Experiment",
    "InputError",
    "Setup",
    "SimConfig",
    "assemble",
    "build",
    "check_config",
    "config_for",
    "simulate",
]
