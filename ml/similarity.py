"""SimilarityIndex: the training images nearest to an upload, among the classes the model finds likely.

Embeddings are L2-normalised and stored sorted by class, so a query is one
matmul over the rows of the top classes only (about 4/13 of the index). On a
large index that matmul costs more than the model itself, so it runs on the
embeddings' leading principal components (a PCA prefilter), and only the
best candidates of each class are re-ranked on the full vectors: the
neighbours and distances returned are exact cosine ones among those
candidates (bench/similarity.py measures how often they are the exact top k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Neighbor:
    """One similar training image: its dataset id, label and Euclidean distance between unit vectors."""

    id: str
    label: int
    distance: float


_blas = None


def _one_blas_thread():
    """A context that runs BLAS on one thread: a matrix-vector product is memory-bound, and
    extra threads only add hand-off latency (and lose badly when the CPU is shared)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# Principal components the prefilter scans, and candidates per query and class it hands to the exact
# re-rank. Chosen with bench/similarity.py on a standard-profile model's 39k-image index (320 held-out
# queries): 64 x 32 found 99.3 % of the exact top 4 at 0.43x the exact scan's time; 32 x 32 only 90 %.
# Indexes too small for the prefilter to pay are scanned exactly.
PREFILTER_DIMS = 64
PREFILTER_CANDIDATES = 32
PREFILTER_MIN_ROWS = 20_000


class SimilarityIndex:
    """Nearest neighbours over training embeddings, restricted to the most probable classes."""

    def __init__(self, prefilter_dims: int = PREFILTER_DIMS, candidates: int = PREFILTER_CANDIDATES,
                 prefilter_min_rows: int = PREFILTER_MIN_ROWS):
        self.prefilter_dims, self.candidates, self.prefilter_min_rows = prefilter_dims, candidates, prefilter_min_rows

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, ids) -> SimilarityIndex:
        """Index N embeddings (N, D) with their class labels and dataset ids."""
        embeddings = np.asarray(embeddings).reshape(len(embeddings), -1)
        labels, ids = np.asarray(labels, dtype=np.int64), np.asarray(ids, dtype=str)
        if not len(embeddings) == len(labels) == len(ids):
            raise ValueError("embeddings, labels and ids must have the same length")
        order = np.argsort(labels, kind="stable")  # class-contiguous rows: a class is one slice
        self.embeddings_ = np.ascontiguousarray(_normalise(embeddings[order]))
        self.labels_, self.ids_ = labels[order], ids[order]
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        self.offsets_ = np.searchsorted(self.labels_, np.arange(n_classes + 1))
        self.basis_, self.reduced_ = None, None
        dims = self.embeddings_.shape[1] if self.embeddings_.ndim == 2 else 0
        if 0 < self.prefilter_dims < dims and len(self.labels_) >= self.prefilter_min_rows:
            # Uncentred principal axes: the projection keeps most of each unit vector's length, so
            # dot products in the reduced space rank like cosines.
            _, _, axes = np.linalg.svd(self.embeddings_.T @ self.embeddings_)
            self.basis_ = np.ascontiguousarray(axes[: self.prefilter_dims].T.astype(np.float32))
            self.reduced_ = np.ascontiguousarray(self.embeddings_ @ self.basis_)
        return self

    def __len__(self) -> int:
        return len(self.labels_)

    def query(self, embedding: np.ndarray, probs: np.ndarray, k: int = 4, top_classes: int = 4) -> list[Neighbor]:
        """The k nearest training images among the `top_classes` most probable classes, nearest first."""
        return self.query_batch(np.asarray(embedding).reshape(1, -1), np.asarray(probs).reshape(1, -1),
                                k=k, top_classes=top_classes)[0]

    def query_batch(self, embeddings: np.ndarray, probs: np.ndarray, k: int = 4,
                    top_classes: int = 4) -> list[list[Neighbor]]:
        """`query` for N images at once: the same neighbours, but each class slice is read once per batch."""
        rows, sims = self.nearest_rows(embeddings, probs, k, top_classes)
        return [[Neighbor(str(self.ids_[r]), int(self.labels_[r]), float(d))
                 for r, d in zip(image_rows, np.sqrt(np.maximum(2.0 - 2.0 * image_sims, 0.0)), strict=True)]
                for image_rows, image_sims in zip(rows, sims, strict=True)]

    def nearest_rows(self, embeddings: np.ndarray, probs: np.ndarray, k: int = 4,
                     top_classes: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(index rows, cosine similarities) per image, nearest first, among its `top_classes` classes.

        The per-image matrix-vector products are memory-bound and cost more than the model at full
        index size, so every class slice is multiplied once by all the images that rank it.
        """
        q = _normalise(np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1))
        n_classes = len(self.offsets_) - 1
        top = np.argsort(-np.asarray(probs).reshape(len(q), -1)[:, :n_classes], axis=1, kind="stable")[:, :top_classes]
        best_s = np.full((len(q), max(k, 0)), -np.inf, dtype=np.float32)
        best_r = np.full((len(q), max(k, 0)), -1, dtype=np.int64)
        if k > 0:
            with _one_blas_thread():
                reduced_q = q @ self.basis_ if self.basis_ is not None else None  # once, not per class
                for c in np.unique(top):
                    self._merge_class(int(c), q, reduced_q, top, best_s, best_r)
        found = best_r >= 0
        return [r[m] for r, m in zip(best_r, found, strict=True)], [s[m] for s, m in zip(best_s, found, strict=True)]

    def _merge_class(self, c: int, q: np.ndarray, reduced_q: np.ndarray | None, top: np.ndarray,
                     best_s: np.ndarray, best_r: np.ndarray) -> None:
        """Fold class c's nearest rows into the running top-k of every query that ranks c."""
        k = best_s.shape[1]
        who = np.nonzero((top == c).any(axis=1))[0]
        lo, hi = self.offsets_[c], self.offsets_[c + 1]
        if hi == lo:
            return
        if reduced_q is not None and hi - lo > self.candidates:
            rows = lo + _top_columns(reduced_q[who] @ self.reduced_[lo:hi].T, self.candidates)
            sims = np.einsum("qd,qcd->qc", q[who], self.embeddings_[rows])  # exact cosines of the candidates
        else:
            sims = q[who] @ self.embeddings_[lo:hi].T
            rows = np.broadcast_to(np.arange(lo, hi), sims.shape)
        part = _top_columns(sims, min(k, sims.shape[1]))
        cand_s = np.concatenate([best_s[who], np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_r = np.concatenate([best_r[who], np.take_along_axis(rows, part, axis=1)], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s[who], best_r[who] = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_r, keep, 1)

    def save(self, path: str | Path) -> Path:
        """npz with embeddings (float32, unit rows), labels (int64) and ids (str); no pickles."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:  # np.savez would append .npz to a name without it
            np.savez(handle, embeddings=self.embeddings_, labels=self.labels_, ids=self.ids_)
        return path

    @classmethod
    def load(cls, path: str | Path, **options) -> SimilarityIndex:
        """An index written by save() (options: those of the constructor)."""
        with np.load(path, allow_pickle=False) as data:
            return cls(**options).fit(data["embeddings"], data["labels"], data["ids"])


def _top_columns(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indexes of each row's n largest scores, in no particular order."""
    if n >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(scores, scores.shape[1] - n, axis=1)[:, -n:]
