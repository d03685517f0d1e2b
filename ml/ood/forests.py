"""The reference design (per-class Isolation Forests) and its variants, plus the extra 'other' class head."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ml.ood.base import OODDetector, OODFeatures
from ml.ood.detectors import _subsample, l2_normalise

# Fewer training rows than this and a class's own forest is not fitted; the pooled forest routes it.
MIN_FOREST_ROWS = 16


class IsolationForestDetector(OODDetector):
    """Isolation Forests routed by predicted class (or one pooled forest), on embeddings or raw pixels.

    The reference design is `per_class=True, inputs="embeddings", correct_only=True`:
    one forest per class, fitted on that class's correctly classified training images.
    """

    def __init__(self, name: str = "isolation_forest", per_class: bool = True, inputs: str = "embeddings",
                 correct_only: bool = True, n_estimators: int = 100, max_train_per_forest: int = 5000,
                 seed: int = 0):
        self.name, self.per_class, self.inputs = name, per_class, inputs
        self.correct_only, self.n_estimators = correct_only, n_estimators
        self.max_train_per_forest, self.seed = max_train_per_forest, seed

    @property
    def needs_pixels(self) -> bool:  # type: ignore[override]
        return self.inputs == "pixels"

    def _x(self, features: OODFeatures, rows: np.ndarray) -> np.ndarray:
        """Inputs of the given rows only: 65,000 images as float pixels would need 800 MB."""
        if self.inputs == "embeddings":
            return features.embeddings[rows]
        if features.pixels is None:
            raise ValueError(f"OOD detector {self.name!r} needs pixels in OODFeatures")
        pixels = features.pixels[rows]
        return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0

    def _forest(self, features: OODFeatures, rows: np.ndarray) -> IsolationForest:
        rows = rows[_subsample(len(rows), self.max_train_per_forest, self.seed)]
        return IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(self._x(features, rows))

    def fit(self, features: OODFeatures, labels: np.ndarray) -> IsolationForestDetector:
        labels = np.asarray(labels)
        keep = features.predicted == labels if self.correct_only else np.ones(len(labels), bool)
        if keep.sum() < MIN_FOREST_ROWS:
            keep[:] = True  # an untrained model gets almost nothing right; fit on all rather than on nothing
        rows = np.flatnonzero(keep)
        self.pooled_ = self._forest(features, rows)
        self.forests_: dict[int, IsolationForest] = {}
        if self.per_class:
            for c in range(features.probs.shape[1]):
                members = rows[labels[rows] == c]
                if len(members) >= MIN_FOREST_ROWS:
                    self.forests_[c] = self._forest(features, members)
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        predicted = features.predicted
        scores = np.empty(len(features), dtype=np.float64)
        routed = np.zeros(len(features), dtype=bool)
        for c, forest in self.forests_.items():
            rows = np.flatnonzero(predicted == c)
            if len(rows):
                # sklearn: lower score_samples = more abnormal; we report higher = more OOD.
                scores[rows] = -forest.score_samples(self._x(features, rows))
                routed[rows] = True
        rest = np.flatnonzero(~routed)
        if len(rest):
            scores[rest] = -self.pooled_.score_samples(self._x(features, rest))
        return scores


class OtherClassDetector(OODDetector):
    """A linear head on embeddings with outlier images as an extra class C; score = P(other).

    `fit` expects the outliers in the features with label == C (the number of model classes).
    multiclass=True is the reference design (C+1 classes); False is a binary in-vs-other head on
    L2-normalised embeddings (outlier exposure as a detector), 4x faster to fit.
    """

    def __init__(self, name: str = "other_class", multiclass: bool = True, max_train: int = 20000,
                 c: float = 0.1, seed: int = 0):
        self.name, self.multiclass, self.max_train, self.c, self.seed = name, multiclass, max_train, c, seed

    def _x(self, features: OODFeatures) -> np.ndarray:
        return features.embeddings if self.multiclass else l2_normalise(features.embeddings)

    def fit(self, features: OODFeatures, labels: np.ndarray) -> OtherClassDetector:
        labels = np.asarray(labels)
        n_classes = features.probs.shape[1]
        outliers = labels == n_classes
        if not outliers.any():
            raise ValueError(f"{self.name} needs outlier images labelled {n_classes} in fit()")
        inliers = np.flatnonzero(~outliers)[_subsample(int((~outliers).sum()), self.max_train, self.seed)]
        rows = np.concatenate([inliers, np.flatnonzero(outliers)])
        # Balanced weights: a few hundred outliers would otherwise be drowned by 65,000 inliers.
        head = LogisticRegression(C=self.c, max_iter=500, class_weight="balanced", random_state=self.seed)
        targets = labels[rows] if self.multiclass else (labels[rows] == n_classes).astype(np.int64)
        self.model_ = make_pipeline(StandardScaler(), head).fit(self._x(features)[rows], targets)
        self.other_label_ = n_classes if self.multiclass else 1
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        classes = list(self.model_.classes_)
        probs = self.model_.predict_proba(self._x(features))
        return probs[:, classes.index(self.other_label_)].astype(np.float64)
