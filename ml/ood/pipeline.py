"""`fit_and_log`: the training_pipeline task that fits OOD detectors, the similarity index and ships the
ImageNet mapping, all logged to the training run under `bundle/` (see docs/architecture.md)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ml import layout
from ml.config import Settings
from ml.data.decode import default_workers
from ml.ood import fitting, outlier_data
from ml.ood.base import OODFeatures
from ml.ood.evaluate import markdown_table, save_roc_plot
from ml.ood.persist import save_detectors
from ml.storage import ObjectNotFound, ObjectStore, open_store

log = logging.getLogger(__name__)
N_SYNTHETIC = 500  # noise / scrambled images: a far-OOD sanity set that needs no download


def _features(predictor, x: np.ndarray) -> OODFeatures:
    return OODFeatures.from_prediction(predictor.predict_batched(x))  # no detector reads pixels


def load_split(store: ObjectStore, version: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and the synthetic-copy mask of one snapshot split (an all-false mask when absent)."""
    x = store.get_array(layout.dataset_array(version, split, "x"))
    y = store.get_array(layout.dataset_array(version, split, "y"))
    key = layout.dataset_array(version, split, "synthetic")
    synthetic = store.get_array(key).astype(bool) if store.exists(key) else np.zeros(len(y), bool)
    return x, y, synthetic


