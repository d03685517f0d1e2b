"""SimilarityIndex: the training images nearest to an upload, among the classes the model finds likely.

Embeddings are L2-normalised and stored sorted by class, so a query is one
matmul over the rows of the top classes only (about 4/13 of the index).
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


class SimilarityIndex:
    """Exact nearest neighbours over training embeddings, restricted to the most probable classes."""

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
        return self

    def __len__(self) -> int:
        return len(self.labels_)

    def query(self, embedding: np.ndarray, probs: np.ndarray, k: int = 4, top_classes: int = 4) -> list[Neighbor]:
        """The k nearest training images among the `top_classes` most probable classes, nearest first."""
        query = _normalise(np.asarray(embedding).reshape(-1))
        probs = np.asarray(probs).reshape(-1)[: len(self.offsets_) - 1]
        classes = np.argsort(-probs, kind="stable")[:top_classes]
        rows = np.concatenate([np.arange(self.offsets_[c], self.offsets_[c + 1]) for c in classes]) \
            if len(classes) else np.zeros(0, dtype=np.int64)
        if len(rows) == 0 or k <= 0:
            return []
        # Contiguous slices avoid copying the candidate rows (fancy indexing would copy them).
        with _one_blas_thread():
            sims = np.concatenate([self.embeddings_[self.offsets_[c]:self.offsets_[c + 1]] @ query
                                   for c in classes])
        k = min(k, len(rows))
        best = np.argpartition(-sims, k - 1)[:k]
        best = best[np.argsort(-sims[best], kind="stable")]
        # |a - b| = sqrt(2 - 2 cos) for unit vectors.
        distances = np.sqrt(np.maximum(2.0 - 2.0 * sims[best], 0.0))
        return [Neighbor(str(self.ids_[rows[i]]), int(self.labels_[rows[i]]), float(d))
                for i, d in zip(best, distances, strict=True)]

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
                for c in np.unique(top):
                    self._merge_class(int(c), q, top, best_s, best_r)
        found = best_r >= 0
        return [r[m] for r, m in zip(best_r, found, strict=True)], [s[m] for s, m in zip(best_s, found, strict=True)]

    def _merge_class(self, c: int, q: np.ndarray, top: np.ndarray, best_s: np.ndarray, best_r: np.ndarray) -> None:
        """Fold class c's nearest rows into the running top-k of every query that ranks c."""
        k = best_s.shape[1]
        who = np.nonzero((top == c).any(axis=1))[0]
        block = self.embeddings_[self.offsets_[c]:self.offsets_[c + 1]]
        if not len(block):
            return
        sims = q[who] @ block.T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s[who], np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_r = np.concatenate([best_r[who], part + self.offsets_[c]], axis=1)
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
    def load(cls, path: str | Path) -> SimilarityIndex:
        """An index written by save()."""
        with np.load(path, allow_pickle=False) as data:
            return cls().fit(data["embeddings"], data["labels"], data["ids"])
