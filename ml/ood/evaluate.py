"""OOD metrics (AUROC, FPR at 95 % TPR, reject rates), the comparison table and the ROC plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ml.ood.base import OODDetector, OODFeatures


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under ROC with OOD as the positive class (scores: higher = more OOD)."""
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    return float(roc_auc_score(y, np.r_[id_scores, ood_scores]))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD images accepted at the one threshold that accepts `tpr` of ID images (OpenOOD's FPR@95)."""
    threshold = np.quantile(id_scores, tpr)
    return float(np.mean(ood_scores <= threshold))


def evaluate_detector(detector: OODDetector, id_val: OODFeatures, ood_sets: dict[str, OODFeatures],
                      id_test: OODFeatures | None = None, tpr: float = 0.95) -> dict:
    """Metrics of one calibrated detector: per OOD set AUROC / FPR@95 / reject rate, and the ID reject rate."""
    id_scores = detector.score_samples(id_val)
    # Raw thresholds (the detector's own units); null where a class can never be rejected.
    row: dict = {"sets": {}, "thresholds": [float(t) if np.isfinite(t) else None for t in detector.thresholds_]}
    for name, feats in ood_sets.items():
        ood_scores = detector.score_samples(feats)
        row["sets"][name] = {
            "auroc": auroc(id_scores, ood_scores),
            "fpr_at_95_tpr": fpr_at_tpr(id_scores, ood_scores, tpr),
            "ood_reject_rate": float(detector.score(feats).is_ood.mean()),  # the catch rate as served
            "n": len(feats),
        }
    # Thresholds come from val, so the honest ID reject rate is measured on unseen test images.
    held = id_test if id_test is not None and len(id_test) else id_val
    row["id_reject_rate"] = float(detector.score(held).is_ood.mean())
    row["id_reject_rate_val"] = float(detector.score(id_val).is_ood.mean())
    return row


def markdown_table(rows: dict[str, dict], default: str) -> str:
    """One line per detector and OOD set, the default marked with *."""
    lines = ["| detector | OOD set | AUROC | FPR@95TPR | caught (served) | ID reject (test) |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        mark = " *" if name == default else ""
        for set_name, m in row["sets"].items():
            lines.append(f"| {name}{mark} | {set_name} | {m['auroc']:.4f} | {m['fpr_at_95_tpr']:.4f} | "
                         f"{m['ood_reject_rate']:.4f} | {row['id_reject_rate']:.4f} |")
    return "\n".join(lines) + "\n"


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str):
    """A matplotlib figure with one ROC curve per detector; curves[name] = (id_scores, ood_scores)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the pipeline runs in Airflow workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (id_scores, ood_scores) in curves.items():
        y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
        fpr, tpr, _ = roc_curve(y, np.r_[id_scores, ood_scores])
        ax.plot(fpr, tpr, label=f"{name} ({auroc(id_scores, ood_scores):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="ID images rejected (false positive rate)", ylabel="OOD images rejected (true positive rate)",
           title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def save_roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig = roc_figure(curves, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
