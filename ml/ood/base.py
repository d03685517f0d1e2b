"""The shape every OOD detector shares: typed features in, a typed verdict out, conformal calibration.

A detector's raw score (higher = more OOD) has its own units; `calibrate` turns it into one scale
that means the same for every class and every detector: `ood_score = 1 - p`, where p is the
conformal p-value of the raw score among in-distribution calibration images of the predicted class
(or of all classes when thresholds are global). An image is OOD when p <= 1 - target_tpr, i.e. when
`ood_score >= target_tpr`; an unseen in-distribution image is rejected with probability at most
1 - target_tpr (the conformal guarantee, for exchangeable data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
# Classes with fewer calibration images than this fall back to the pooled scores:
# a 95 % quantile of a handful of scores is mostly noise.
MIN_CALIBRATION_PER_CLASS = 20


@dataclass
class OODFeatures:
    """What the classifier says about N images; pixels only for detectors that need them."""

    embeddings: np.ndarray  # (N, D) float32
    logits: np.ndarray  # (N, C)
    probs: np.ndarray  # (N, C)
    pixels: np.ndarray | None = None  # (N, 32, 32, 3) uint8

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32).reshape(len(self.embeddings), -1)
        self.logits = np.asarray(self.logits, dtype=np.float32)
        self.probs = np.asarray(self.probs, dtype=np.float32)
        if not len(self.embeddings) == len(self.logits) == len(self.probs):
            raise ValueError("embeddings, logits and probs must have the same number of rows")
        if self.pixels is not None and len(self.pixels) != len(self.probs):
            raise ValueError("pixels must have one row per image")

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def subset(self, index: np.ndarray) -> OODFeatures:
        """Rows selected by a boolean mask or an index array."""
        pixels = None if self.pixels is None else self.pixels[index]
        return OODFeatures(self.embeddings[index], self.logits[index], self.probs[index], pixels)

    @classmethod
    def from_prediction(cls, prediction, pixels: np.ndarray | None = None) -> OODFeatures:
        """From an `ml.inference.Prediction` (anything with .embeddings, .logits, .probs)."""
        return cls(prediction.embeddings, prediction.logits, prediction.probs, pixels)


@dataclass
class OODResult:
    """Verdict per image. `scores` is the served ood_score (1 - conformal p-value, in [0, 1), higher =
    more OOD, comparable across classes and detectors); `thresholds` the served ood_threshold
    (target TPR): is_ood == (scores >= thresholds). Raw detector units are kept for diagnostics."""

    is_ood: np.ndarray  # (N,) bool
    scores: np.ndarray  # (N,) float, 1 - p_values
    thresholds: np.ndarray  # (N,) float, the target TPR
    detector: str
    p_values: np.ndarray | None = None  # (N,) conformal p-values among the predicted class's ID scores
    raw_scores: np.ndarray | None = None  # (N,) the detector's own score
    raw_thresholds: np.ndarray | None = None  # (N,) raw score above which an image is OOD


class OODDetector:
    """Base class: subclasses implement `fit` and `score_samples`; calibration and state live here.

    scikit-learn contract: `__init__` stores parameters only (listed in `params`), `fit` returns
    self, learned attributes end in `_` and are numpy arrays or plain scalars, so `ml.ood.persist`
    can store them as npz + JSON (never pickle).
    """

    name = "base"
    params: tuple[str, ...] = ()

    def fit(self, features: OODFeatures, labels: np.ndarray) -> OODDetector:
        raise NotImplementedError

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        """Raw OOD score per image, higher = more out-of-distribution."""
        raise NotImplementedError

    def calibrate(self, features_val: OODFeatures, labels_val_or_pred: np.ndarray,
                  target_tpr: float | None = None, per_class: bool = True) -> OODDetector:
        """Keep the sorted in-distribution scores per class (or pooled) that p-values are taken against.

        Pass predicted classes to make the acceptance rate hold for the routing serving uses.
        """
        if target_tpr is None:
            from ml.config import Settings

            target_tpr = Settings.from_env().ood_target_tpr
        groups = np.asarray(labels_val_or_pred)
        scores = self.score_samples(features_val).astype(np.float64)
        pooled = np.sort(scores)
        parts = []
        for c in range(features_val.probs.shape[1]):
            members = scores[groups == c]
            own = per_class and len(members) >= MIN_CALIBRATION_PER_CLASS
            if per_class and not own:
                log.info("OOD %s: class %d has %d calibration images; using the pooled scores",
                         self.name, c, len(members))
            parts.append(np.sort(members) if own else pooled)
        self.calibration_scores_ = np.concatenate(parts)
        self.calibration_offsets_ = np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)
        self.per_class_ = bool(per_class)
        self.target_tpr_ = float(target_tpr)
        self.thresholds_ = np.array([_raw_threshold(p, 1.0 - target_tpr) for p in parts])
        return self

    def _calibration(self, c: int) -> np.ndarray:
        return self.calibration_scores_[self.calibration_offsets_[c]:self.calibration_offsets_[c + 1]]

    def p_values(self, raw: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Conformal p-value (1 + #{cal >= raw}) / (n + 1) among each image's class calibration scores."""
        out = np.ones(len(raw), dtype=np.float64)
        for c in np.unique(predicted):
            rows = predicted == c
            out[rows] = tail_p_values(self._calibration(int(c)), raw[rows])
        return out

    def score(self, features: OODFeatures) -> OODResult:
        """Served scores and verdicts, each image held to its predicted class's calibration."""
        if not hasattr(self, "thresholds_"):
            raise RuntimeError(f"OOD detector {self.name!r} is not calibrated; call calibrate() first")
        raw = self.score_samples(features).astype(np.float64)
        predicted = features.predicted
        p = self.p_values(raw, predicted)
        raw_thresholds = self.thresholds_[predicted]
        is_ood = raw > raw_thresholds  # the same as p <= 1 - target_tpr, without float rounding
        return OODResult(is_ood, 1.0 - p, np.full(len(raw), self.target_tpr_), self.name, p, raw, raw_thresholds)


def tail_p_values(reference_sorted: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """(1 + #{reference >= raw}) / (n + 1): the conformal p-value of each raw score among sorted references."""
    at_least = len(reference_sorted) - np.searchsorted(reference_sorted, raw, side="left")
    return (1.0 + at_least) / (len(reference_sorted) + 1.0)


def _raw_threshold(sorted_scores: np.ndarray, alpha: float) -> float:
    """Largest calibration score that is still accepted: raw > it  <=>  conformal p <= alpha."""
    n = len(sorted_scores)
    allowed = int(np.floor(alpha * (n + 1) + 1e-9)) - 1  # calibration scores >= raw allowed for a reject
    if n == 0 or allowed < 0:
        return float("inf")
    return float(sorted_scores[max(n - allowed - 1, 0)])
