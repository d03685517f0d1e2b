"""The detectors VisionLoop evaluates side by side, and which one wins a tie."""

from __future__ import annotations

from ml.ood.base import OODDetector
from ml.ood.detectors import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    MSPDetector,
    ViMDetector,
)
from ml.ood.forests import IsolationForestDetector, OtherClassDetector

# Simplest / fastest first: on an AUROC tie the earlier one becomes the default.
SIMPLICITY = ("msp", "energy", "mahalanobis", "vim", "knn", "isolation_forest", "iforest_global",
              "iforest_all", "other_binary", "other_class", "iforest_pixels")
# AUROC differences below this are noise at a few thousand evaluation images.
AUROC_TIE = 0.005


def make_detectors(seed: int = 0, include_other: bool = True) -> dict[str, OODDetector]:
    """Fresh, unfitted detectors by name: the reference design, its variants and literature methods."""
    detectors: dict[str, OODDetector] = {
        "isolation_forest": IsolationForestDetector("isolation_forest", seed=seed),
        "iforest_global": IsolationForestDetector("iforest_global", per_class=False, seed=seed),
        "iforest_pixels": IsolationForestDetector("iforest_pixels", inputs="pixels", seed=seed),
        "iforest_all": IsolationForestDetector("iforest_all", correct_only=False, seed=seed),
        "knn": KNNDetector(seed=seed),
        "mahalanobis": MahalanobisDetector(),
        "vim": ViMDetector(seed=seed),
        "energy": EnergyDetector(),
        "msp": MSPDetector(),
    }
    if include_other:
        detectors["other_class"] = OtherClassDetector(seed=seed)
        detectors["other_binary"] = OtherClassDetector("other_binary", multiclass=False, seed=seed)
    return detectors


def pick_default(auroc: dict[str, float]) -> str:
    """Best AUROC; within AUROC_TIE of the best, the simplest detector wins."""
    if not auroc:
        raise ValueError("no detector was evaluated")
    best = max(auroc.values())
    contenders = [name for name, value in auroc.items() if value >= best - AUROC_TIE]
    rank = {name: i for i, name in enumerate(SIMPLICITY)}
    return min(contenders, key=lambda name: (rank.get(name, len(rank)), -auroc[name]))
