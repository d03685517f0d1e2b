"""Fitted detectors on disk without pickle: `<name>.json` (kind, parameters, scalars) + `<name>.npz`
(arrays, read with allow_pickle=False), and `summary.json` naming the default.

Loading builds only detector classes from the KINDS whitelist and sets plain numbers and arrays on
them, so a planted file in a downloaded bundle can never run code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ml.ood.base import OODDetector
from ml.ood.detectors import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    MSPDetector,
    ViMDetector,
)
from ml.ood.exposure import OtherClassDetector
from ml.ood.fused import FusedDetector
from ml.ood.guarded import GuardedDetector
from ml.ood.pixel_stats import PixelStatsDetector

SUMMARY = "summary.json"
FORMAT = 1
KINDS: dict[str, type[OODDetector]] = {
    "msp": MSPDetector, "energy": EnergyDetector, "knn": KNNDetector, "mahalanobis": MahalanobisDetector,
    "vim": ViMDetector, "fused": FusedDetector, "other_class": OtherClassDetector,
    "pixel_stats": PixelStatsDetector, "guarded": GuardedDetector,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def detector_state(detector: OODDetector, prefix: str = "") -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON-ready description, arrays) of a fitted detector; nested parts get prefixed array names."""
    spec: dict[str, Any] = {"kind": _KIND_OF[type(detector)],
                            "params": {p: _plain(getattr(detector, p)) for p in detector.params},
                            "scalars": {}, "arrays": [], "parts": []}
    arrays: dict[str, np.ndarray] = {}
    for key, value in vars(detector).items():
        if not key.endswith("_"):
            continue
        if key == "parts_":
            for i, part in enumerate(value):
                part_spec, part_arrays = detector_state(part, f"{prefix}parts_{i}.")
                spec["parts"].append(part_spec)
                arrays.update(part_arrays)
        elif isinstance(value, np.ndarray):
            spec["arrays"].append(key)
            arrays[prefix + key] = value
        else:
            spec["scalars"][key] = _plain(value)
    return spec, arrays


def detector_from_state(spec: dict, arrays: Any, prefix: str = "") -> OODDetector:
    """Rebuild a detector from detector_state's output (only whitelisted kinds, only data)."""
    cls = KINDS.get(spec.get("kind"))
    if cls is None:
        raise ValueError(f"unknown OOD detector kind {spec.get('kind')!r}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["params"].items() if k in cls.params}
    detector = cls(**params)
    for key, value in spec["scalars"].items():
        setattr(detector, _learned(key), value)
    for key in spec["arrays"]:
        setattr(detector, _learned(key), np.asarray(arrays[prefix + key]))
    if spec.get("parts"):
        detector.parts_ = [detector_from_state(part, arrays, f"{prefix}parts_{i}.")
                           for i, part in enumerate(spec["parts"])]
    return detector


def save_detectors(directory: str | Path, detectors: dict[str, OODDetector], summary: dict[str, Any]) -> Path:
    """Write every detector and the summary ({"default_detector", "detectors": {name: metrics}})."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if summary.get("default_detector") not in detectors:
        raise ValueError(f"default_detector {summary.get('default_detector')!r} is not among the saved detectors")
    for name, detector in detectors.items():
        spec, arrays = detector_state(detector)
        with open(directory / f"{_checked(name)}.npz", "wb") as handle:  # savez would add a 2nd suffix
            np.savez_compressed(handle, **arrays)
        (directory / f"{name}.json").write_text(json.dumps({"format": FORMAT, **spec}, indent=1))
    (directory / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return directory


def load_summary(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / SUMMARY).read_text())


def load_detector(directory: str | Path, name: str) -> OODDetector:
    """One saved detector by name, from its .json + .npz (never from pickles or joblib files)."""
    spec_path, arrays_path = Path(directory) / f"{_checked(name)}.json", Path(directory) / f"{name}.npz"
    if not spec_path.is_file() or not arrays_path.is_file():
        if (Path(directory) / f"{name}.joblib").is_file():  # a bundle from before detectors left pickle
            raise FileNotFoundError(f"OOD detector {name!r} in {directory} is a joblib pickle, which is never "
                                    "loaded (it could run code); re-run the fit_ood stage for this run")
        raise FileNotFoundError(f"no OOD detector {name!r} in {directory}")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{spec_path}: unsupported format {spec.get('format')!r} (expected {FORMAT})")
    with np.load(arrays_path, allow_pickle=False) as arrays:
        return detector_from_state(spec, {key: arrays[key] for key in arrays.files})


def load_default_detector(directory: str | Path) -> OODDetector:
    """The detector `summary.json` names as default."""
    return load_detector(directory, load_summary(directory)["default_detector"])


def _checked(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"OOD detector name {name!r} may only hold letters, digits, '_' and '-'")
    return name


def _learned(key: str) -> str:
    if not key.endswith("_") or not key.isidentifier() or key.startswith("_"):
        raise ValueError(f"{key!r} is not a learned attribute name")
    return key


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as JSON types; anything else that is not plain data is an error."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} without pickle")
