"""The reference pack: what a model version's outputs look like on held-out images.

Computed at training time on the validation split (disjoint from training),
logged under `bundle/reference/` of the run, and compared against every
window of served requests. Serving reads `class_histograms` from it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ml import imaging, layout
from ml.config import Settings

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


def _model_outputs(run_id: str, x: np.ndarray):
    """The run's model on x: an object with .probs, .logits and .embeddings."""
    from ml.inference import Predictor
    from ml.model import load_run_model

    return Predictor(load_run_model(run_id)).predict_batched(x)


def expected_ood_rate(client, run_id: str, settings: Settings) -> float:
    """In-distribution rejection rate of the run's OOD gate, or 1 - target TPR when it logged none."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "bundle/ood/summary.json", tmp)
            summary = json.loads(Path(path).read_text())
        if "id_reject_rate" in summary:
            return float(summary["id_reject_rate"])
        return float(summary["detectors"][summary["default_detector"]]["id_reject_rate"])
    except Exception as exc:  # no OOD bundle yet, or an older summary without the field
        log.info("no id_reject_rate in bundle/ood/summary.json of run %s (%s); using 1 - ood_target_tpr",
                 run_id, type(exc).__name__)
        return 1.0 - settings.ood_target_tpr


def compute_and_log(settings: Settings, run_id: str) -> dict:
    """Compute the run's reference pack on its validation split and log it under bundle/reference/."""
    import mlflow

    from ml.storage import open_store

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # load_run_model resolves runs:/ through it
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_run(run_id).data.params["dataset_version"]
    store = open_store(settings)
    x_val = store.get_array(layout.dataset_array(version, "val", "x"))
    y_val = store.get_array(layout.dataset_array(version, "val", "y"))
    x_train = store.get_array(layout.dataset_array(version, "train", "x"))
    y_train = store.get_array(layout.dataset_array(version, "train", "y"))
    class_hists = imaging.class_mean_histograms(x_train, y_train, len(settings.classes))
    outputs = _model_outputs(run_id, x_val)
    pack = ReferencePack.from_outputs(x_val, y_val, outputs.probs, outputs.embeddings, class_hists,
                                      list(settings.classes), expected_ood_rate(client, run_id, settings),
                                      seed=settings.seed)
    pack.meta.update(run_id=run_id, dataset_version=version,
                     created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(pack.save(tmp)), ARTIFACT_DIR)
    return {"artifact_path": ARTIFACT_DIR, "n": len(pack.confidence), "pca_dims": pack.pca_components.shape[0],
            "expected_ood_rate": pack.expected_ood_rate, "val_accuracy": pack.meta["val_accuracy"],
            "mean_confidence": float(pack.confidence.mean())}


class ReferenceMissing(LookupError):
    """A model version that has no reference pack (not registered, or trained without one)."""


# MLflow error codes that mean "no such version or artifact", as opposed to a server that is down.
_MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "ENDPOINT_NOT_FOUND")


def _download_pack(settings: Settings, model_version: str, cache: Path) -> None:
    """Fetch a version's pack into the cache; ReferenceMissing when the version or artifact does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    try:
        run_id = client.get_model_version(settings.model_name, str(model_version)).run_id
    except MlflowException as exc:
        if exc.error_code in _MISSING_CODES:
            raise ReferenceMissing(f"{settings.model_name} has no version {model_version!r}") from None
        raise
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{ARTIFACT_DIR}",
                                                       dst_path=tmp, tracking_uri=settings.mlflow_tracking_uri)
        except MlflowException as exc:
            if exc.error_code not in _MISSING_CODES:
                raise
            path = tmp
        if not (Path(path) / "reference.json").is_file():
            raise ReferenceMissing(f"version {model_version} (run {run_id}) has no {ARTIFACT_DIR}/")
        ReferencePack.load(path).save(cache)  # re-save: a half-download never lands in the cache


def load_for_version(settings: Settings, model_version: str) -> ReferencePack:
    """The reference pack of a registered version, downloaded once and cached under settings.home.

    Raises ReferenceMissing when the version is unknown or has no pack; other
    errors (MLflow down) propagate, so a scheduler retries instead of skipping.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", str(model_version)):
        raise ReferenceMissing(f"{model_version!r} is not a registry version")  # also keeps it a safe path
    cache = Path(settings.home) / "cache" / "reference" / str(model_version)
    if not (cache / "reference.json").is_file():
        _download_pack(settings, model_version, cache)
    return ReferencePack.load(cache)
