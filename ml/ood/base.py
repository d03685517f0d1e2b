"""The shape every OOD detector shares: typed features in, a typed verdict out, per-class thresholds."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
# Classes with fewer calibration images than this fall back to the pooled threshold:
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
    """Verdict per image: is_ood, the score (higher = more OOD) and the threshold it was held to."""

    is_ood: np.ndarray  # (N,) bool
    scores: np.ndarray  # (N,) float
    thresholds: np.ndarray  # (N,) float, from each image's predicted class
    detector: str


class OODDetector:
    """Base class: subclasses implement `fit` and `score_samples`; thresholds live here.

    scikit-learn contract: `__init__` stores parameters only, `fit` returns self,
    learned attributes end in `_`.
    """

    name = "base"
    needs_pixels = False

    def fit(self, features: OODFeatures, labels: np.ndarray) -> OODDetector:
        raise NotImplementedError

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        """Raw OOD score per image, higher = more out-of-distribution."""
        raise NotImplementedError

    def calibrate(self, features_val: OODFeatures, labels_val_or_pred: np.ndarray,
                  target_tpr: float | None = None) -> OODDetector:
        """Per-class thresholds that accept `target_tpr` of the given in-distribution images per class.

        Pass predicted classes to make the acceptance rate hold for the routing serving uses.
        """
        if target_tpr is None:
            from ml.config import Settings

            target_tpr = Settings.from_env().ood_target_tpr
        groups = np.asarray(labels_val_or_pred)
        scores = self.score_samples(features_val)
        n_classes = features_val.probs.shape[1]
        pooled = _quantile(scores, target_tpr)
        thresholds = np.full(n_classes, pooled, dtype=np.float64)
        for c in range(n_classes):
            members = scores[groups == c]
            if len(members) >= MIN_CALIBRATION_PER_CLASS:
                thresholds[c] = _quantile(members, target_tpr)
            else:
                log.info("OOD %s: class %d has %d calibration images; using the pooled threshold",
                         self.name, c, len(members))
        self.thresholds_ = thresholds
        self.target_tpr_ = float(target_tpr)
        return self

    def score(self, features: OODFeatures) -> OODResult:
        """Scores, each image held to the threshold of its predicted class."""
        if not hasattr(self, "thresholds_"):
            raise RuntimeError(f"OOD detector {self.name!r} is not calibrated; call calibrate() first")
        scores = self.score_samples(features)
        thresholds = self.thresholds_[features.predicted]
        return OODResult(scores > thresholds, scores, thresholds, self.name)


def _quantile(scores: np.ndarray, q: float) -> float:
    """The score at or below which a fraction q of the scores lie ('higher' keeps >= q accepted)."""
    if len(scores) == 0:
        return float("inf")
    return float(np.quantile(scores, q, method="higher"))
