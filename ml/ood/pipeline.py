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
from ml.ood import fitting
from ml.ood.base import OODFeatures
from ml.ood.evaluate import markdown_table, save_roc_plot
from ml.ood.outliers import load_outlier_images, split_by_group
from ml.ood.persist import save_detectors
from ml.storage import ObjectStore, open_store

log = logging.getLogger(__name__)
N_SYNTHETIC = 500  # noise / scrambled images: a far-OOD sanity set that needs no download


def _features(predictor, x: np.ndarray) -> OODFeatures:
    return OODFeatures.from_prediction(predictor.predict_batched(x), pixels=x)


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


def cifar100_outliers(settings: Settings) -> tuple[np.ndarray, np.ndarray] | None:
    """Images of the CIFAR-100 superclasses not chosen as classes, when the archive is already cached."""
    path = settings.downloads_dir / "cifar-100-python.tar.gz"
    if "cifar100" not in settings.data_sources or not path.is_file():
        return None
    from ml.data.cifar import CIFAR100_BATCHES, read_pickles, rows_to_images

    batches = read_pickles(path, CIFAR100_BATCHES + ("meta",))
    coarse = np.array([n.decode() for n in batches["meta"][b"coarse_label_names"]])
    groups = coarse[np.asarray(batches["test"][b"coarse_labels"])]  # the test batch: 10,000 images is plenty
    keep = ~np.isin(groups, settings.classes)
    return rows_to_images(batches["test"][b"data"])[keep], groups[keep]


def outlier_sets(settings: Settings, predictor) -> tuple[dict[str, OODFeatures], OODFeatures | None]:
    """Evaluation sets and the part of the outliers kept out of them for the 'other' class."""
    sets, train_parts = {}, []
    sources = []
    if settings.ood_eval_archive and not Path(settings.ood_eval_archive).exists():
        log.warning("OOD: VISIONLOOP_OOD_EVAL_ARCHIVE=%s does not exist; evaluating without it",
                    settings.ood_eval_archive)
    elif settings.ood_eval_archive:
        sources.append(("ood_archive", load_outlier_images(settings.ood_eval_archive)))
    cifar = cifar100_outliers(settings)
    if cifar is not None:
        sources.append(("heldout_classes", cifar))
    for name, (x, groups) in sources:
        for_train, for_eval = split_by_group(groups, seed=settings.seed)
        log.info("OOD: %s: %d images (%d groups) for evaluation, %d for the 'other' class", name,
                 int(for_eval.sum()), len(np.unique(groups[for_eval])), int(for_train.sum()))
        sets[name] = _features(predictor, x[for_eval])
        train_parts.append(_features(predictor, x[for_train]))
    outlier_train = fitting.concat_features(train_parts) if train_parts else None
    return sets, outlier_train


def build_data(settings: Settings, store: ObjectStore, version: str, predictor) -> tuple[fitting.OODData, list[str]]:
    """Features of train (rotation copies excluded), val, test and every OOD set; plus the train ids."""
    x, y, synthetic = load_split(store, version, "train")
    keep = np.flatnonzero(~synthetic)  # rotated copies would make rotated OOD images look familiar
    train = _features(predictor, x[keep])
    ids = [layout.image_id(version, "train", int(i)) for i in keep]
    x_val, _, _ = load_split(store, version, "val")
    x_test, _, _ = load_split(store, version, "test")
    sets, outlier_train = outlier_sets(settings, predictor)
    sets["synthetic_noise"] = _features(predictor, synthetic_ood(x_val, settings.seed))
    data = fitting.OODData(train, y[keep], _features(predictor, x_val), _features(predictor, x_test),
                           sets, outlier_train)
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


def log_evaluation(client, run_id: str, detectors: dict, summary: dict, data: fitting.OODData, out: Path) -> None:
    """Metrics per detector, the table (markdown + JSON) and the ROC plot of the primary OOD set."""
    primary = summary["primary_ood_set"]
    for name, row in summary["detectors"].items():
        client.log_metric(run_id, f"ood_auroc_{name}", row["auroc"])
        client.log_metric(run_id, f"ood_fpr95_{name}", row["fpr_at_95_tpr"])
        client.log_metric(run_id, f"ood_id_reject_{name}", row["id_reject_rate"])
        for set_name, metrics in row["sets"].items():
            client.log_metric(run_id, f"ood_auroc_{name}_{set_name}", metrics["auroc"])
    default = summary["default_detector"]
    client.log_metric(run_id, "ood_default_auroc", summary["detectors"][default]["auroc"])
    client.set_tag(run_id, "ood_default_detector", default)
    client.set_tag(run_id, "ood_primary_set", primary)
    report = out.parent / "report"
    report.mkdir()
    (report / "ood_table.md").write_text(markdown_table(summary["detectors"], default))
    (report / "ood_table.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    curves = {name: (det.score_samples(data.val), det.score_samples(data.ood_sets[primary]))
              for name, det in detectors.items()}
    save_roc_plot(curves, report / "ood_roc.png", f"OOD: validation vs {primary}")
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
    rows = summary["detectors"]
    default = summary["default_detector"]
    log.info("OOD: default detector %s (AUROC %.4f on %s)", default, rows[default]["auroc"], summary["primary_ood_set"])
    return {"default_detector": default, "auroc": {name: row["auroc"] for name, row in rows.items()},
            "primary_ood_set": summary["primary_ood_set"], "id_reject_rate": rows[default]["id_reject_rate"]}
