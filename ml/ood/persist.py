"""Fitted detectors on disk: `<name>.joblib` each, plus `summary.json` naming the default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib

from ml.ood.base import OODDetector

SUMMARY = "summary.json"


def save_detectors(directory: str | Path, detectors: dict[str, OODDetector], summary: dict[str, Any]) -> Path:
    """Write every detector and the summary ({"default_detector", "detectors": {name: metrics}})."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if summary.get("default_detector") not in detectors:
        raise ValueError(f"default_detector {summary.get('default_detector')!r} is not among the saved detectors")
    for name, detector in detectors.items():
        joblib.dump(detector, directory / f"{name}.joblib", compress=3)
    (directory / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return directory


def load_summary(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / SUMMARY).read_text())


def load_detector(directory: str | Path, name: str) -> OODDetector:
    """One saved detector by name."""
    path = Path(directory) / f"{name}.joblib"
    if not path.is_file():
        raise FileNotFoundError(f"no OOD detector {name!r} in {directory}")
    return joblib.load(path)


def load_default_detector(directory: str | Path) -> OODDetector:
    """The detector `summary.json` names as default."""
    return load_detector(directory, load_summary(directory)["default_detector"])
