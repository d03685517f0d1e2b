"""Stage `reference`: compute a run's reference pack on its validation split and log it under `bundle/reference/`.

Also the download side drift monitoring uses: `load_for_version` fetches a registered
version's pack once and caches it under settings.home.
"""

from __future__ import annotations

import logging
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ml import imaging
from ml.config import Settings
from ml.monitoring.reference import ARTIFACT_DIR, ReferenceMissing, ReferencePack, expected_ood_rate
from ml.stages import snapshots, tracking

log = logging.getLogger(__name__)


def ood_summary(settings: Settings, run_id: str) -> dict | None:
    """The run's bundle/ood/summary.json, or None when OOD fitting has not logged one."""
    try:
        return tracking.load_dict(settings, run_id, "bundle/ood/summary.json")
    except Exception as exc:  # noqa: BLE001  (no OOD bundle yet: the pack falls back to 1 - target TPR)
        log.info("no bundle/ood/summary.json in run %s (%s); using 1 - ood_target_tpr", run_id, type(exc).__name__)
        return None


def reference(settings: Settings, run_id: str) -> dict:
    """Compute the run's reference pack on its validation split and log it under bundle/reference/."""
    client = tracking.client(settings)
    version = tracking.dataset_version_of_run(settings, run_id)
    x_val, y_val = snapshots.split(settings, version, "val")
    x_train, y_train = snapshots.split(settings, version, "train")
    classes = list(snapshots.manifest(settings, version).get("classes") or settings.classes)
    class_hists = imaging.class_mean_histograms(x_train, y_train, len(classes))
    with tempfile.TemporaryDirectory(prefix="visionloop-forward-") as workdir:  # the forward pass serving runs
        predictor, _ = tracking.served_forward(settings, run_id, workdir)
        outputs = predictor.predict_batched(x_val)
    rate = expected_ood_rate(ood_summary(settings, run_id), settings.ood_target_tpr)
    pack = ReferencePack.from_outputs(x_val, y_val, outputs.probs, outputs.embeddings, class_hists, classes, rate,
                                      seed=settings.seed)
    pack.meta.update(run_id=run_id, dataset_version=version,
                     created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(pack.save(tmp)), ARTIFACT_DIR)
    return {"artifact_path": ARTIFACT_DIR, "n": len(pack.confidence), "pca_dims": pack.pca_components.shape[0],
            "expected_ood_rate": pack.expected_ood_rate, "val_accuracy": pack.meta["val_accuracy"],
            "mean_confidence": float(pack.confidence.mean())}


def download_pack(settings: Settings, model_version: str, cache: Path) -> None:
    """Fetch a version's pack into the cache; ReferenceMissing when the version or artifact does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        run_id = tracking.run_id_of_version(settings, model_version)
    except MlflowException as exc:
        if tracking.is_missing(exc):
            raise ReferenceMissing(f"{settings.model_name} has no version {model_version!r}") from None
        raise
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        try:
            path = tracking.download(settings, run_id, ARTIFACT_DIR, tmp)
        except MlflowException as exc:
            if not tracking.is_missing(exc):
                raise
            path = Path(tmp)
        if not (path / "reference.json").is_file():
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
        download_pack(settings, model_version, cache)
    return ReferencePack.load(cache)
