"""OOD detectors from the literature, all on the classifier's own outputs (logits, penultimate features).

All follow `ml.ood.base.OODDetector`; `ml.ood.catalog.make_detectors()` builds the evaluated set.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf

from ml.ood.base import OODDetector, OODFeatures

KNN_QUERY_CHUNK = 512  # queries per matrix product: 512 x 20,000 floats = 40 MB at most


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """At most `limit` row indices, a seeded sample so repeated fits agree."""
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


class MSPDetector(OODDetector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017): score = 1 - max p."""

    name = "msp"

    def fit(self, features: OODFeatures, labels: np.ndarray) -> MSPDetector:
        self.n_classes_ = int(features.probs.shape[1])
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        return 1.0 - features.probs.max(axis=1).astype(np.float64)


class EnergyDetector(OODDetector):
    """Energy score on logits (Liu et al. 2020): score = -T logsumexp(logits / T)."""

    name = "energy"
    params = ("temperature",)

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def fit(self, features: OODFeatures, labels: np.ndarray) -> EnergyDetector:
        self.n_classes_ = int(features.logits.shape[1])
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        t = self.temperature
        return -t * logsumexp(features.logits.astype(np.float64) / t, axis=1)


class KNNDetector(OODDetector):
    """Distance to the k-th nearest L2-normalised training feature (Sun et al. 2022, OpenOOD's KNN)."""

    name = "knn"
    params = ("k", "max_train", "seed")

    def __init__(self, k: int = 20, max_train: int = 20000, seed: int = 0):
        self.k, self.max_train, self.seed = k, max_train, seed

    def fit(self, features: OODFeatures, labels: np.ndarray) -> KNNDetector:
        # A seeded subsample keeps the bundle small; Sun et al. show k-NN degrades little with it.
        rows = _subsample(len(features), self.max_train, self.seed)
        self.bank_ = np.ascontiguousarray(l2_normalise(features.embeddings[rows]))
        self.k_ = int(max(1, min(self.k, len(self.bank_))))
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        queries = l2_normalise(features.embeddings)
        out = np.empty(len(queries), dtype=np.float64)
        for start in range(0, len(queries), KNN_QUERY_CHUNK):
            sims = queries[start:start + KNN_QUERY_CHUNK] @ self.bank_.T
            kth = -np.partition(-sims, self.k_ - 1, axis=1)[:, self.k_ - 1]
            out[start:start + len(sims)] = np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))  # |a-b| of unit rows
        return out


class MahalanobisDetector(OODDetector):
    """Class-conditional Gaussians with a shared covariance (Lee et al. 2018): min distance to a class mean."""

    name = "mahalanobis"

    def fit(self, features: OODFeatures, labels: np.ndarray) -> MahalanobisDetector:
        x = features.embeddings.astype(np.float64)
        labels = np.asarray(labels)
        n_classes = features.probs.shape[1]
        self.means_ = np.stack([x[labels == c].mean(axis=0) if np.any(labels == c) else x.mean(axis=0)
                                for c in range(n_classes)])
        centred = x - self.means_[labels]
        # Ledoit-Wolf shrinkage: wide embeddings (256-512) make the plain estimate ill-conditioned.
        self.precision_ = LedoitWolf(assume_centered=True).fit(centred).precision_
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        x = features.embeddings.astype(np.float64)
        projected = x @ self.precision_
        # d^2(x, m) = x'Px - 2 m'Px + m'Pm, for all class means at once.
        quad = np.einsum("nd,nd->n", projected, x)[:, None]
        cross = projected @ self.means_.T
        mean_quad = np.einsum("cd,cd->c", self.means_ @ self.precision_, self.means_)[None, :]
        return (quad - 2 * cross + mean_quad).min(axis=1)


class ViMDetector(OODDetector):
    """Virtual-logit matching (Wang et al. 2022): feature residual off the principal subspace plus energy.

    The logits layer (W, b) is recovered from embeddings and logits by least squares, which is
    exact for a dense head, so the detector needs no access to the Keras model.
    """

    name = "vim"
    params = ("principal_fraction", "max_train", "seed")

    def __init__(self, principal_fraction: float = 0.5, max_train: int = 20000, seed: int = 0):
        self.principal_fraction, self.max_train, self.seed = principal_fraction, max_train, seed

    def fit(self, features: OODFeatures, labels: np.ndarray) -> ViMDetector:
        rows = _subsample(len(features), self.max_train, self.seed)
        x, logits = features.embeddings[rows].astype(np.float64), features.logits[rows].astype(np.float64)
        weights_bias = np.linalg.lstsq(np.c_[x, np.ones(len(x))], logits, rcond=None)[0]
        w, b = weights_bias[:-1], weights_bias[-1]
        self.origin_ = -np.linalg.pinv(w.T) @ b  # the point whose logits are all zero
        centred = x - self.origin_
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(x))
        keep = max(1, int(round(self.principal_fraction * x.shape[1])))
        self.null_space_ = eigvecs[:, np.argsort(eigvals)[::-1][keep:]]
        residual = np.linalg.norm(centred @ self.null_space_, axis=1)
        # alpha matches the residual's scale to the logits' so neither term dominates by units alone.
        self.alpha_ = float(logits.max(axis=1).mean() / max(residual.mean(), 1e-12))
        return self

    def score_samples(self, features: OODFeatures) -> np.ndarray:
        centred = features.embeddings.astype(np.float64) - self.origin_
        virtual = self.alpha_ * np.linalg.norm(centred @ self.null_space_, axis=1)
        return virtual - logsumexp(features.logits.astype(np.float64), axis=1)
