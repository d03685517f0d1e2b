"""Evaluate a training run on its snapshot's test split; log metrics and the figures people look at.

Also the gate's held-out sets (`gate_sets`): the candidate snapshot's test and
corrections splits minus every image the champion was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from ml import layout, plots
from ml.config import Settings
from ml.inference import Predictor
from ml.model import load_run_model
from ml.storage import open_store
from ml.train import read_split

log = logging.getLogger(__name__)
USER_SOURCE_KINDS = ("feedback", "folder")
TSNE_MAX = 2000


def score(predictor: Predictor, x: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class recall and the confusion counts of a predictor on labelled images."""
    from sklearn.metrics import confusion_matrix

    predicted = predictor.predict_batched(x).probs.argmax(1)
    counts = confusion_matrix(y, predicted, labels=range(len(classes)))
    recall = counts.diagonal() / np.maximum(counts.sum(axis=1), 1)
    return {"accuracy": float((predicted == y).mean()), "predicted": predicted, "confusion": counts,
            "recall": {c: float(r) for c, r in zip(classes, recall, strict=False)}}


@dataclass
class GateSets:
    """Labelled images neither the champion nor the candidate trained on, and what was left out."""

    clean: tuple[np.ndarray, np.ndarray]  # the candidate snapshot's test split
    corrections: tuple[np.ndarray, np.ndarray]  # its held-out user corrections
    excluded: dict[str, int]  # images of each set dropped because the champion trained on them
    classes: list[str]


def training_identities(settings: Settings, dataset_version: str) -> tuple[np.ndarray, np.ndarray]:
    """Identities and pixel hashes of a snapshot's train split (a pre-stable snapshot has only pixels)."""
    from ml.data import snapshot
    from ml.data.identity import content_ids

    train = snapshot.load_split(open_store(settings), dataset_version, "train")
    return np.unique(train.ids), np.unique(content_ids(train.x))


def gate_sets(settings: Settings, dataset_version: str, champion_dataset: str | None) -> GateSets:
    """The candidate's test and corrections splits minus anything in the champion's training split."""
    from ml.data import snapshot
    from ml.data.identity import content_ids

    store = open_store(settings)
    manifest = snapshot.load_manifest(store, dataset_version)
    seen = training_identities(settings, champion_dataset) if champion_dataset else None
    parts, excluded = {}, {}
    for name, split in (("clean", "test"), ("corrections", "corrections")):
        arrays = snapshot.load_split(store, dataset_version, split)
        keep = np.ones(len(arrays), bool)
        if seen is not None and len(arrays):  # by identity, and by pixels for pre-stable snapshots
            keep = ~(np.isin(arrays.ids, seen[0]) | np.isin(content_ids(arrays.x), seen[1]))
        parts[name], excluded[name] = (arrays.x[keep], arrays.y[keep]), int((~keep).sum())
    return GateSets(parts["clean"], parts["corrections"], excluded,
                    list(manifest.get("classes") or settings.classes))


def score_sets(model: keras.Model, sets: GateSets) -> dict[str, Any]:
    """Clean accuracy and recall per class, and corrections accuracy (None when there are none)."""
    predictor = Predictor(model)
    clean = score(predictor, *sets.clean, sets.classes)
    x, y = sets.corrections
    corrections = float((predictor.predict_batched(x).probs.argmax(1) == y).mean()) if len(y) else None
    return {"clean_accuracy": clean["accuracy"], "recall": clean["recall"], "clean_n": len(sets.clean[1]),
            "corrections_accuracy": corrections, "corrections_n": len(y)}


def evaluate_run(settings: Settings, run_id: str) -> dict[str, Any]:
    """Test metrics (accuracy, recall per class) and evaluation artifacts, logged into the run."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_run(run_id).data.params["dataset_version"]
    manifest = open_store(settings).get_json(layout.dataset_manifest(version))
    classes = list(manifest.get("classes") or settings.classes)
    model = load_run_model(run_id)
    predictor = Predictor(model)
    x, y = read_split(settings, version, "test")
    result = score(predictor, x, y, classes)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("test_accuracy", result["accuracy"])
        mlflow.log_metrics({f"test_recall_{c}": r for c, r in result["recall"].items()})
        log_report(y, result["predicted"], classes)
        mlflow.log_figure(plots.confusion_matrix(result["confusion"], classes), "plots/confusion_matrix.png")
        mlflow.log_figure(plots.training_curves(epoch_history(client, run_id)), "plots/training_curves.png")
        log_embedding_figures(settings, version, model, predictor, classes, manifest)
    log.info("run %s: test_accuracy %.4f", run_id, result["accuracy"])
    return {"test_accuracy": result["accuracy"], "test_recall": result["recall"]}


def log_report(y: np.ndarray, predicted: np.ndarray, classes: list[str]) -> None:
    """Per-class precision/recall/F1 as text and JSON."""
    from sklearn.metrics import classification_report

    kwargs = dict(labels=list(range(len(classes))), target_names=classes, zero_division=0)
    mlflow.log_text(classification_report(y, predicted, digits=4, **kwargs), "reports/classification_report.txt")
    mlflow.log_dict(classification_report(y, predicted, output_dict=True, **kwargs),
                    "reports/classification_report.json")


def epoch_history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    """Per-epoch curves logged by training (epoch_<name>), ordered by epoch."""
    history = {}
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        points = sorted(client.get_metric_history(run_id, f"epoch_{name}"), key=lambda m: m.step)
        history[name] = [m.value for m in points]
    return history


def log_embedding_figures(settings: Settings, version: str, model: keras.Model, predictor: Predictor,
                          classes: list[str], manifest: dict) -> None:
    """t-SNE of validation embeddings (user images marked) and first-layer filters/activations."""
    import matplotlib.pyplot as plt

    x, y, source = read_split(settings, version, "val", names=("x", "y", "source"))
    pick = np.random.default_rng(0).permutation(len(y))[:TSNE_MAX]
    kinds = np.array([s.get("kind", "") for s in manifest.get("sources", [])] or [""])
    user = np.isin(kinds[np.clip(source[pick], 0, len(kinds) - 1)], USER_SOURCE_KINDS)
    emb = predictor.predict_batched(x[pick]).embeddings
    mlflow.log_figure(plots.tsne(emb, y[pick], classes, user), "plots/tsne_embeddings.png")
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    images = x[pick[:4]]
    maps = keras.Model(model.input, first.output)(images.astype("float32"), training=False)
    figure = plots.filters_and_activations(first.get_weights()[0], images, keras.ops.convert_to_numpy(maps))
    mlflow.log_figure(figure, "plots/first_layer_filters.png")
    plt.close("all")
