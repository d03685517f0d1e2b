"""Evaluation on arrays: accuracy and recall per class, the classification report, the figures people look at,
and the gate's comparison of two models on images neither trained on (`GateSets`, `score_sets`).

No MLflow and no snapshot reading here: `ml.stages.evaluate` and `ml.stages.gate` read and log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ml import plots
from ml.inference import Predictor

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


def classification_reports(y: np.ndarray, predicted: np.ndarray, classes: list[str]) -> tuple[str, dict]:
    """Per-class precision/recall/F1 as text and as a dict."""
    from sklearn.metrics import classification_report

    kwargs = dict(labels=list(range(len(classes))), target_names=classes, zero_division=0)
    return (classification_report(y, predicted, digits=4, **kwargs),
            classification_report(y, predicted, output_dict=True, **kwargs))


def embedding_figures(model: keras.Model, predictor: Predictor, val: tuple[np.ndarray, np.ndarray, np.ndarray],
                      classes: list[str], manifest: dict) -> dict[str, Any]:
    """{artifact path: figure}: t-SNE of val embeddings (user images marked), first-layer filters/activations."""
    x, y, source = val
    pick = np.random.default_rng(0).permutation(len(y))[:TSNE_MAX]
    kinds = np.array([s.get("kind", "") for s in manifest.get("sources", [])] or [""])
    user = np.isin(kinds[np.clip(source[pick], 0, len(kinds) - 1)], USER_SOURCE_KINDS)
    emb = predictor.predict_batched(x[pick]).embeddings
    figures = {"plots/tsne_embeddings.png": plots.tsne(emb, y[pick], classes, user)}
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    images = x[pick[:4]]
    maps = keras.Model(model.input, first.output)(images.astype("float32"), training=False)
    figures["plots/first_layer_filters.png"] = plots.filters_and_activations(
        first.get_weights()[0], images, keras.ops.convert_to_numpy(maps))
    return figures


@dataclass
class GateSets:
    """Labelled images neither the champion nor the candidate trained on, and what was left out."""

    clean: tuple[np.ndarray, np.ndarray]  # the candidate snapshot's test split
    corrections: tuple[np.ndarray, np.ndarray]  # its held-out user corrections
    excluded: dict[str, int]  # images of each set dropped because the champion trained on them
    classes: list[str]


def unseen(ids: np.ndarray, x: np.ndarray, seen: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Mask of images not in `seen` (identities, pixel hashes): by identity, and by pixels for pre-stable snapshots."""
    from ml.data.identity import content_ids

    if seen is None or not len(ids):
        return np.ones(len(ids), bool)
    return ~(np.isin(ids, seen[0]) | np.isin(content_ids(x), seen[1]))


def score_sets(model: keras.Model, sets: GateSets) -> dict[str, Any]:
    """Clean accuracy and recall per class, and corrections accuracy (None when there are none)."""
    predictor = Predictor(model)
    clean = score(predictor, *sets.clean, sets.classes)
    x, y = sets.corrections
    corrections = float((predictor.predict_batched(x).probs.argmax(1) == y).mean()) if len(y) else None
    return {"clean_accuracy": clean["accuracy"], "recall": clean["recall"], "clean_n": len(sets.clean[1]),
            "corrections_accuracy": corrections, "corrections_n": len(y)}
