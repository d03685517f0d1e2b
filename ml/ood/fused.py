"""A fused score: the mean of z-normalised component scores (e.g. feature distance + logit energy).

Different detectors fail on different kinds of outliers (KNN on images near the feature manifold,
energy on images the head is unsure of); a z-normalised sum keeps either signal. The z statistics
come from training rows held out of the components' fit, so KNN's distance to itself never sets them.
"""

from __future__ import annotations

import numpy as np

from ml.ood.base import OODDetector, OODFeatures
from ml.ood.detectors import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    MSPDetector,
    ViMDetector,
)

COMPONENTS = {"msp": MSPDetector, "energy": EnergyDetector, "knn": KNNDetector,
              "mahalanobis": MahalanobisDetector, "vim": ViMDetector}
HOLDOUT_FRACTION = 0.2  # training rows kept out of the components to measure their ID spread
MAX_HOLDOUT = 5000


class FusedDetector(OODDetector):
    """Mean of component scores, each standardised by its mean and std on held-out training rows."""

    params = ("name", "components", "seed")

    def __init__(self, name: str = "fused", components: tuple[str, ...] = ("knn", "energy"), seed: int = 0):
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown or len(components) < 2:
            raise ValueError(f"fused detector needs two or more of {sorted(COMPONENTS)}; got {components}")
        self.name, self.components, self.seed = name, tuple(components), seed

    def _make(self, kind: str) -> OODDetector:
        cls = COMPONENTS[kind]
        return cls(seed=self.seed) if "seed" in cls.params else cls()

    def fit(self, features: OODFeatures, labels: np.ndarray) -> FusedDetector:
        labels = np.asarray(labels)
        rng = np.random.default_rng(self.seed)
        held = rng.random(len(features)) < HOLDOUT_FRACTION
        if held.sum() > MAX_HOLDOUT:
            held[np.flatnonzero(held)[MAX_HOLDOUT:]] = False
        if held.all() or not held.any():  # tiny data: standardise on the training rows themselves
            held = np.ones(len(features), bool)
        fit_rows = ~held if (~held).any() else held
        self.parts_ = [self._make(kind).fit(features.subset(fit_rows), labels[fit_rows]) for kind in self.components]
        raw = np.stack([p.score_samples(features.subset(held)) for p in self.parts_])
        self.mean_ = raw.mean(axis=1)
        self.std_ = np.maximum(raw.std(axis=1), 1e-12)
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        raw = np.stack([p.score_samples(features) for p in self.parts_])
        return ((raw - self.mean_[:, None]) / self.std_[:, None]).mean(axis=0)
