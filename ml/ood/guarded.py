"""A feature-space detector with a far-OOD pixel guard: an image is OOD when either says so.

The two scores are put on one scale as p-values among in-distribution reference images and
combined by a weighted Bonferroni rule, min(p_primary / (1 - share), p_guard / share): the guard
spends `guard_share` of the false-alarm budget, so the primary detector's near-OOD ranking is kept
for everything the guard finds ordinary. Calibration (ml.ood.base) then sets the served threshold
on the combined score, so the in-distribution reject rate stays the target.
"""

from __future__ import annotations

import numpy as np

from ml.ood.base import OODDetector, OODFeatures, tail_p_values

# A quarter of the false-alarm budget goes to the guard: enough for images whose statistics no
# training image has (their guard p-value is the smallest possible), little taken from the primary.
GUARD_SHARE = 0.25


class GuardedDetector(OODDetector):
    """parts_ = [primary, guard], both fitted; built with `combine`, never by `fit`."""

    params = ("name", "guard_share")

    def __init__(self, name: str = "guarded", guard_share: float = GUARD_SHARE):
        if not 0.0 < guard_share < 1.0:
            raise ValueError(f"guard_share must be in (0, 1), got {guard_share}")
        self.name, self.guard_share = name, guard_share

    def combine(self, primary: OODDetector, guard: OODDetector, reference: OODFeatures) -> GuardedDetector:
        """Use two fitted detectors; `reference` (in-distribution images the parts were not fitted on)
        turns each raw score into a p-value."""
        self.parts_ = [primary, guard]
        self.primary_reference_ = np.sort(primary.score_samples(reference).astype(np.float64))
        self.guard_reference_ = np.sort(guard.score_samples(reference).astype(np.float64))
        return self

    def fit(self, features: OODFeatures, labels: np.ndarray) -> GuardedDetector:
        raise TypeError("GuardedDetector wraps fitted detectors: use combine(primary, guard, reference)")

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        primary, guard = self.parts_
        p_primary = tail_p_values(self.primary_reference_, primary.score_samples(features).astype(np.float64))
        p_guard = tail_p_values(self.guard_reference_, guard.score_samples(features).astype(np.float64))
        return -np.minimum(p_primary / (1.0 - self.guard_share), p_guard / self.guard_share)
