"""DIALS experiment lists (``.expt``, JSON): read the beam, detector, crystal, goniometer and
scan of one experiment, and write a fitted model back (standard library and NumPy only).

The file's units are dxtbx's: mm, Å, degrees, and a beam ``direction`` that points from the
sample towards the source. :class:`DialsExperiment` holds them in jaxdiff's: m, rad, 1/m, and a
beam direction along which the beam travels. The lab frame is the file's own (DIALS': beam
along −z); jaxdiff's physics does not depend on the frame.

A goniometer's setting rotation S and fixed rotation F turn the crystal as S·R(e, φ)·F·A; that
is R(S·e, φ)·(S·F·A), so the crystal is read as S·F·A and spins about S·e, and written back
as (S·F)ᵀ times the fitted vectors.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import NamedTuple

import numpy as np

from jaxdiff.beam import Beam
from jaxdiff.crystal import Crystal, cell_vectors
from jaxdiff.detector import Detector, panel_geometries
from jaxdiff.errors import InputError
from jaxdiff.io.atomic import atomic_output


class DialsPanel(NamedTuple):
    """One panel of a DIALS detector in the lab frame, in jaxdiff's units: (3,) unit
    ``fast_axis`` and ``slow_axis``, ``origin`` (3,) the first pixel's corner [m],
    ``pixel_size`` [m], ``image_size`` (fast, slow), sensor ``thickness`` [m] and ``mu`` [1/m]."""

    fast_axis: np.ndarray
    slow_axis: np.ndarray
    origin: np.ndarray
    pixel_size: float
    image_size: tuple[int, int]
    thickness: float
    mu: float

    def detector(self) -> Detector:
        """The panel as a single-panel :class:`Detector` (sample pivot, one sensor layer)."""
        return Detector.from_vectors(
            self.fast_axis,
            self.slow_axis,
            self.origin,
            self.pixel_size,
            self.image_size,
            layer_thickness=self.thickness,
            mu=self.mu,
        )


@dataclasses.dataclass(frozen=True)
class DialsExperiment:
    """One experiment of a DIALS experiment list, in jaxdiff's units.

    Attributes:
        path: the file it came from.
        wavelength: [m].
        beam_direction: (3,) unit vector along which the beam travels (dxtbx's −direction).
        polar_vector: (3,) E-vector direction; polarization: Kahn factor (2f − 1 of DIALS'
            polarization fraction f).
        real_space: (3, 3) rows a, b, c [Å] in the frame where φ turns about
            ``rotation_axis`` (S·F applied), or None without a crystal.
        rotation_axis: (3,) unit φ axis S·e, or None without a goniometer.
        setting: (3, 3) S·F (identity without a goniometer).
        oscillation: (φ at the start of the first image, width) [rad], or None without a scan.
        document: the parsed file, kept to write a fitted model back into it.
        index: the experiment's position in the file's list.
        panels: every panel of the detector (:class:`DialsPanel`), in the file's order; the
            first panel's fields are also attributes of the experiment (``fast_axis``,
            ``slow_axis``, ``origin``, ``pixel_size``, ``image_size``, ``thickness``, ``mu``).
    """

    path: str
    wavelength: float
    beam_direction: np.ndarray
    polar_vector: np.ndarray
    polarization: float
    real_space: np.ndarray | None
    rotation_axis: np.ndarray | None
    setting: np.ndarray
    oscillation: tuple[float, float] | None
    document: dict
    index: int
    panels: tuple[DialsPanel, ...]

    def __post_init__(self):
        if not self.panels:
            raise ValueError("a DIALS experiment has at least one panel")

    # the first panel's geometry: a single panel's, and what the flag path reads (-pixel,
    # -detpixels, the sensor)
    @property
    def fast_axis(self) -> np.ndarray:
        return self.panels[0].fast_axis

    @property
    def slow_axis(self) -> np.ndarray:
        return self.panels[0].slow_axis

    @property
    def origin(self) -> np.ndarray:
        return self.panels[0].origin

    @property
    def pixel_size(self) -> float:
        return self.panels[0].pixel_size

    @property
    def image_size(self) -> tuple[int, int]:
        return self.panels[0].image_size

    @property
    def thickness(self) -> float:
        return self.panels[0].thickness

    @property
    def mu(self) -> float:
        return self.panels[0].mu

    def beam(self, **kwargs) -> Beam:
        """The beam (keyword arguments as for :meth:`Beam.from_wavelength`, e.g. fluence)."""
        return Beam.from_wavelength(
            self.wavelength,
            self.beam_direction,
            polar_vector=self.polar_vector,
            polarization=self.polarization,
            **kwargs,
        )

    def detector(self) -> Detector:
        """The detector as a :class:`Detector` (sample pivot, one sensor layer): a single
        panel, or a multi-panel detector (:meth:`Detector.from_panels`) for several."""
        if len(self.panels) == 1:
            return self.panels[0].detector()
        try:
            return Detector.from_panels([p.detector() for p in self.panels])
        except ValueError as err:
            raise InputError(f"{self.path}: {err}") from None

    def crystal(self, **kwargs) -> Crystal:
        """The crystal (keyword arguments as for :meth:`Crystal.from_cell`, e.g. ncells);
        the goniometer's axis and the scan's first φ are its defaults (a φ step over the
        scan's width, ``oscillation[1]``, and the count of steps are the caller's choice)."""
        if self.real_space is None:
            raise InputError(f"{self.path}: the experiment has no crystal")
        if self.rotation_axis is not None:
            kwargs.setdefault("rotation_axis", self.rotation_axis)
        if self.oscillation is not None:
            kwargs.setdefault("phi0", self.oscillation[0])
        return Crystal.from_real_space_vectors(*self.real_space, **kwargs)


def _vector(path, d: dict, key: str, n: int = 3) -> np.ndarray:
    try:
        v = np.asarray(d[key], dtype=float).reshape(n)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: {key!r} missing or not {n} numbers") from None
    if not np.all(np.isfinite(v)):
        raise InputError(f"{path}: {key!r} is not finite")
    return v


def _unit(path, v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise InputError(f"{path}: {what} is zero")
    return v / norm


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation matrix about unit ``axis`` by ``angle`` [rad]."""
    x, y, z = axis
    c, s = math.cos(angle), math.sin(angle)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return c * np.eye(3) + s * k + (1.0 - c) * np.outer(axis, axis)


