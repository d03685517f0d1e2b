"""A far-OOD guard on the pixels themselves: how unusual an image's low-level statistics are.

The classifier's features answer "which of my classes does this look like"; an image with no
photo-like statistics at all (a scan, a drawing, a flat graphic, noise) can still land close to a
class there. This detector never looks at the model: it fits a small Gaussian mixture to ten
statistics of the training images (colour, contrast, saturation, edge strength, sharpness,
brightness spread) and scores an image by its negative log-likelihood. It is served only as a
guard next to a feature-space detector (ml.ood.guarded), never alone on object classes.
"""

from __future__ import annotations

import numpy as np

from ml.ood.base import OODDetector, OODFeatures
from ml.ood.detectors import _subsample

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
HISTOGRAM_BINS = 16
EPS = 1e-3
CHUNK = 4096  # images per statistics pass: bounds the float32 copies to about 50 MB


def image_statistics(pixels: np.ndarray) -> np.ndarray:
    """(N, 10) statistics of uint8 (N, H, W, 3) images: channel means and spreads, saturation,
    log edge strength, sharpness (log Laplacian over edge strength) and luminance-histogram entropy."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {pixels.shape}")
    return np.concatenate([_statistics(pixels[i:i + CHUNK]) for i in range(0, len(pixels), CHUNK)]
                          or [np.zeros((0, 10), np.float32)])


def _statistics(pixels: np.ndarray) -> np.ndarray:
    x = pixels.astype(np.float32) / 255.0
    mean, spread = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
    brightest, darkest = x.max(axis=3), x.min(axis=3)
    saturation = ((brightest - darkest) / (brightest + EPS)).mean(axis=(1, 2))
    luma = x @ LUMA
    edges = np.abs(np.diff(luma, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(luma, axis=1)).mean(axis=(1, 2))
    laplacian = np.abs(4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
                       - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]).mean(axis=(1, 2))
    bins = np.minimum((luma * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1).reshape(len(x), -1)
    offsets = (np.arange(len(x)) * HISTOGRAM_BINS)[:, None]  # one bincount for the whole chunk
    counts = np.bincount((bins + offsets).ravel(), minlength=len(x) * HISTOGRAM_BINS).reshape(len(x), -1)
    counts = counts / bins.shape[1]
    entropy = -(counts * np.log(counts + 1e-9)).sum(axis=1)
    return np.c_[mean, spread, saturation, np.log(edges + EPS), np.log(laplacian + EPS) - np.log(edges + EPS),
                 entropy].astype(np.float32)


class PixelStatsDetector(OODDetector):
    """Negative log-likelihood of image_statistics under a Gaussian mixture fitted on training images."""

    name = "pixel_stats"
    params = ("components", "max_train", "seed")

    def __init__(self, components: int = 4, max_train: int = 20000, seed: int = 0):
        self.components, self.max_train, self.seed = components, max_train, seed

    def fit(self, features: OODFeatures, labels: np.ndarray) -> PixelStatsDetector:
        from sklearn.mixture import GaussianMixture

        rows = _subsample(len(features), self.max_train, self.seed)
        stats = image_statistics(_pixels(features)[rows]).astype(np.float64)
        self.mean_, self.scale_ = stats.mean(axis=0), np.maximum(stats.std(axis=0), 1e-6)
        mixture = GaussianMixture(min(self.components, len(stats)), covariance_type="full",
                                  reg_covar=1e-4, random_state=self.seed).fit((stats - self.mean_) / self.scale_)
        # Plain arrays, so the fitted mixture is stored without pickle (ml.ood.persist).
        self.log_weights_ = np.log(mixture.weights_)
        self.means_ = mixture.means_
        self.precisions_cholesky_ = mixture.precisions_cholesky_
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        z = (image_statistics(_pixels(features)).astype(np.float64) - self.mean_) / self.scale_
        # log N(z | mean_k, cov_k) through the precision's Cholesky factor, as scikit-learn computes it.
        log_det = np.log(np.diagonal(self.precisions_cholesky_, axis1=1, axis2=2)).sum(axis=1)
        projected = np.einsum("nd,kde->nke", z, self.precisions_cholesky_) - np.einsum(
            "kd,kde->ke", self.means_, self.precisions_cholesky_)[None]
        log_prob = -0.5 * (z.shape[1] * np.log(2 * np.pi) + (projected ** 2).sum(axis=2)) + log_det
        top = (log_prob + self.log_weights_).max(axis=1, keepdims=True)
        return -(top[:, 0] + np.log(np.exp(log_prob + self.log_weights_ - top).sum(axis=1)))


def _pixels(features: OODFeatures) -> np.ndarray:
    if features.pixels is None:
        raise ValueError("pixel_stats needs the images: build OODFeatures with pixels=")
    return features.pixels
