"""Figures a person looks at in MLflow: curves, confusion matrix, t-SNE, first-layer filters."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: workers and tests have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def training_curves(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch, train against validation, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=False):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set(title=metric, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(counts: np.ndarray, classes: list[str]) -> Figure:
    """Row-normalised confusion matrix (rows = true class), cells annotated with the fraction."""
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 8))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (recall per row)")
    for i, j in np.ndindex(rates.shape):
        if counts[i, j]:
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def tsne(embeddings: np.ndarray, labels: np.ndarray, classes: list[str], user: np.ndarray | None = None,
         seed: int = 0) -> Figure:
    """2-D t-SNE of embeddings coloured by class; user-contributed images drawn as black-edged stars."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = embeddings.reshape(len(embeddings), -1)
    if x.shape[1] > 50 and len(x) > 50:  # PCA first: the usual t-SNE speed-up, same picture
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(9, 8))
    cmap = plt.get_cmap("tab20")
    for c, name in enumerate(classes):
        mask = labels == c
        ax.scatter(*points[mask].T, s=6, color=cmap(c % 20), label=name)
    if user is not None and user.any():
        ax.scatter(*points[user].T, s=60, marker="*", facecolors="none", edgecolors="black", label="user images")
    ax.set(title=f"t-SNE of {len(x)} validation embeddings", xticks=[], yticks=[])
    ax.legend(markerscale=2, fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _normalise(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-8)


def filters_and_activations(kernel: np.ndarray, images: np.ndarray, activations: np.ndarray,
                            n_filters: int = 16) -> Figure:
    """First conv layer: its filters as RGB tiles, then a few images and their first activation maps."""
    n_filters = min(n_filters, kernel.shape[-1])
    rows = 1 + len(images)
    fig, axes = plt.subplots(rows, n_filters + 1, figsize=(n_filters + 1, rows * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].text(0.5, 0.5, "filters", ha="center", va="center")
    for f in range(n_filters):
        axes[0, f + 1].imshow(_normalise(kernel[..., f]), interpolation="nearest")
    for r, (image, maps) in enumerate(zip(images, activations, strict=False), start=1):
        axes[r, 0].imshow(image)
        for f in range(n_filters):
            axes[r, f + 1].imshow(maps[..., f], cmap="viridis")
    fig.suptitle("first-layer filters and activation maps")
    fig.tight_layout()
    return fig
