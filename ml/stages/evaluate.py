"""Stage `evaluate`: score a training run on its snapshot's test split; log metrics, report and figures into it."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from ml import plots
from ml.config import Settings
from ml.evaluate import classification_reports, embedding_figures, score
from ml.inference import Predictor
from ml.stages import snapshots, tracking

log = logging.getLogger(__name__)


def evaluate(settings: Settings, run_id: str) -> dict[str, Any]:
    """Test metrics (accuracy, recall per class) and evaluation artifacts, logged into the run."""
    client = tracking.client(settings)
    version = tracking.dataset_version_of_run(settings, run_id)
    manifest = snapshots.manifest(settings, version)
    classes = list(manifest.get("classes") or settings.classes)
    model = tracking.load_run_model(settings, run_id)
    predictor = Predictor(model)
    x, y = snapshots.split(settings, version, "test")
    result = score(predictor, x, y, classes)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("test_accuracy", result["accuracy"])
        mlflow.log_metrics({f"test_recall_{c}": r for c, r in result["recall"].items()})
        text, table = classification_reports(y, result["predicted"], classes)
        mlflow.log_text(text, "reports/classification_report.txt")
        mlflow.log_dict(table, "reports/classification_report.json")
        mlflow.log_figure(plots.confusion_matrix(result["confusion"], classes), "plots/confusion_matrix.png")
        mlflow.log_figure(plots.training_curves(epoch_history(client, run_id)), "plots/training_curves.png")
        val = snapshots.split(settings, version, "val", ("x", "y", "source"))
        for path, figure in embedding_figures(model, predictor, val, classes, manifest).items():
            mlflow.log_figure(figure, path)
    import matplotlib.pyplot as plt

    plt.close("all")
    log.info("run %s: test_accuracy %.4f", run_id, result["accuracy"])
    return {"test_accuracy": result["accuracy"], "test_recall": result["recall"]}


def epoch_history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    """Per-epoch curves logged by training (epoch_<name>), ordered by epoch."""
    history = {}
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        points = sorted(client.get_metric_history(run_id, f"epoch_{name}"), key=lambda m: m.step)
        history[name] = [m.value for m in points]
    return history
