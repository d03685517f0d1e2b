"""Fit, calibrate, evaluate and choose among the detectors on one model's features (no MLflow, no TF).

Outlier images play three class-disjoint roles: `outlier_fit` trains the outlier-exposure heads,
`outlier_calibrate` decides per-class against global thresholds, and `ood_sets` (held-out classes)
choose the default detector. Synthetic noise only ever lands in `sanity_sets`: reported, never chosen on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ml.ood.base import OODDetector, OODFeatures
from ml.ood.catalog import AUROC_TIE, FALLBACK_DEFAULT, make_detectors, pick_default
from ml.ood.evaluate import evaluate_detector
from ml.ood.exposure import OtherClassDetector
from ml.ood.guarded import GuardedDetector

log = logging.getLogger(__name__)
# Per-class thresholds must catch this many more calibrate-group outliers than one global threshold
# (same ID acceptance) to be used: below it the difference is noise and global is simpler.
PER_CLASS_MIN_GAIN = 0.02
PRIMARY_SET = "heldout"
# A detector that ranks synthetic noise as more in-distribution than real photos is broken (logit
# energy does this on weak models): vetoed. This is a veto only; noise never ranks the detectors.
SANITY_MIN_AUROC = 0.5


class SelectionError(ValueError):
    """The default detector cannot be chosen honestly from what was evaluated."""


@dataclass
class OODData:
    """Features of every split the evaluation needs (see the module docstring for the outlier roles)."""

    train: OODFeatures
    train_labels: np.ndarray
    val: OODFeatures
    test: OODFeatures | None = None
    ood_sets: dict[str, OODFeatures] = field(default_factory=dict)  # held-out real outlier classes
    outlier_fit: OODFeatures | None = None
    outlier_calibrate: OODFeatures | None = None
    sanity_sets: dict[str, OODFeatures] = field(default_factory=dict)  # synthetic: reported only
    real_outliers_configured: bool = False
    heldout_classes: list[str] = field(default_factory=list)


def concat_features(parts: list[OODFeatures]) -> OODFeatures:
    """Row-wise concatenation; pixels kept only when every part has them."""
    pixels = None if any(p.pixels is None for p in parts) else np.concatenate([p.pixels for p in parts])
    return OODFeatures(np.concatenate([p.embeddings for p in parts]), np.concatenate([p.logits for p in parts]),
                       np.concatenate([p.probs for p in parts]), pixels)


def _fit_one(detector: OODDetector, data: OODData) -> OODDetector:
    if not isinstance(detector, OtherClassDetector):
        return detector.fit(data.train, data.train_labels)
    n_classes = data.train.probs.shape[1]
    features = concat_features([data.train, data.outlier_fit])
    labels = np.r_[data.train_labels, np.full(len(data.outlier_fit), n_classes)]
    return detector.fit(features, labels)


def calibrate_best(detector: OODDetector, data: OODData, target_tpr: float) -> dict:
    """Calibrate globally, or per class where that catches measurably more calibrate-group outliers."""
    detector.calibrate(data.val, data.val.predicted, target_tpr, per_class=False)
    if data.outlier_calibrate is None or not len(data.outlier_calibrate):
        return {"threshold_mode": "global"}
    catch_global = float(detector.score(data.outlier_calibrate).is_ood.mean())
    detector.calibrate(data.val, data.val.predicted, target_tpr, per_class=True)
    catch_class = float(detector.score(data.outlier_calibrate).is_ood.mean())
    if catch_class - catch_global < PER_CLASS_MIN_GAIN:
        detector.calibrate(data.val, data.val.predicted, target_tpr, per_class=False)
    mode = "per_class" if detector.per_class_ else "global"
    return {"threshold_mode": mode, "calibrate_catch_global": catch_global, "calibrate_catch_per_class": catch_class}


def fit_detectors(data: OODData, target_tpr: float, seed: int = 0,
                  only: tuple[str, ...] | None = None) -> tuple[dict[str, OODDetector], dict[str, dict]]:
    """Fit on train, calibrate on val; returns detectors and per-detector fit facts (seconds, mode)."""
    include_other = data.outlier_fit is not None and len(data.outlier_fit) > 0
    if not include_other:
        log.info("OOD: no fit-group outlier images (set VISIONLOOP_OUTLIER_SOURCES); skipping other_class")
    has_pixels = data.train.pixels is not None and data.val.pixels is not None
    detectors = make_detectors(seed=seed, include_other=include_other, include_pixels=has_pixels)
    if only:
        detectors = {n: d for n, d in detectors.items() if n in only}
    facts = {}
    for name, detector in detectors.items():
        start = time.perf_counter()
        _fit_one(detector, data)
        facts[name] = calibrate_best(detector, data, target_tpr)
        facts[name]["fit_seconds"] = round(time.perf_counter() - start, 3)
        log.info("OOD: fitted %s in %.1f s (%s thresholds)", name, facts[name]["fit_seconds"],
                 facts[name]["threshold_mode"])
    return detectors, facts


def evaluate_all(detectors: dict[str, OODDetector], data: OODData) -> dict[str, dict]:
    """One metrics row per detector over held-out and sanity sets (ml.ood.evaluate.evaluate_detector)."""
    sets = {**data.ood_sets, **data.sanity_sets}
    return {name: evaluate_detector(det, data.val, sets, data.test) for name, det in detectors.items()}


def require_real_sets(data: OODData) -> list[str]:
    """Names of the held-out real outlier sets; an error when real outliers are configured but none is there."""
    real = [name for name in data.ood_sets if not name.startswith("synthetic")]
    if data.real_outliers_configured and not real:
        raise SelectionError("real outlier sources are configured but no held-out outlier class reached "
                             "evaluation; refusing to choose the OOD detector on synthetic images only "
                             "(add outlier classes: each class goes wholly to fit, calibrate or evaluate)")
    return real


def sanity_vetoed(rows: dict[str, dict], data: OODData) -> list[str]:
    """Detectors scoring a synthetic sanity set below chance; none when that would veto every detector."""
    vetoed = [name for name, row in rows.items()
              if any((row["sets"].get(s) or {}).get("auroc", 1.0) < SANITY_MIN_AUROC for s in data.sanity_sets)]
    if len(vetoed) == len(rows):
        log.warning("OOD: every detector ranks synthetic noise as in-distribution; no veto applied")
        return []
    for name in vetoed:
        log.warning("OOD: %s ranks synthetic noise as more in-distribution than photos: not eligible as default", name)
    return vetoed


def select_default(rows: dict[str, dict], data: OODData) -> tuple[str, str]:
    """(default detector, the set it was chosen on): best AUROC on held-out real outlier classes."""
    real = require_real_sets(data)
    eligible = {name: row for name, row in rows.items() if name not in sanity_vetoed(rows, data)}
    if real:
        primary = PRIMARY_SET if PRIMARY_SET in real else real[0]
        return pick_default({name: row["sets"][primary]["auroc"] for name, row in eligible.items()}), primary
    log.warning("OOD: no real outlier images configured (VISIONLOOP_OUTLIER_SOURCES): serving %s untested "
                "on real outliers; synthetic noise is reported but never chooses", FALLBACK_DEFAULT)
    return (FALLBACK_DEFAULT if FALLBACK_DEFAULT in eligible else pick_default({n: 0.0 for n in eligible})), "none"


def summarise(rows: dict[str, dict], facts: dict[str, dict], data: OODData, target_tpr: float) -> dict:
    """summary.json content: the default, the set it was chosen on, and every row."""
    if not rows:
        raise ValueError("no detector was evaluated")
    default, primary = select_default(rows, data)
    detectors = {}
    for name, row in rows.items():
        main = row["sets"].get(primary, {})
        detectors[name] = {**row, **facts.get(name, {}), "auroc": main.get("auroc"),
                           "fpr_at_95_tpr": main.get("fpr_at_95_tpr"), "catch_rate": main.get("ood_reject_rate")}
    return {"default_detector": default, "primary_ood_set": primary, "target_tpr": target_tpr,
            "heldout_classes": sorted(data.heldout_classes), "sanity_sets": sorted(data.sanity_sets),
            "sanity_vetoed": sanity_vetoed(rows, data),
            "score": "ood_score = 1 - conformal p-value of the raw score among ID calibration scores of the "
                     "predicted class (or all classes); is_ood when ood_score >= ood_threshold = target_tpr",
            "detectors": detectors}


def run(data: OODData, target_tpr: float, seed: int = 0,
        only: tuple[str, ...] | None = None) -> tuple[dict[str, OODDetector], dict]:
    """Fit, calibrate and evaluate everything; returns (detectors, summary)."""
    require_real_sets(data)  # fail before minutes of fitting, not after
    detectors, facts = fit_detectors(data, target_tpr, seed, only)
    summary = summarise(evaluate_all(detectors, data), facts, data, target_tpr)
    return detectors, add_guard(detectors, summary, data, target_tpr)


def add_guard(detectors: dict[str, OODDetector], summary: dict, data: OODData, target_tpr: float) -> dict:
    """Put the pixel_stats guard beside the chosen detector (ml.ood.guarded) and serve the pair unless it
    measurably loses on the held-out outlier classes: far-OOD images with no photo statistics are caught
    even when the feature-space detector calls them ordinary. With no held-out classes the pair is served
    (a fixed design choice, like the fused fallback)."""
    default, primary = summary["default_detector"], summary["primary_ood_set"]
    if "pixel_stats" not in detectors or default == "pixel_stats":
        return summary
    name = f"{default}_guarded"
    guarded = GuardedDetector(name).combine(detectors[default], detectors["pixel_stats"], data.val)
    facts = calibrate_best(guarded, data, target_tpr)
    row = evaluate_detector(guarded, data.val, {**data.ood_sets, **data.sanity_sets}, data.test)
    main = row["sets"].get(primary, {})
    detectors[name] = guarded
    summary["detectors"][name] = {**row, **facts, "fit_seconds": 0.0, "auroc": main.get("auroc"),
                                  "fpr_at_95_tpr": main.get("fpr_at_95_tpr"), "catch_rate": main.get("ood_reject_rate")}
    alone = summary["detectors"][default]["auroc"]
    if primary == "none" or main["auroc"] >= alone - AUROC_TIE:
        summary["default_detector"] = name
        log.info("OOD: serving %s (held-out AUROC %s vs %s alone)", name, main.get("auroc"), alone)
    else:
        log.warning("OOD: %s loses on held-out classes (AUROC %.4f vs %.4f); serving %s without the guard",
                    name, main["auroc"], alone, default)
    return summary
