"""What a drift window shows: summary metrics, plots over time and a self-contained HTML report.

`ml.stages.drift` logs them as one MLflow run per window (MLflow is the drift dashboard).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from ml.monitoring.reference import ReferencePack
from ml.monitoring.signals import WindowData

HISTORY_RUNS = 24  # earlier windows shown in the over-time plots


def summarize(window: WindowData, reference: ReferencePack) -> dict[str, float]:
    """Window-level and per-class means, the metrics plotted over time in MLflow."""
    metrics = {"window_size": float(len(window)), "ood_rate": float(window.is_ood.mean()),
               "mean_confidence": float(window.confidence.mean()), "mean_entropy": float(window.pixel_entropy.mean()),
               "mean_hist_distance": float(window.hist_distance.mean())}
    for c, name in enumerate(reference.classes):
        chosen = window.predicted == c
        metrics[f"class/{name}/share"] = float(chosen.mean())
        if chosen.any():
            metrics[f"class/{name}/mean_confidence"] = float(window.confidence[chosen].mean())
            metrics[f"class/{name}/mean_entropy"] = float(window.pixel_entropy[chosen].mean())
            metrics[f"class/{name}/mean_hist_distance"] = float(window.hist_distance[chosen].mean())
    return metrics


def _figures(window: WindowData, reference: ReferencePack, history: list[dict]) -> dict:
    import matplotlib

    matplotlib.use("Agg")  # no display on schedulers and workers
    import matplotlib.pyplot as plt

    figures = {}
    current_pca = reference.pca_transform(window.embeddings)[:, 0] if len(window) else np.zeros(0)
    panels = [("confidence", reference.confidence, window.confidence),
              ("pixel entropy (bits)", reference.pixel_entropy, window.pixel_entropy),
              ("histogram distance", reference.hist_distance, window.hist_distance),
              ("embedding PCA 1", reference.embeddings_pca[:, 0], current_pca)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, (title, ref, cur) in zip(axes, panels, strict=True):
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(cur, bins=bins, density=True, alpha=0.5, label="window")
        ax.set_title(title)
    axes[0].legend()
    figures["distributions.png"] = fig

    classes = reference.classes
    ref_share = np.bincount(reference.predicted, minlength=len(classes)) / len(reference.predicted)
    cur_share = np.bincount(window.predicted, minlength=len(classes)) / max(len(window), 1)
    ref_conf = [reference.confidence[reference.predicted == c].mean() if (reference.predicted == c).any()
                else np.nan for c in range(len(classes))]
    cur_conf = [window.confidence[window.predicted == c].mean() if (window.predicted == c).any()
                else np.nan for c in range(len(classes))]
    fig, axes = plt.subplots(1, 2, figsize=(16, 4))
    pos = np.arange(len(classes))
    for ax, (title, ref, cur) in zip(axes, [("prediction share", ref_share, cur_share),
                                            ("mean confidence", ref_conf, cur_conf)], strict=True):
        ax.bar(pos - 0.2, ref, 0.4, label="reference")
        ax.bar(pos + 0.2, cur, 0.4, label="window")
        ax.set_xticks(pos, classes, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"per class: {title}")
    axes[0].legend()
    fig.tight_layout()
    figures["per_class.png"] = fig

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.5))
    for ax, key in zip(axes, ("mean_confidence", "mean_entropy", "mean_hist_distance"), strict=True):
        values = [row.get(key, np.nan) for row in history]
        ax.plot(range(len(values)), values, marker="o")
        ax.set_title(f"{key} over the last windows")
        ax.set_xlabel("window (oldest left, this one right)")
    fig.tight_layout()
    figures["over_time.png"] = fig
    return figures


def plots(window: WindowData, reference: ReferencePack, history: list[dict]) -> dict[str, bytes]:
    """The window's PNG plots by file name; `history` is earlier windows' summaries, this one last."""
    return {name: _png(fig) for name, fig in _figures(window, reference, history).items()}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def render_html(result: dict, images: dict[str, bytes]) -> str:
    """One HTML file with the signal table and the plots embedded as base64, readable offline."""
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{s['kind']}</td><td>{s['statistic']:.4g}</td>"
        f"<td>{s['p_value']:.3g}</td><td>{'-' if s['p_adjusted'] is None else format(s['p_adjusted'], '.3g')}</td>"
        f"<td>{s['threshold']}</td><td>{s['n']}</td><td>{'DRIFT' if s['drift'] else ''}</td></tr>"
        for s in result.get("signals", []))
    pictures = "".join(f'<h2>{html.escape(name)}</h2><img src="data:image/png;base64,'
                       f'{base64.b64encode(data).decode()}" style="max-width:100%">' for name, data in images.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Drift window {result['window_id']}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
            "</style></head><body>"
            f"<h1>Drift window {html.escape(result['window_id'])}: {html.escape(result['verdict'])}</h1>"
            f"<p>model version {html.escape(str(result.get('model_version')))}, {result['n_records']} requests, "
            f"family-wise alpha {result['alpha']} (Holm){_skipped_note(result)}</p><table><tr><th>signal</th><th>kind</th>"
            "<th>statistic</th><th>p-value</th><th>Holm p</th><th>alpha</th><th>n</th><th></th></tr>"
            f"{rows}</table>{pictures}</body></html>")


def _skipped_note(result: dict) -> str:
    """Why some requests were not tested: their model version has no reference pack."""
    skipped = result.get("skipped_versions") or {}
    if not skipped:
        return ""
    parts = ", ".join(f"v{html.escape(str(v))}: {n}" for v, n in skipped.items())
    return f"; skipped {sum(skipped.values())} requests of versions without a reference pack ({parts})"
