"""Stage `fit_ood`: fit and evaluate every OOD detector for a training run; log `bundle/ood/` and the evaluation."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ml.config import Settings
from ml.ood import fitting, pipeline
from ml.ood.persist import save_detectors
from ml.stages import snapshots, tracking


def train_features(settings: Settings, version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y of the train split without rotation copies (they would make rotated OOD images look familiar),
    and the kept positions (for the dataset ids of the similarity index)."""
    x, y, synthetic = snapshots.split(settings, version, "train", ("x", "y", "synthetic"))
    keep = np.flatnonzero(~synthetic.astype(bool))
    return x[keep], y[keep], keep


def build_data(settings: Settings, version: str, predictor) -> fitting.OODData:
    """Features of train, val, test and the outlier groups (the snapshot's, else VISIONLOOP_OUTLIER_SOURCES)."""
    x, y, _ = train_features(settings, version)
    (x_val,) = snapshots.split(settings, version, "val", ("x",))
    (x_test,) = snapshots.split(settings, version, "test", ("x",))
    return pipeline.ood_data(settings, predictor, (x, y), x_val, x_test, snapshots.outliers(settings, version))


def fit_ood(settings: Settings, run_id: str) -> dict:
    """Fit the detectors on the run's model and snapshot; log metrics, tags, `bundle/ood/` and `ood_evaluation/`."""
    client = tracking.client(settings)
    version = tracking.dataset_version_of_run(settings, run_id)
    with tempfile.TemporaryDirectory(prefix="visionloop-forward-") as workdir:
        predictor, forward = tracking.served_forward(settings, run_id, workdir)
        data = build_data(settings, version, predictor)
    client.set_tag(run_id, "ood_features_forward", forward)
    detectors, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
    metrics, tags = pipeline.metrics_and_tags(summary)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory(prefix="visionloop-ood-") as tmp:
        save_detectors(Path(tmp) / "ood", detectors, summary)
        client.log_artifacts(run_id, str(Path(tmp) / "ood"), "bundle/ood")
        report = pipeline.write_report(Path(tmp) / "report", detectors, summary, data)
        client.log_artifacts(run_id, str(report), "ood_evaluation")
    return pipeline.result(summary)
