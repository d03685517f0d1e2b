"""Fit, calibrate and compare every detector on one model's features (no MLflow, no TensorFlow)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ml.ood.base import OODDetector, OODFeatures
from ml.ood.catalog import make_detectors, pick_default
from ml.ood.evaluate import evaluate_detector
from ml.ood.forests import OtherClassDetector

log = logging.getLogger(__name__)


@dataclass
class OODData:
    """Features of every split the evaluation needs; `ood_sets` are ordered, the first is primary."""

    train: OODFeatures
    train_labels: np.ndarray
    val: OODFeatures
    test: OODFeatures | None = None
    ood_sets: dict[str, OODFeatures] = field(default_factory=dict)
    outlier_train: OODFeatures | None = None  # for the 'other' class; never part of ood_sets


def concat_features(parts: list[OODFeatures]) -> OODFeatures:
    """Row-wise concatenation; pixels kept only when every part has them."""
    pixels = None if any(p.pixels is None for p in parts) else np.concatenate([p.pixels for p in parts])
    return OODFeatures(np.concatenate([p.embeddings for p in parts]), np.concatenate([p.logits for p in parts]),
                       np.concatenate([p.probs for p in parts]), pixels)


def _fit_one(name: str, detector: OODDetector, data: OODData) -> OODDetector:
    if not isinstance(detector, OtherClassDetector):
        return detector.fit(data.train, data.train_labels)
    n_classes = data.train.probs.shape[1]
    features = concat_features([data.train, data.outlier_train])
    labels = np.r_[data.train_labels, np.full(len(data.outlier_train), n_classes)]
    return detector.fit(features, labels)


def fit_detectors(data: OODData, target_tpr: float, seed: int = 0,
                  only: tuple[str, ...] | None = None) -> tuple[dict[str, OODDetector], dict[str, float]]:
    """Fit on train, calibrate per predicted class on val; returns detectors and fit seconds."""
    include_other = data.outlier_train is not None and len(data.outlier_train) > 0
    if not include_other:
        log.info("OOD: no outlier images for the 'other' class (set VISIONLOOP_OOD_EVAL_ARCHIVE or use "
                 "cifar100); skipping other_class")
    detectors = make_detectors(seed=seed, include_other=include_other)
    if data.train.pixels is None:
        detectors = {n: d for n, d in detectors.items() if not d.needs_pixels}
    if only:
        detectors = {n: d for n, d in detectors.items() if n in only}
    seconds = {}
    for name, detector in detectors.items():
        start = time.perf_counter()
        _fit_one(name, detector, data).calibrate(data.val, data.val.predicted, target_tpr)
        seconds[name] = time.perf_counter() - start
        log.info("OOD: fitted %s in %.1f s", name, seconds[name])
    return detectors, seconds


def evaluate_all(detectors: dict[str, OODDetector], data: OODData) -> dict[str, dict]:
    """One metrics row per detector (see ml.ood.evaluate.evaluate_detector)."""
    return {name: evaluate_detector(det, data.val, data.ood_sets, data.test) for name, det in detectors.items()}


def summarise(rows: dict[str, dict], seconds: dict[str, float], target_tpr: float) -> dict:
    """summary.json content: the default detector (best primary AUROC, ties to the simpler) and every row."""
    if not rows or not next(iter(rows.values()))["sets"]:
        raise ValueError("OOD evaluation needs at least one OOD set")
    default = pick_default({name: row["auroc"] for name, row in rows.items()})
    primary = next(iter(next(iter(rows.values()))["sets"]))
    detectors = {name: {**row, "fit_seconds": round(seconds.get(name, 0.0), 3)} for name, row in rows.items()}
    return {"default_detector": default, "primary_ood_set": primary, "target_tpr": target_tpr,
            "detectors": detectors}


def run(data: OODData, target_tpr: float, seed: int = 0,
        only: tuple[str, ...] | None = None) -> tuple[dict[str, OODDetector], dict]:
    """Fit, calibrate and evaluate everything; returns (detectors, summary)."""
    detectors, seconds = fit_detectors(data, target_tpr, seed, only)
    return detectors, summarise(evaluate_all(detectors, data), seconds, target_tpr)
