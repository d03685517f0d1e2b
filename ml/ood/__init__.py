"""Out-of-distribution detection: is an image one of our classes at all?"""

from ml.ood.base import OODDetector, OODFeatures, OODResult
from ml.ood.catalog import make_detectors, pick_default
from ml.ood.detectors import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    MSPDetector,
    ViMDetector,
)
from ml.ood.exposure import OtherClassDetector
from ml.ood.fused import FusedDetector
from ml.ood.persist import load_default_detector, load_detector, load_summary, save_detectors

__all__ = [
    "EnergyDetector", "FusedDetector", "KNNDetector", "MSPDetector", "MahalanobisDetector", "OODDetector",
    "OODFeatures", "OODResult", "OtherClassDetector", "ViMDetector", "load_default_detector", "load_detector",
    "load_summary", "make_detectors", "pick_default", "save_detectors",
]