def synthetic_ood(x_val: np.ndarray, seed: int) -> np.ndarray:
    """Uniform noise plus val images with their pixels shuffled (same colours, no objects)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(N_SYNTHETIC // 2, 32, 32, 3), dtype=np.uint8)
    picks = x_val[rng.choice(len(x_val), N_SYNTHETIC - len(noise), replace=len(x_val) < N_SYNTHETIC)]
    flat = picks.reshape(len(picks), -1, 3).copy()
    for row in flat:
        rng.shuffle(row)
    return np.concatenate([noise, flat.reshape(picks.shape)])


def outlier_features(settings: Settings, predictor, sources: list[outlier_data.OutlierImages] | None = None,
                     fit_only: tuple | list[outlier_data.OutlierImages] = ()) -> dict:
    """OODData's outlier fields from VISIONLOOP_OUTLIER_SOURCES (or already loaded `sources`, e.g. from
    a dataset snapshot), split by class (ml.ood.outlier_data); `fit_only` (users' "none of these")
    always joins the fit group, so the held-out numbers the gate compares never depend on them."""
    configured = bool(sources) if sources is not None else bool(outlier_data.configured_sources(settings))
    if sources is None:
        sources = outlier_data.load_sources(settings, workers=default_workers())
    groups = outlier_data.split_by_class(sources)
    groups["fit"] = [*groups["fit"], *fit_only]
    for group, parts in groups.items():
        log.info("OOD: %s group: %d images of %d classes from %s", group, sum(map(len, parts)),
                 len({c for p in parts for c in p.classes}), ", ".join(p.name for p in parts) or "no source")

    def features(parts: list) -> OODFeatures | None:
        return _features(predictor, np.concatenate([p.images for p in parts])) if parts else None

    evaluate = groups["evaluate"]
    sets = {f"heldout_{p.name}": _features(predictor, p.images) for p in evaluate} if len(evaluate) > 1 else {}
    if evaluate:
        sets = {fitting.PRIMARY_SET: features(evaluate), **sets}  # all held-out classes together first
    return {"ood_sets": sets, "outlier_fit": features(groups["fit"]),
            "outlier_calibrate": features(groups["calibrate"]),
            "real_outliers_configured": configured,
            "heldout_classes": sorted({str(c) for p in evaluate for c in p.classes})}


def snapshot_outliers(store: ObjectStore, version: str) -> dict | None:
    """The outliers versioned with the snapshot (ml.data.outliers), or None when it has none."""
    from ml.data import outliers

    try:
        manifest = store.get_json(layout.dataset_manifest(version))
    except ObjectNotFound:  # arrays written without a manifest (test fixtures)
        return None
    return outliers.read(store, version, manifest)


def build_data(settings: Settings, store: ObjectStore, version: str, predictor) -> tuple[fitting.OODData, list[str]]:
    """Features of train (rotation copies excluded), val, test and the outlier groups; plus the train ids."""
    x, y, synthetic = load_split(store, version, "train")
    keep = np.flatnonzero(~synthetic)  # rotated copies would make rotated OOD images look familiar
    train = _features(predictor, x[keep])
    ids = [layout.image_id(version, "train", int(i)) for i in keep]
    x_val, _, _ = load_split(store, version, "val")
    x_test, _, _ = load_split(store, version, "test")
    stored = snapshot_outliers(store, version)
    if stored is None:  # a snapshot without outliers (older, or none configured): from settings
        outliers = outlier_features(settings, predictor)
    else:
        outliers = outlier_features(settings, predictor, stored["configured"], stored["user"])
    data = fitting.OODData(train, y[keep], _features(predictor, x_val), _features(predictor, x_test),
                           sanity_sets={"synthetic_noise": _features(predictor, synthetic_ood(x_val, settings.seed))},
                           **outliers)
    return data, ids


def write_bundle(out: Path, detectors: dict, summary: dict, data: fitting.OODData, ids: list[str]) -> None:
    """bundle/ood/, bundle/similarity/index.npz and bundle/imagenet/mapping.txt under out."""
    from ml.imagenet import CLASSES_PATH, MAPPING_PATH
    from ml.similarity import SimilarityIndex

    save_detectors(out / "ood", detectors, summary)
    SimilarityIndex().fit(data.train.embeddings, data.train_labels, ids).save(out / "similarity" / "index.npz")
    (out / "imagenet").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MAPPING_PATH, out / "imagenet" / "mapping.txt")
    shutil.copyfile(CLASSES_PATH, out / "imagenet" / CLASSES_PATH.name)  # the 1,000-class order it refers to


def log_metrics(client, run_id: str, summary: dict) -> None:
    """Per detector and set AUROC / FPR@95 / catch rate, the default's held-out numbers, and tags."""
    primary, default = summary["primary_ood_set"], summary["default_detector"]
    for name, row in summary["detectors"].items():
        client.log_metric(run_id, f"ood_id_reject_{name}", row["id_reject_rate"])
        for set_name, m in row["sets"].items():
            client.log_metric(run_id, f"ood_auroc_{name}_{set_name}", m["auroc"])
            client.log_metric(run_id, f"ood_fpr95_{name}_{set_name}", m["fpr_at_95_tpr"])
            client.log_metric(run_id, f"ood_catch_{name}_{set_name}", m["ood_reject_rate"])
        if row["auroc"] is not None:  # on the primary (held-out) set only: never a synthetic number
            client.log_metric(run_id, f"ood_auroc_{name}", row["auroc"])
            client.log_metric(run_id, f"ood_fpr95_{name}", row["fpr_at_95_tpr"])
    best = summary["detectors"][default]
    if primary != "none":  # the gate reads ood_heldout_auroc: only ever real held-out outlier classes
        for metric, key in (("auroc", "auroc"), ("fpr95", "fpr_at_95_tpr"), ("catch", "catch_rate")):
            client.log_metric(run_id, f"ood_heldout_{metric}", best[key])
        client.log_metric(run_id, "ood_default_auroc", best["auroc"])
    client.set_tag(run_id, "ood_default_detector", default)
    client.set_tag(run_id, "ood_primary_set", primary)
    client.set_tag(run_id, "ood_threshold_mode", best["threshold_mode"])
    client.set_tag(run_id, "ood_heldout_classes", ",".join(summary["heldout_classes"])[:4900] or "none")


def log_evaluation(client, run_id: str, detectors: dict, summary: dict, data: fitting.OODData, out: Path) -> None:
    """Metrics and tags, the table (markdown + JSON) and the ROC plot of the primary OOD set."""
    log_metrics(client, run_id, summary)
    primary = summary["primary_ood_set"]
    sets = {**data.ood_sets, **data.sanity_sets}
    shown = primary if primary in sets else next(iter(sets))
    report = out.parent / "report"
    report.mkdir()
    (report / "ood_table.md").write_text(markdown_table(summary["detectors"], summary["default_detector"]))
    (report / "ood_table.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    curves = {name: (det.score_samples(data.val), det.score_samples(sets[shown])) for name, det in detectors.items()}
    save_roc_plot(curves, report / "ood_roc.png", f"OOD: validation vs {shown}")
    client.log_artifacts(run_id, str(report), "ood_evaluation")


def fit_and_log(settings: Settings, run_id: str) -> dict:
    """Fit and evaluate every OOD detector for a training run; log metrics and `bundle/` artifacts."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml.inference import Predictor
    from ml.model import load_run_model

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_run(run_id).data.params["dataset_version"]
    predictor = Predictor(load_run_model(run_id))
    data, ids = build_data(settings, open_store(settings), version, predictor)
    detectors, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
    with tempfile.TemporaryDirectory(prefix="visionloop-ood-") as tmp:
        out = Path(tmp) / "bundle"
        write_bundle(out, detectors, summary, data, ids)
        for part in ("ood", "similarity", "imagenet"):
            client.log_artifacts(run_id, str(out / part), f"bundle/{part}")
        log_evaluation(client, run_id, detectors, summary, data, out)
    rows, default, primary = summary["detectors"], summary["default_detector"], summary["primary_ood_set"]
    log.info("OOD: default detector %s (AUROC %s on %s, %s thresholds)", default, rows[default]["auroc"], primary,
             rows[default]["threshold_mode"])
    return {"default_detector": default, "auroc": {name: row["auroc"] for name, row in rows.items()},
            "primary_ood_set": primary, "heldout_auroc": rows[default]["auroc"] if primary != "none" else None,
            "id_reject_rate": rows[default]["id_reject_rate"]}
