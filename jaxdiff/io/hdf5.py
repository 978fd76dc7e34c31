"""HDF5 images with their full model, as NXmx (NeXus for macromolecular crystallography).

One file holds ``n`` images of ``slow × fast`` pixels: stills, or the consecutive frames of a
rotation scan. The NXmx part (:mod:`jaxdiff.io.nexus`) is what crystallography programs read::

    /entry                          NXentry, definition = "NXmx"
    /entry/data/data                (n, slow, fast) float32 photons per pixel (the -floatfile)
    /entry/data/int_image           (n, slow, fast) uint16, the -intfile image, when given
    /entry/data/noise_image         (n, slow, fast) uint16, the -noisefile image, when given
    /entry/instrument/beam          NXbeam: incident_wavelength, flux_integrated (fluence)
    /entry/instrument/detector      NXdetector, its NXtransformations chain and one module
                                    (a multi-panel detector: one module per panel, whose
                                    images are stacked as (n, panel · slow, fast))
    /entry/sample                   NXsample on the φ (spindle) axis, with the scan if any

and the model jaxdiff renders from, leaf by leaf in the library's units (``units`` attribute)::

    /entry/jaxdiff                  NXcollection; attribute config: the SimConfig as JSON
    /entry/jaxdiff/beam/*, crystal/*, detector/*, fhkl, default_F, mask

A leaf that differs between images (``per_image`` attribute true) has a leading axis ``n``;
a shared one is stored once. Fields of the models that are not arrays are kept as JSON in the
group's ``static`` attribute. :func:`read_hdf5` gives back the same pytrees, so a reloaded
model renders the same image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Iterator, Sequence

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io.atomic import atomic_output
from jaxdiff.io.nexus import write_nxmx
from jaxdiff.simulate import rotation_frames

MODEL = "/entry/jaxdiff"
SIGNAL = "data"
INT_IMAGE = "int_image"
NOISE_IMAGE = "noise_image"

_UNITS = {
    "direction": "1",
    "source_dirs": "1",
    "wavelengths": "m",
    "polar_vector": "1",
    "polarization": "1",
    "fluence": "1/m^2",
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
_LONG_NAMES = {
    SIGNAL: "photons per pixel (-floatfile)",
    INT_IMAGE: "scaled photons with the ADC offset (-intfile)",
    NOISE_IMAGE: "photons with Poisson noise, scaled, with the ADC offset (-noisefile)",
}
_NOTES = {"cell": "a, b, c [angstrom] and alpha, beta, gamma [rad]"}

Path = tuple[str, ...]


def _is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _array_leaves(obj, path: Path = ()) -> Iterator[tuple[Path, object]]:
    """(field path, value) of every array-valued field, depth first through dataclasses."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            yield from _array_leaves(value, (*path, field.name))
        elif _is_array(value):
            yield (*path, field.name), value


def _static_fields(obj, path: Path = ()) -> Iterator[tuple[Path, dict]]:
    """(dataclass path, its fields that are neither arrays nor dataclasses) for every node."""
    static = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            yield from _static_fields(value, (*path, field.name))
        elif not _is_array(value):
            static[field.name] = value
    yield path, static


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a jaxdiff HDF5 file")


