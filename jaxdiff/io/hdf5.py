"""HDF5 images with their full model, in a NeXus-like layout (h5py; NumPy only).

Layout (``n`` images of ``slow × fast`` pixels)::

    /entry                         NX_class=NXentry, program="jaxdiff"
    /entry/data/data               (n, slow, fast) float32 photons per pixel
    /entry/instrument/beam/*       Beam leaves, each with a leading axis n
    /entry/instrument/detector/*   Detector leaves (n, ...)
    /entry/sample/crystal/*        Crystal leaves (n, ...)
    /entry/model/fhkl, default_F, mask   structure-factor table, default F, pixel mask (n, ...)
    /entry/model.attrs["config"]   the SimConfig as JSON

Every leaf keeps the library's units (metres, radians, 1/Å, photons/m²), written in its
``units`` attribute. Reading gives back the same pytrees, so a reloaded model renders the same
image.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import h5py
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io.atomic import atomic_output

_GROUPS = {
    "beam": ("instrument/beam", "NXbeam"),
    "detector": ("instrument/detector", "NXdetector"),
    "crystal": ("sample/crystal", "NXsample_component"),
}
_UNITS = {
    "direction": "1",
    "source_dirs": "1",
    "wavelengths": "m",
    "polar_vector": "1",
    "polarization": "1",
    "fluence": "photons/m^2",
    "cell": "angstrom, rad",
    "recip0": "1/angstrom",
    "misset": "rad",
    "rotation": "rad",
    "ncells": "1",
    "mosaic_spread": "rad",
    "mosaic_axes": "1",
    "mosaic_scale": "1",
    "spindle": "1",
    "phi0": "rad",
    "phistep": "rad",
    "fudge": "1",
    "fast_axis": "1",
    "slow_axis": "1",
    "normal": "1",
    "beam_f": "m",
    "beam_s": "m",
    "distance": "m",
    "close_distance": "m",
    "rotations": "rad",
    "twotheta": "rad",
    "twotheta_axis": "1",
    "pixel_size": "m",
    "layer_thickness": "m",
    "mu": "1/m",
}


def _stack(values: Sequence) -> np.ndarray:
    arrays = [np.asarray(v) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images in one stack must share shapes, got {sorted(shapes)}")
    return np.stack(arrays)


def write_hdf5(path: str | os.PathLike[str], images, experiments, config) -> None:
    """Write ``images`` (n, slow, fast) with their ``experiments`` (n of them) and ``config``.

    A single image and experiment may be given without the list. Written atomically.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images, experiments = images[None], [experiments]
    if len(experiments) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(experiments)} experiments")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["program"] = "jaxdiff"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        dset = data.create_dataset("data", data=images, compression="gzip", chunks=True)
        dset.attrs["units"] = "photons"
        dset.attrs["axes"] = "image,slow,fast"
        for part, (where, nx_class) in _GROUPS.items():
            group = entry.require_group(where)
            group.attrs["NX_class"] = nx_class
            models = [getattr(e, part) for e in experiments]
            for field in dataclasses.fields(models[0]):
                values = _stack([getattr(m, field.name) for m in models])
                ds = group.create_dataset(field.name, data=values)
                ds.attrs["units"] = _UNITS.get(field.name, "")
        model = entry.create_group("model")
        model.attrs["config"] = json.dumps(dataclasses.asdict(config))
        for name in ("fhkl", "default_F", "mask"):
            model.create_dataset(
                name,
                data=_stack([getattr(e, name) for e in experiments]),
                compression="gzip" if name != "default_F" else None,
            )


def read_hdf5(path: str | os.PathLike[str]):
    """Read a file written by :func:`write_hdf5`: ``(images, experiments, config)``."""
    import jax.numpy as jnp

    from jaxdiff.beam import Beam
    from jaxdiff.config import SimConfig
    from jaxdiff.crystal import Crystal
    from jaxdiff.detector import Detector
    from jaxdiff.simulate import Experiment

    classes = {"beam": Beam, "detector": Detector, "crystal": Crystal}
    try:
        with h5py.File(path, "r") as f:
            entry = f["entry"]
            images = entry["data/data"][()]
            parts = {}
            for part, (where, _) in _GROUPS.items():
                group = entry[where]
                cls = classes[part]
                parts[part] = {fl.name: group[fl.name][()] for fl in dataclasses.fields(cls)}
            model = entry["model"]
            tables = {name: model[name][()] for name in ("fhkl", "default_F", "mask")}
            raw = json.loads(model.attrs["config"])
    except (OSError, KeyError) as err:
        raise InputError(f"{path}: not a jaxdiff HDF5 file ({err})") from None
    for key in ("roi", "table_lo", "table_hi"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    config = SimConfig(**raw)
    experiments = []
    for i in range(images.shape[0]):
        models = {
            part: classes[part](**{k: jnp.asarray(v[i]) for k, v in fields.items()})
            for part, fields in parts.items()
        }
        arrays = {k: jnp.asarray(v[i]) for k, v in tables.items()}
        experiments.append(Experiment(**models, **arrays))
    return images, experiments, config


class StackWriter:
    """Write a stack of ``n`` images image by image (for long batch runs), atomically.

    The beam, detector and tables are those of ``exp`` for every image; each image's crystal is
    written with it. Use as a context manager; the file appears at ``path`` only on success.
    """

    def __init__(self, path, n: int, exp, config) -> None:
        self._path, self._n, self._exp, self._config = path, n, exp, config
        self._ctx = None

    def __enter__(self) -> StackWriter:
        self._ctx = atomic_output(self._path)
        tmp = self._ctx.__enter__()
        self._file = h5py.File(tmp, "w")
        entry = self._file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["program"] = "jaxdiff"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        shape = (self._n, self._config.spixels, self._config.fpixels)
        self._data = data.create_dataset(
            "data", shape=shape, dtype=np.float32, chunks=(1, *shape[1:]), compression="gzip"
        )
        self._data.attrs["units"] = "photons"
        self._data.attrs["axes"] = "image,slow,fast"
        self._crystal = {}
        for part, (where, nx_class) in _GROUPS.items():
            group = entry.require_group(where)
            group.attrs["NX_class"] = nx_class
            model = getattr(self._exp, part)
            for field in dataclasses.fields(model):
                value = np.asarray(getattr(model, field.name))
                if part == "crystal":
                    ds = group.create_dataset(
                        field.name, shape=(self._n, *value.shape), dtype=value.dtype
                    )
                    self._crystal[field.name] = ds
                else:
                    ds = group.create_dataset(
                        field.name, data=np.broadcast_to(value, (self._n, *value.shape))
                    )
                ds.attrs["units"] = _UNITS.get(field.name, "")
        model = entry.create_group("model")
        model.attrs["config"] = json.dumps(dataclasses.asdict(self._config))
        for name in ("fhkl", "default_F", "mask"):
            value = np.asarray(getattr(self._exp, name))
            model.create_dataset(
                name,
                data=np.broadcast_to(value, (self._n, *value.shape)),
                compression="gzip" if name != "default_F" else None,
            )
        return self

    def write(self, start: int, images, crystals) -> None:
        """Store ``images`` (b, slow, fast) and their crystals (leaves (b, ...)) at ``start``."""
        images = np.asarray(images, dtype=np.float32)
        stop = start + images.shape[0]
        self._data[start:stop] = images
        for name, ds in self._crystal.items():
            ds[start:stop] = np.asarray(getattr(crystals, name))

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._ctx.__exit__(*exc)
