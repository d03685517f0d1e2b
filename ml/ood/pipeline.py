"""OOD fitting on arrays: the features and outlier groups detectors are fitted on, and the evaluation report.

`ml.stages.fit_ood` reads the snapshot and the run's model, calls these, fits
(`ml.ood.fitting.run`) and logs the result under `bundle/ood/` (see docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml.config import Settings
from ml.data.decode import default_workers
from ml.ood import fitting, outlier_data
from ml.ood.base import OODFeatures
from ml.ood.evaluate import markdown_table, save_roc_plot

log = logging.getLogger(__name__)
N_SYNTHETIC = 500  # noise / scrambled images: a far-OOD sanity set that needs no download


def features(predictor, x: np.ndarray) -> OODFeatures:
    """The model's outputs on x, with the pixels (the pixel_stats guard reads them), as detector input."""
    return OODFeatures.from_prediction(predictor.predict_batched(x), pixels=x)


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
    # Sources a user named must deliver held-out classes (the selector refuses otherwise); the `auto`
    # default counts only when it found images (no cifar100 archive: nothing real, not an error).
    named = sources is None and bool(outlier_data.named_sources(settings))
    if sources is None:
        sources = outlier_data.load_sources(settings, workers=default_workers())
    configured = named or any(len(s.images) for s in sources)
    groups = outlier_data.split_by_class(sources)
    groups["fit"] = [*groups["fit"], *fit_only]
    for group, parts in groups.items():
        log.info("OOD: %s group: %d images of %d classes from %s", group, sum(map(len, parts)),
                 len({c for p in parts for c in p.classes}), ", ".join(p.name for p in parts) or "no source")

    def joined(parts: list) -> OODFeatures | None:
        return features(predictor, np.concatenate([p.images for p in parts])) if parts else None

    evaluate = groups["evaluate"]
    sets = {f"heldout_{p.name}": features(predictor, p.images) for p in evaluate} if len(evaluate) > 1 else {}
    if evaluate:
        sets = {fitting.PRIMARY_SET: joined(evaluate), **sets}  # all held-out classes together first
    return {"ood_sets": sets, "outlier_fit": joined(groups["fit"]),
            "outlier_calibrate": joined(groups["calibrate"]),
            "real_outliers_configured": configured,
            "heldout_classes": sorted({str(c) for p in evaluate for c in p.classes})}


def ood_data(settings: Settings, predictor, train: tuple[np.ndarray, np.ndarray], x_val: np.ndarray,
             x_test: np.ndarray, stored_outliers: dict | None) -> fitting.OODData:
    """Features of train (no rotation copies), val, test, a synthetic sanity set and the outlier groups.

    stored_outliers: the snapshot's {"configured", "user"} outliers, or None to load VISIONLOOP_OUTLIER_SOURCES.
    """
    if stored_outliers is None:  # a snapshot without outliers (older, or none configured): from settings
        outliers = outlier_features(settings, predictor)
    else:
        outliers = outlier_features(settings, predictor, stored_outliers["configured"], stored_outliers["user"])
    return fitting.OODData(features(predictor, train[0]), train[1], features(predictor, x_val),
                           features(predictor, x_test),
                           sanity_sets={"synthetic_noise": features(predictor, synthetic_ood(x_val, settings.seed))},
                           **outliers)


def metrics_and_tags(summary: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Per detector and set AUROC / FPR@95 / catch rate, the default's held-out numbers, and the run tags."""
    primary, default = summary["primary_ood_set"], summary["default_detector"]
    metrics = {}
    for name, row in summary["detectors"].items():
        metrics[f"ood_id_reject_{name}"] = row["id_reject_rate"]
        for set_name, m in row["sets"].items():
            metrics[f"ood_auroc_{name}_{set_name}"] = m["auroc"]
            metrics[f"ood_fpr95_{name}_{set_name}"] = m["fpr_at_95_tpr"]
            metrics[f"ood_catch_{name}_{set_name}"] = m["ood_reject_rate"]
        if row["auroc"] is not None:  # on the primary (held-out) set only: never a synthetic number
            metrics[f"ood_auroc_{name}"] = row["auroc"]
            metrics[f"ood_fpr95_{name}"] = row["fpr_at_95_tpr"]
    best = summary["detectors"][default]
    if primary != "none":  # the gate reads ood_heldout_auroc: only ever real held-out outlier classes
        for metric, key in (("auroc", "auroc"), ("fpr95", "fpr_at_95_tpr"), ("catch", "catch_rate")):
            metrics[f"ood_heldout_{metric}"] = best[key]
        metrics["ood_default_auroc"] = best["auroc"]
    tags = {"ood_default_detector": default, "ood_primary_set": primary,
            "ood_threshold_mode": best["threshold_mode"],
            "ood_heldout_classes": ",".join(summary["heldout_classes"])[:4900] or "none"}
    return metrics, tags


def write_report(report: Path, detectors: dict, summary: dict, data: fitting.OODData) -> Path:
    """The table (markdown + JSON) and the ROC plot of the primary OOD set, into the folder `report`."""
    primary = summary["primary_ood_set"]
    sets = {**data.ood_sets, **data.sanity_sets}
    shown = primary if primary in sets else next(iter(sets))
    report.mkdir(parents=True, exist_ok=True)
    (report / "ood_table.md").write_text(markdown_table(summary["detectors"], summary["default_detector"]))
    (report / "ood_table.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    curves = {name: (det.score_samples(data.val), det.score_samples(sets[shown])) for name, det in detectors.items()}
    save_roc_plot(curves, report / "ood_roc.png", f"OOD: validation vs {shown}")
    return report


def result(summary: dict) -> dict:
    """What the stage returns: the default detector, every detector's AUROC and the default's held-out numbers."""
    rows, default, primary = summary["detectors"], summary["default_detector"], summary["primary_ood_set"]
    log.info("OOD: default detector %s (AUROC %s on %s, %s thresholds)", default, rows[default]["auroc"], primary,
             rows[default]["threshold_mode"])
    return {"default_detector": default, "auroc": {name: row["auroc"] for name, row in rows.items()},
            "primary_ood_set": primary, "heldout_auroc": rows[default]["auroc"] if primary != "none" else None,
            "id_reject_rate": rows[default]["id_reject_rate"]}
