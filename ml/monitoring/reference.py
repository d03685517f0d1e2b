"""The reference pack: what a model version's outputs look like on held-out images.

Computed at training time on the validation split (disjoint from training),
logged under `bundle/reference/` of the run, and compared against every
window of served requests. Serving reads `class_histograms` from it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml import imaging

log = logging.getLogger(__name__)
ARTIFACT_DIR = "bundle/reference"
ARRAYS = ("confidence", "pixel_entropy", "hist_distance", "predicted", "probs", "embeddings_pca",
          "class_histograms", "class_error_rate")
PCA_DIMS = 32


@dataclass
class ReferencePack:
    """Reference arrays (one row per validation image) plus the PCA that maps embeddings to `embeddings_pca`."""

    confidence: np.ndarray
    pixel_entropy: np.ndarray
    hist_distance: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray
    embeddings_pca: np.ndarray
    class_histograms: np.ndarray  # (C, HIST_BINS), mean luma histogram of TRAIN images per class
    class_error_rate: np.ndarray  # (C,), 1 - precision per predicted class on validation
    pca_components: np.ndarray
    pca_mean: np.ndarray
    classes: list[str]
    expected_ood_rate: float
    meta: dict = field(default_factory=dict)

    def pca_transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Project embeddings onto the reference PCA, (N, D) -> (N, k)."""
        return (np.asarray(embeddings, dtype=np.float32) - self.pca_mean) @ self.pca_components.T

    @classmethod
    def from_outputs(cls, x_val: np.ndarray, y_val: np.ndarray, probs: np.ndarray, embeddings: np.ndarray,
                     class_histograms: np.ndarray, classes: list[str], expected_ood_rate: float,
                     n_components: int = PCA_DIMS, seed: int = 0) -> ReferencePack:
        """Build a pack from the model's outputs on validation images; pure numpy/sklearn."""
        from sklearn.decomposition import PCA

        probs = np.asarray(probs, dtype=np.float32)
        predicted = probs.argmax(axis=1)
        k = int(min(n_components, embeddings.shape[1], len(embeddings) - 1))
        pca = PCA(n_components=k, random_state=seed).fit(np.asarray(embeddings, dtype=np.float32))
        n_classes = len(classes)
        errors = np.zeros(n_classes)
        for c in range(n_classes):
            chosen = predicted == c
            errors[c] = float((y_val[chosen] != c).mean()) if chosen.any() else 0.0
        pack = cls(
            confidence=probs.max(axis=1), pixel_entropy=imaging.pixel_entropy(x_val).astype(np.float32),
            hist_distance=imaging.histogram_distance(imaging.intensity_histograms(x_val), class_histograms,
                                                     predicted).astype(np.float32),
            predicted=predicted.astype(np.int64), probs=probs, embeddings_pca=np.empty((0, k), np.float32),
            class_histograms=np.asarray(class_histograms, dtype=np.float64), class_error_rate=errors,
            pca_components=pca.components_.astype(np.float32), pca_mean=pca.mean_.astype(np.float32),
            classes=list(classes), expected_ood_rate=float(expected_ood_rate),
            meta={"n": int(len(probs)), "val_accuracy": float((predicted == y_val).mean()),
                  "explained_variance": float(pca.explained_variance_ratio_.sum())},
        )
        pack.embeddings_pca = pack.pca_transform(embeddings)
        return pack

    def save(self, directory: str | Path) -> Path:
        """Write `reference.npz` and `reference.json` into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "reference.npz", **{name: getattr(self, name) for name in ARRAYS})
        info = {"expected_ood_rate": self.expected_ood_rate, "classes": self.classes,
                "pca_components": self.pca_components.tolist(), "pca_mean": self.pca_mean.tolist(), **self.meta}
        (directory / "reference.json").write_text(json.dumps(info))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ReferencePack:
        directory = Path(directory)
        info = json.loads((directory / "reference.json").read_text())
        with np.load(directory / "reference.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAYS}
        meta = {k: v for k, v in info.items()
                if k not in ("expected_ood_rate", "classes", "pca_components", "pca_mean")}
        return cls(**arrays, pca_components=np.asarray(info["pca_components"], dtype=np.float32),
                   pca_mean=np.asarray(info["pca_mean"], dtype=np.float32), classes=info["classes"],
                   expected_ood_rate=float(info["expected_ood_rate"]), meta=meta)


def expected_ood_rate(summary: dict | None, target_tpr: float) -> float:
    """In-distribution rejection rate of a run's OOD gate (its bundle/ood/summary.json), else 1 - target TPR."""
    if summary and "id_reject_rate" in summary:
        return float(summary["id_reject_rate"])
    if summary and summary.get("default_detector") in summary.get("detectors", {}):
        return float(summary["detectors"][summary["default_detector"]]["id_reject_rate"])
    return 1.0 - target_tpr


class ReferenceMissing(LookupError):
    """A model version that has no reference pack (not registered, or trained without one)."""