def _model(path, doc: dict, entry: dict, name: str) -> dict | None:
    """The experiment's ``name`` model: an index into the file's list, or inline."""
    ref = entry.get(name)
    if ref is None:
        return None
    if isinstance(ref, dict):
        return ref
    models = doc.get(name)
    if not isinstance(ref, int) or not isinstance(models, list) or not 0 <= ref < len(models):
        raise InputError(f"{path}: experiment refers to {name} {ref!r}, which the file lacks")
    return models[ref]


def _group_frame(path, detector: dict, panel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(M, o): the lab frame of ``panel``'s parent group, so that a point given in the panel's
    stored (local) frame is o + M·p. dxtbx keeps each panel and group frame relative to its
    parent in the hierarchy; M's columns are the group's fast, slow and normal axes."""

    def frame(node, m, o):
        fast = _unit(path, _vector(path, node, "fast_axis"), "group fast_axis")
        slow = _unit(path, _vector(path, node, "slow_axis"), "group slow_axis")
        axes = np.stack([fast, slow, _unit(path, np.cross(fast, slow), "group normal")], axis=1)
        return m @ axes, o + m @ _vector(path, node, "origin")

    def walk(node, m, o):
        m, o = frame(node, m, o)
        for child in node.get("children", []):
            if child.get("panel") == panel:
                return m, o
            if "panel" not in child and (found := walk(child, m, o)) is not None:
                return found
        return None

    hierarchy = detector.get("hierarchy")
    found = walk(hierarchy, np.eye(3), np.zeros(3)) if hierarchy else None
    return found if found is not None else (np.eye(3), np.zeros(3))


def _goniometer(path, gonio: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit φ axis e and the setting and fixed rotations S, F of a goniometer model."""
    if {"axes", "angles", "scan_axis"} <= set(gonio):
        axes = [_unit(path, np.asarray(a, dtype=float), "goniometer axis") for a in gonio["axes"]]
        angles = [math.radians(float(a)) for a in gonio["angles"]]
        k = int(gonio["scan_axis"])
        fixed, setting = np.eye(3), np.eye(3)
        for i, (axis, angle) in enumerate(zip(axes, angles, strict=True)):
            if i < k:
                fixed = _axis_angle(axis, angle) @ fixed
            elif i > k:
                setting = _axis_angle(axis, angle) @ setting
        return axes[k], setting, fixed
    axis = _unit(path, _vector(path, gonio, "rotation_axis"), "rotation_axis")
    fixed = (
        _vector(path, gonio, "fixed_rotation", 9).reshape(3, 3)
        if "fixed_rotation" in gonio
        else np.eye(3)
    )
    setting = (
        _vector(path, gonio, "setting_rotation", 9).reshape(3, 3)
        if "setting_rotation" in gonio
        else np.eye(3)
    )
    return axis, setting, fixed


def read_experiments(path: str | os.PathLike[str]) -> list[DialsExperiment]:
    """Every experiment in a DIALS experiment list (``.expt``).

    Raises:
        InputError: a missing or malformed file, an experiment without beam or detector, a
            detector without panels, or non-square pixels.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as err:
        raise InputError(f"{path}: cannot read experiment list ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a DIALS experiment list (JSON: {err})") from None
    if not isinstance(doc, dict) or doc.get("__id__") != "ExperimentList":
        raise InputError(f"{path}: not a DIALS experiment list (no '__id__': 'ExperimentList')")
    entries = doc.get("experiment") or []
    if not entries:
        raise InputError(f"{path}: the experiment list is empty")
    return [_experiment(path, doc, i) for i in range(len(entries))]


def read_experiment(path: str | os.PathLike[str]) -> DialsExperiment:
    """The one experiment of a DIALS experiment list; InputError when there are several."""
    experiments = read_experiments(path)
    if len(experiments) != 1:
        raise InputError(
            f"{path}: {len(experiments)} experiments in the list; jaxdiff renders one at a time"
        )
    return experiments[0]


def _experiment(path: str, doc: dict, index: int) -> DialsExperiment:
    entry = doc["experiment"][index]
    beam = _model(path, doc, entry, "beam")
    detector = _model(path, doc, entry, "detector")
    if beam is None or detector is None:
        raise InputError(f"{path}: experiment {index} has no beam or no detector")
    panels = detector.get("panels") or []
    if not panels:
        raise InputError(f"{path}: the detector has no panels")
    frames = tuple(_panel_frame(path, detector, i) for i in range(len(panels)))
    wavelength = float(beam.get("wavelength", 0.0))
    if not wavelength > 0.0:
        raise InputError(f"{path}: beam wavelength must be positive, got {wavelength:g}")
    towards_source = _unit(path, _vector(path, beam, "direction"), "beam direction")
    travel = -towards_source
    normal = beam.get("polarization_normal", [0.0, 1.0, 0.0])
    e_vector = np.cross(travel, np.asarray(normal, dtype=float))
    fraction = float(beam.get("polarization_fraction", 0.5))

    gonio = _model(path, doc, entry, "goniometer")
    rotation_axis, frame = None, np.eye(3)
    if gonio is not None:
        axis, setting, fixed = _goniometer(path, gonio)
        frame = setting @ fixed
        rotation_axis = setting @ axis
    scan = _model(path, doc, entry, "scan")
    oscillation = None
    if scan is not None and gonio is not None:
        start, width = _vector(path, scan, "oscillation", 2)
        oscillation = (math.radians(start), math.radians(width))
    crystal = _model(path, doc, entry, "crystal")
    real_space = None
    if crystal is not None:
        real = np.stack([_vector(path, crystal, f"real_space_{x}") for x in "abc"])
        if abs(np.linalg.det(real)) == 0.0:
            raise InputError(f"{path}: the crystal's real-space vectors are not independent")
        real_space = real @ frame.T
    return DialsExperiment(
        path=path,
        wavelength=wavelength * 1e-10,
        beam_direction=travel,
        polar_vector=_unit(path, e_vector, "polarization plane"),
        polarization=2.0 * fraction - 1.0,
        real_space=real_space,
        rotation_axis=rotation_axis,
        setting=frame,
        oscillation=oscillation,
        document=doc,
        index=index,
        panels=frames,
    )


def _panel_frame(path: str, detector: dict, index: int) -> DialsPanel:
    """Panel ``index`` of a detector model, its frame composed through the hierarchy."""
    panel = detector["panels"][index]
    if not isinstance(panel, dict):
        raise InputError(f"{path}: panel {index} is not a panel model")
    group, group_origin = _group_frame(path, detector, index)
    size = _vector(path, panel, "pixel_size", 2)
    if size[0] != size[1] or not size[0] > 0.0:
        raise InputError(
            f"{path}: pixels must be square, got {size[0]:g} x {size[1]:g} mm (panel {index})"
        )
    return DialsPanel(
        fast_axis=_unit(path, group @ _vector(path, panel, "fast_axis"), "fast_axis"),
        slow_axis=_unit(path, group @ _vector(path, panel, "slow_axis"), "slow_axis"),
        origin=(group_origin + group @ _vector(path, panel, "origin")) * 1e-3,
        pixel_size=float(size[0]) * 1e-3,
        image_size=tuple(int(n) for n in _vector(path, panel, "image_size", 2)),
        thickness=float(panel.get("thickness", 0.0)) * 1e-3,
        mu=float(panel.get("mu", 0.0)) * 1e3,
    )


def _panel(name: str) -> dict:
    return {
        "name": name,
        "type": "SENSOR_PAD",
        "fast_axis": [1.0, 0.0, 0.0],
        "slow_axis": [0.0, 1.0, 0.0],
        "origin": [0.0, 0.0, 0.0],
        "raw_image_offset": [0, 0],
        "image_size": [0, 0],
        "pixel_size": [0.0, 0.0],
        "trusted_range": [0.0, 0.0],
        "thickness": 0.0,
        "material": "",
        "mu": 0.0,
        "identifier": "",
        "mask": [],
        "gain": 1.0,
        "pedestal": 0.0,
        "px_mm_strategy": {"type": "SimplePxMmStrategy"},
    }


def _fresh_document(panels: int = 1) -> dict:
    hierarchy = _panel("")
    hierarchy["type"] = ""
    hierarchy["children"] = [{"panel": i} for i in range(panels)]
    names = ["Panel"] if panels == 1 else [f"Panel{i}" for i in range(panels)]
    return {
        "__id__": "ExperimentList",
        "experiment": [
            {"__id__": "Experiment", "identifier": "", "beam": 0, "detector": 0, "crystal": 0}
        ],
        "imageset": [],
        "beam": [
            {
                "direction": [0.0, 0.0, 1.0],
                "wavelength": 1.0,
                "divergence": 0.0,
                "sigma_divergence": 0.0,
                "polarization_normal": [0.0, 1.0, 0.0],
                "polarization_fraction": 0.5,
                "flux": 0.0,
                "transmission": 1.0,
            }
        ],
        "detector": [{"panels": [_panel(name) for name in names], "hierarchy": hierarchy}],
        "crystal": [{"__id__": "crystal", "space_group_hall_symbol": " P 1"}],
        "profile": [],
        "scaling_model": [],
    }


def experiment_document(exp, phisteps: int = 1, template: DialsExperiment | None = None) -> dict:
    """A DIALS experiment list (as a dict) of ``exp`` (a :class:`jaxdiff.Experiment`).

    With ``template`` (the experiment the model was read from) the file's other content is
    kept (image set, goniometer, scan, identifiers) and its beam, panel and crystal are
    replaced; otherwise a goniometer and a one-image scan are written when the crystal turns
    (``phisteps`` φ steps of a nonzero step). Every panel of a multi-panel detector is written
    (the template's detector must have as many panels).
    """
    beam, det, cr = exp.beam, exp.detector, exp.crystal
    travel = np.asarray(beam.direction, dtype=float)
    geom = panel_geometries(det, beam.direction)
    real, _ = cell_vectors(cr)
    real = np.asarray(real, dtype=float) * 1e10
    if template is not None:
        doc = copy.deepcopy(template.document)
        entry = doc["experiment"][template.index]
        frame = template.setting
    else:
        doc = _fresh_document(det.panel_count)
        entry = doc["experiment"][0]
        frame = np.eye(3)
        span = float(cr.phistep) * phisteps
        if span != 0.0 or float(cr.phi0) != 0.0:
            doc["goniometer"] = [
                {
                    "rotation_axis": [float(x) for x in np.asarray(cr.spindle)],
                    "fixed_rotation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                    "setting_rotation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                }
            ]
            doc["scan"] = [
                {
                    "image_range": [1, 1],
                    "batch_offset": 0,
                    "oscillation": [math.degrees(float(cr.phi0)), math.degrees(span)],
                    "exposure_time": [1.0],
                    "epochs": [0.0],
                    "valid_image_ranges": {},
                }
            ]
            entry["goniometer"] = entry["scan"] = 0

    model = _model("experiment list", doc, entry, "beam")
    polar = np.asarray(beam.polar_vector, dtype=float)
    model["direction"] = [float(x) for x in -travel]
    model["wavelength"] = float(np.mean(np.asarray(beam.wavelengths))) * 1e10
    model["polarization_normal"] = [float(x) for x in _safe_unit(np.cross(polar, travel))]
    model["polarization_fraction"] = (float(beam.polarization) + 1.0) / 2.0

    detector = _model("experiment list", doc, entry, "detector")
    if len(detector["panels"]) != det.panel_count:
        raise ValueError(
            f"the template's detector has {len(detector['panels'])} panels, the model "
            f"{det.panel_count}"
        )
    pixels = np.broadcast_to(np.asarray(det.pixel_size, dtype=float), (det.panel_count,))
    for i, panel in enumerate(detector["panels"]):
        group, group_origin = _group_frame("experiment list", detector, i)
        back = np.linalg.inv(group)  # lab frame to the panel's parent group's frame
        panel["fast_axis"] = [float(x) for x in back @ np.asarray(geom.fast[i])]
        panel["slow_axis"] = [float(x) for x in back @ np.asarray(geom.slow[i])]
        origin = back @ (np.asarray(geom.pix0[i]) * 1e3 - group_origin)
        panel["origin"] = [float(x) for x in origin]
        pixel = float(pixels[i]) * 1e3
        panel["pixel_size"] = [pixel, pixel]
        panel["image_size"] = list(det.image_size)
        if not panel.get("trusted_range") or panel["trusted_range"] == [0.0, 0.0]:
            panel["trusted_range"] = [-1.0, 1e9]

    crystal = _model("experiment list", doc, entry, "crystal")
    if crystal is None:
        doc.setdefault("crystal", []).append(
            {"__id__": "crystal", "space_group_hall_symbol": " P 1"}
        )
        entry["crystal"] = len(doc["crystal"]) - 1
        crystal = doc["crystal"][-1]
    crystal_file = real @ frame  # rows: (S·F)ᵀ applied to each fitted vector
    for axis, vec in zip("abc", crystal_file, strict=True):
        crystal[f"real_space_{axis}"] = [float(x) for x in vec]
    for stale in ("A_at_scan_points", "B_covariance", "B_covariance_at_scan_points"):
        crystal.pop(stale, None)
    return doc


def _safe_unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0.0 else np.array([0.0, 1.0, 0.0])


def write_experiments(
    path: str | os.PathLike[str],
    exp,
    phisteps: int = 1,
    template: DialsExperiment | None = None,
) -> None:
    """Write ``exp`` as a DIALS experiment list that dxtbx loads (atomically); see
    :func:`experiment_document` for ``phisteps`` and ``template``."""
    doc = experiment_document(exp, phisteps, template)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
