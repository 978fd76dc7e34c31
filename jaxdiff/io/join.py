"""One HDF5 stack from the parts that several processes wrote (h5py virtual datasets).

Each part is a complete stack file of its own (the layout of :mod:`jaxdiff.io.hdf5`) holding
consecutive images. The joined file has the first part's layout; its image datasets (those of
an NXdata group) are virtual datasets that read the parts' pixels where they are, so nothing is
copied, and the small per-image model leaves (``per_image`` attribute) are concatenated. h5py,
and any HDF5 reader, sees one stack.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io.atomic import atomic_output

SIGNAL = "/entry/data/data"


def _count(part: h5py.File, path: str) -> int:
    if SIGNAL not in part:
        raise InputError(f"{path}: not a jaxdiff stack (no {SIGNAL})")
    return int(part[SIGNAL].shape[0])


def _is_image(node: h5py.Dataset, n: int) -> bool:
    parent = node.parent.attrs.get("NX_class", b"")
    parent = parent.decode() if isinstance(parent, bytes) else str(parent)
    return parent == "NXdata" and node.ndim == 3 and node.shape[0] == n


def _copy_attrs(src, dst) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value


def join_stacks(path: str | os.PathLike[str], parts: Sequence[str | os.PathLike[str]]) -> None:
    """Write ``path``: the stacks ``parts`` (in order) as one, with virtual image datasets.

    The parts are referred to by their names relative to ``path``'s folder, so the joined file
    and its parts can be moved together.
    """
    folder = Path(path).resolve().parent
    files = [h5py.File(p, "r") for p in parts]
    try:
        counts = [_count(f, str(p)) for f, p in zip(files, parts, strict=True)]
        names = [os.path.relpath(Path(p).resolve(), folder) for p in parts]
        first = files[0]
        with atomic_output(path) as tmp, h5py.File(tmp, "w") as out:
            _copy_attrs(first, out)

            def visit(group: h5py.Group, target: h5py.Group) -> None:
                for name in group:
                    link = group.get(name, getlink=True)
                    if isinstance(link, h5py.SoftLink):
                        target[name] = h5py.SoftLink(link.path)
                        continue
                    if isinstance(link, h5py.ExternalLink):
                        target[name] = h5py.ExternalLink(link.filename, link.path)
                        continue
                    node = group[name]
                    if isinstance(node, h5py.Group):
                        sub = target.create_group(name)
                        _copy_attrs(node, sub)
                        visit(node, sub)
                    elif _is_image(node, counts[0]):
                        _virtual(target, name, node, files, names, counts)
                    elif node.attrs.get("per_image", False):
                        value = np.concatenate([f[node.name][()] for f in files])
                        ds = target.create_dataset(name, data=value)
                        _copy_attrs(node, ds)
                    else:
                        group.copy(node, target, name=name)

            visit(first, out)
    finally:
        for f in files:
            f.close()


def _virtual(target, name, node, files, names, counts) -> None:
    shape = (sum(counts), *node.shape[1:])
    layout = h5py.VirtualLayout(shape=shape, dtype=node.dtype)
    start = 0
    for f, file_name, n in zip(files, names, counts, strict=True):
        part = f[node.name]
        if part.shape[1:] != node.shape[1:]:
            raise InputError(
                f"{f.filename}: {node.name} is {part.shape}, not (n, *{node.shape[1:]})"
            )
        layout[start : start + n] = h5py.VirtualSource(file_name, node.name, shape=part.shape)
        start += n
    ds = target.create_virtual_dataset(name, layout, fillvalue=0)
    _copy_attrs(node, ds)
