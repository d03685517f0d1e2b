"""The drift signals of one window against a reference pack, and the corrected overall verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.monitoring.detectors import (
    ChiSquareDetector,
    DriftResult,
    KSDetector,
    MultiKSDetector,
    RateDetector,
    holm_adjust,
)
from ml.monitoring.reference import ReferencePack
from ml.records import RequestRecord

DRIFT, NO_DRIFT, INSUFFICIENT = "drift", "no drift", "insufficient data"
MIN_FEEDBACK = 30  # below this the disagreement rate is reported but stays out of the verdict


@dataclass
class WindowData:
    """The per-request values the signals test, as arrays (one row per request)."""

    confidence: np.ndarray
    pixel_entropy: np.ndarray
    hist_distance: np.ndarray
    predicted: np.ndarray
    is_ood: np.ndarray
    embeddings: np.ndarray
    request_ids: list[str]

    def __len__(self) -> int:
        return len(self.confidence)

    @classmethod
    def from_records(cls, records: list[RequestRecord]) -> WindowData:
        def column(name: str, dtype) -> np.ndarray:
            return np.array([getattr(r, name) for r in records], dtype=dtype)

        dim = len(records[0].embedding) if records else 0
        return cls(column("confidence", np.float32), column("pixel_entropy", np.float32),
                   column("hist_distance", np.float32), column("class_id", np.int64), column("is_ood", bool),
                   np.stack([r.embedding for r in records]) if records else np.zeros((0, dim), np.float32),
                   [r.request_id for r in records])


def disagreement(feedback: list[dict], reference: ReferencePack, alpha: float) -> tuple[DriftResult, dict]:
    """Share of window requests whose user label differs from the prediction, per predicted class.

    Expected: the reference's validation error among images predicted as that
    class (1 - precision); users who bother to correct are biased towards
    mistakes, so this is a one-sided alarm, not an accuracy estimate.
    """
    classes = reference.classes
    index = {name: i for i, name in enumerate(classes)}
    predicted = np.array([index.get(f["predicted_label"], -1) for f in feedback], dtype=np.int64)
    wrong = np.array([f["label"] != f["predicted_label"] for f in feedback], dtype=bool)
    known = predicted >= 0
    predicted, wrong = predicted[known], wrong[known]
    expected = float(reference.class_error_rate[predicted].mean()) if len(predicted) else 0.0
    result = RateDetector("feedback_disagreement", "concept", alpha).fit(expected).score(wrong)
    per_class = {classes[c]: {"n": int((predicted == c).sum()), "disagree": int(wrong[predicted == c].sum()),
                              "rate": float(wrong[predicted == c].mean()) if (predicted == c).any() else 0.0,
                              "expected": float(reference.class_error_rate[c])}
                 for c in range(len(classes)) if (predicted == c).any()}
    return result, per_class


def compute_signals(window: WindowData, reference: ReferencePack, alpha: float,
                    feedback: list[dict] | None = None) -> list[DriftResult]:
    """Every signal's raw test on the window; the verdict and correction come from `verdict`."""
    n_classes = len(reference.classes)
    results = [
        KSDetector("hist_distance", "data", alpha).fit(reference.hist_distance).score(window.hist_distance),
        KSDetector("pixel_entropy", "data", alpha).fit(reference.pixel_entropy).score(window.pixel_entropy),
        MultiKSDetector("embedding", "data", alpha).fit(reference.embeddings_pca)
        .score(reference.pca_transform(window.embeddings)),
        RateDetector("ood_rate", "data", alpha).fit(reference.expected_ood_rate).score(window.is_ood),
        KSDetector("confidence", "concept", alpha).fit(reference.confidence).score(window.confidence),
        ChiSquareDetector(n_classes, alpha=alpha).fit(reference.predicted).score(window.predicted),
    ]
    if feedback:
        result, per_class = disagreement(feedback, reference, alpha)
        results.append(DriftResult(**{**result.to_dict(), "details": {**result.details, "per_class": per_class}}))
    return results


def verdict(results: list[DriftResult], alpha: float, n: int, min_window: int,
            min_feedback: int = MIN_FEEDBACK) -> tuple[str, list[dict]]:
    """Holm-corrected overall verdict: family-wise false-alarm rate alpha over the tested signals."""
    if n < min_window:
        return INSUFFICIENT, [dict(r.to_dict(), tested=False, p_adjusted=None, drift=False) for r in results]
    tested = [r.name != "feedback_disagreement" or r.n >= min_feedback for r in results]
    adjusted = iter(holm_adjust([r.p_value for r, t in zip(results, tested, strict=True) if t]))
    rows = []
    for result, is_tested in zip(results, tested, strict=True):
        p_adj = float(next(adjusted)) if is_tested else None
        rows.append(dict(result.to_dict(), tested=is_tested, p_adjusted=p_adj,
                         drift=bool(is_tested and p_adj < alpha)))
    return (DRIFT if any(row["drift"] for row in rows) else NO_DRIFT), rows