def _tuples(value):
    """JSON lists back to the tuples a frozen, hashable dataclass holds."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _write_model(
    f: h5py.File, template, n: int, config, varying: set[Path]
) -> dict[Path, h5py.Dataset]:
    """The /entry/jaxdiff group: shared leaves written from ``template``, the ``varying`` ones
    created empty with a leading axis ``n`` and returned for the caller to fill."""
    root = f.create_group(MODEL)
    root.attrs["NX_class"] = "NXcollection"
    root.attrs["config"] = json.dumps(dataclasses.asdict(config), default=_json_default)
    for path, static in _static_fields(template):
        group = root.require_group("/".join(path)) if path else root
        group.attrs["NX_class"] = "NXcollection"
        if static:
            group.attrs["static"] = json.dumps(static, default=_json_default)
    per_image = {}
    for path, value in _array_leaves(template):
        value = np.asarray(value)
        group, name = root.require_group("/".join(path[:-1])) if path[:-1] else root, path[-1]
        big = value.nbytes > 4096
        if path in varying:
            shape = (n, *value.shape)
            chunks = (1, *value.shape) if big else None
            ds = group.create_dataset(
                name,
                shape=shape,
                dtype=value.dtype,
                chunks=chunks,
                compression="gzip" if big else None,
            )
            per_image[path] = ds
        else:
            ds = group.create_dataset(name, data=value, compression="gzip" if big else None)
        ds.attrs["per_image"] = path in varying
        if name in _UNITS:
            ds.attrs["units"] = _UNITS[name]
        if name in _NOTES:
            ds.attrs["description"] = _NOTES[name]
    return per_image


def _create(
    f: h5py.File,
    experiments: Sequence,
    config,
    *,
    shape: tuple[int, int],
    oscillation: tuple[float, float] | None,
    extra_images: Sequence[str],
    varying: set[Path],
) -> tuple[dict[str, h5py.Dataset], dict[Path, h5py.Dataset]]:
    """The whole file layout (NXmx and the jaxdiff model) for ``len(experiments)`` images.

    Returns the empty image datasets by name and the per-image leaves by path."""
    images = [(SIGNAL, np.float32, _LONG_NAMES[SIGNAL])]
    images += [(name, np.uint16, _LONG_NAMES[name]) for name in extra_images]
    data = write_nxmx(f, experiments, config, shape=shape, oscillation=oscillation, images=images)
    leaves = _write_model(f, experiments[0], len(experiments), config, varying)
    return data, leaves


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _image_stack(images, name: str, panels: int = 0) -> np.ndarray:
    """``images`` as the (n, rows, fast) stack the file holds: a multi-panel detector's
    (n, panel, slow, fast) images with the panels one above the other (rows = panel · slow)."""
    stack = np.asarray(images)
    if not panels:
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3:
            raise ValueError(f"{name}: expected (n, slow, fast) or (slow, fast), got {stack.shape}")
        return stack
    if stack.ndim == 3:
        stack = stack[None]
    if stack.ndim != 4 or stack.shape[1] != panels:
        raise ValueError(
            f"{name}: expected (n, {panels}, slow, fast) or ({panels}, slow, fast) for the "
            f"{panels}-panel detector, got {stack.shape}"
        )
    return stack.reshape(stack.shape[0], -1, stack.shape[-1])


def write_hdf5(
    path: str | os.PathLike[str],
    images,
    experiments,
    config,
    *,
    oscillation: tuple[float, float] | None = None,
    int_images=None,
    noise_images=None,
) -> None:
    """Write ``images`` with their ``experiments`` and ``config`` as one NXmx file, atomically.

    Args:
        images: (n, slow, fast) or (slow, fast) photons per pixel (stored as float32);
            (n, panel, slow, fast) or (panel, slow, fast) for a multi-panel detector, stored
            as (n, panel · slow, fast) with one NXdetector_module per panel.
        experiments: one Experiment for all images, or a list of n (one per image).
        config: the run's SimConfig.
        oscillation: None for stills, or ``(phi_start, width)`` [rad] of the first frame of a
            rotation scan: frame k (1-based) covers phi_start + (k-1)·width to phi_start +
            k·width. With a single Experiment, frame k's crystal is stored with that φ0.
        int_images, noise_images: the -intfile and -noisefile images (uint16), same shape.
    """
    first = experiments if dataclasses.is_dataclass(experiments) else list(experiments)[0]
    panels = first.detector.panels
    stack = _image_stack(images, "images", panels).astype(np.float32)
    n = stack.shape[0]
    if dataclasses.is_dataclass(experiments):
        experiments = (
            [experiments] * n
            if oscillation is None
            else rotation_frames(experiments, n, oscillation[1], oscillation[0])
        )
    experiments = list(experiments)
    if len(experiments) != n:
        raise ValueError(f"{n} images but {len(experiments)} experiments")
    extras = {}
    for name, value in ((INT_IMAGE, int_images), (NOISE_IMAGE, noise_images)):
        if value is not None:
            extras[name] = _image_stack(value, name, panels)
            if extras[name].shape != stack.shape:
                raise ValueError(f"{name}: shape {extras[name].shape}, images {stack.shape}")
    columns = [dict(_array_leaves(e)) for e in experiments]
    values = {p: np.stack([np.asarray(c[p]) for c in columns]) for p in columns[0]}
    varying = {p for p, v in values.items() if not all(_same(v[0], x) for x in v[1:])}
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        data, leaves = _create(
            f,
            experiments,
            config,
            shape=stack.shape[1:],
            oscillation=oscillation,
            extra_images=list(extras),
            varying=varying,
        )
        data[SIGNAL][...] = stack
        for name, value in extras.items():
            data[name][...] = np.clip(value, 0, np.iinfo(np.uint16).max).astype(np.uint16)
        for p, ds in leaves.items():
            ds[...] = values[p]


def read_hdf5(path: str | os.PathLike[str]):
    """Read a file written by :func:`write_hdf5`: ``(images, experiments, config)``.

    ``images`` is the (n, slow, fast) float32 stack ((n, panel, slow, fast) for a multi-panel
    detector), ``experiments`` a list of n Experiments.
    """
    from jaxdiff.config import SimConfig
    from jaxdiff.simulate import Experiment

    try:
        with h5py.File(path, "r") as f:
            images = f[f"/entry/data/{SIGNAL}"][()]
            root = f[MODEL]
            tree = _load(root)
            raw = json.loads(root.attrs["config"])
    except (OSError, KeyError) as err:
        raise InputError(f"{path}: not a jaxdiff HDF5 file ({err})") from None
    config = SimConfig(**_tuples(raw))
    try:
        experiments = [_build(Experiment, tree, i) for i in range(images.shape[0])]
    except TypeError as err:
        raise InputError(f"{path}: its model does not fit this jaxdiff ({err})") from None
    panels = experiments[0].detector.panels if experiments else 0
    if panels:
        images = images.reshape(images.shape[0], panels, -1, images.shape[-1])
    return images, experiments, config


def _load(group: h5py.Group) -> dict:
    """A group as a dict: arrays as (value, per_image), subgroups as dicts, '' the statics."""
    out = {"": _tuples(json.loads(group.attrs.get("static", "{}")))}
    for name, node in group.items():
        if isinstance(node, h5py.Group):
            out[name] = _load(node)
        else:
            out[name] = (node[()], bool(node.attrs.get("per_image", False)))
    return out


def _build(cls, tree: dict, i: int):
    hints = typing.get_type_hints(cls)
    kwargs = dict(tree[""])
    for field in dataclasses.fields(cls):
        node = tree.get(field.name)
        if isinstance(node, dict):
            kwargs[field.name] = _build(hints[field.name], node, i)
        elif node is not None:
            value, per_image = node
            kwargs[field.name] = jnp.asarray(value[i] if per_image else value)
    return cls(**kwargs)


class StackWriter:
    """Write a stack of ``n`` images image by image (for long batch runs), atomically, with
    the same layout as :func:`write_hdf5`.

    The beam, detector and tables are those of ``exp`` for every image; each image's crystal is
    written with it. Use as a context manager; the file appears at ``path`` only on success.
    """

    def __init__(self, path, n: int, exp, config, *, oscillation=None) -> None:
        self._path, self._n, self._exp, self._config = path, n, exp, config
        self._oscillation = oscillation
        self._ctx = None

    def __enter__(self) -> StackWriter:
        self._ctx = atomic_output(self._path)
        tmp = self._ctx.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            varying = {p for p, _ in _array_leaves(self._exp) if p[0] == "crystal"}
            data, self._crystal = _create(
                self._file,
                [self._exp] * self._n,
                self._config,
                shape=(self._exp.detector.panel_count * self._config.spixels, self._config.fpixels),
                oscillation=self._oscillation,
                extra_images=(),
                varying=varying,
            )
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._data = data[SIGNAL]
        return self

    def write(self, start: int, images, crystals) -> None:
        """Store ``images`` (b, slow, fast), or (b, panel, slow, fast), and their crystals
        (leaves (b, ...)) at ``start``."""
        images = _image_stack(images, "images", self._exp.detector.panels).astype(np.float32)
        stop = start + images.shape[0]
        self._data[start:stop] = images
        for (_, *rest), ds in self._crystal.items():
            value = crystals
            for name in rest:
                value = getattr(value, name)
            ds[start:stop] = np.asarray(value)

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._ctx.__exit__(*exc)
