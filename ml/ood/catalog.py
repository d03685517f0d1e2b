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
from ml.ood.exposure import OtherClassDetector
from ml.ood.fused import FusedDetector
from ml.ood.pixel_stats import PixelStatsDetector

# Simplest / fastest first: on an AUROC tie the earlier one becomes the default.
SIMPLICITY = ("msp", "energy", "mahalanobis", "vim", "knn", "fused", "fused3", "other_binary", "other_class",
              "pixel_stats")
# AUROC differences below this are noise at a few thousand evaluation images.
AUROC_TIE = 0.005
# Without real outlier images there is nothing honest to choose on, so a fixed choice is served:
# OpenOOD's feature-space KNN fused with the head's energy keeps both kinds of signal (ml.ood.fused).
FALLBACK_DEFAULT = "fused"


def make_detectors(seed: int = 0, include_other: bool = True, include_pixels: bool = True) -> dict[str, OODDetector]:
    """Fresh, unfitted detectors by name: literature methods, a fused score, outlier-exposure heads and
    the pixel-statistics guard (evaluated alone too, so its own numbers are in the table)."""
    detectors: dict[str, OODDetector] = {
        "msp": MSPDetector(),
        "energy": EnergyDetector(),
        "mahalanobis": MahalanobisDetector(),
        "vim": ViMDetector(seed=seed),
        "knn": KNNDetector(seed=seed),
        "fused": FusedDetector("fused", ("knn", "energy"), seed=seed),
        "fused3": FusedDetector("fused3", ("knn", "mahalanobis", "energy"), seed=seed),
    }
    if include_other:
        detectors["other_class"] = OtherClassDetector(seed=seed)
        detectors["other_binary"] = OtherClassDetector("other_binary", multiclass=False, seed=seed)
    if include_pixels:
        detectors["pixel_stats"] = PixelStatsDetector(seed=seed)
    return detectors


def pick_default(auroc: dict[str, float]) -> str:
    """Best AUROC; within AUROC_TIE of the best, the simplest detector wins."""
    if not auroc:
        raise ValueError("no detector was evaluated")
    best = max(auroc.values())
    contenders = [name for name, value in auroc.items() if value >= best - AUROC_TIE]
    rank = {name: i for i, name in enumerate(SIMPLICITY)}
    return min(contenders, key=lambda name: (rank.get(name, len(rank)), -auroc[name]))
