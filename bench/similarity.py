"""Similar-image search: cost per image and agreement with exact search, exact scan vs PCA prefilter.

    .venv/bin/python bench/similarity.py [--index BUNDLE/similarity/index.npz] [--batch 32]

Baseline: brute force over every row (one matmul over the whole index) and a class mask.
`exact`: SimilarityIndex scanning the top-4 classes' slices on the full vectors.
`prefilter`: the default, scanning them on the leading principal components and re-ranking
the best candidates exactly. Both are timed on batches of --batch images (`query_batch`, as the
service calls it), in the same run. `recall_at_4` is the share of the brute-force top 4 the
prefilter returns; it only means something on a trained model's embeddings (--index): on the
synthetic default (isotropic noise, no structure for PCA to keep) it is reported but labelled.
Queries are index rows held out of the index, with class probabilities from their similarity
to the class centroids. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ml.similarity import SimilarityIndex  # noqa: E402

K, TOP_CLASSES = 4, 4


def baseline_query(unit: np.ndarray, labels: np.ndarray, query: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Brute force: similarity to every row, then keep the rows of the top classes."""
    sims = unit @ (query / np.linalg.norm(query))
    sims[~np.isin(labels, np.argsort(-probs)[:TOP_CLASSES])] = -np.inf
    best = np.argpartition(-sims, K)[:K]
    return best[np.argsort(-sims[best])]


def per_image_ms(index: SimilarityIndex, queries: np.ndarray, probs: np.ndarray, batch: int) -> float:
    """Median milliseconds per image of `query_batch` over batches of `batch` images."""
    times = []
    for start in range(0, len(queries) - batch + 1, batch):
        t0 = time.perf_counter()
        index.query_batch(queries[start:start + batch], probs[start:start + batch], k=K, top_classes=TOP_CLASSES)
        times.append((time.perf_counter() - t0) * 1000 / batch)
    return float(np.median(times))


def load_embeddings(args, rng) -> tuple[np.ndarray, np.ndarray, str]:
    if args.index:
        with np.load(args.index, allow_pickle=False) as data:
            return data["embeddings"].astype(np.float32), data["labels"], str(args.index)
    labels = rng.integers(0, args.classes, args.n)
    return rng.normal(size=(args.n, args.dim)).astype(np.float32), labels, "synthetic (timing only)"


def centroid_probs(queries: np.ndarray, unit: np.ndarray, labels: np.ndarray) -> np.ndarray:
    centroids = np.stack([unit[labels == c].mean(axis=0) for c in np.unique(labels)])
    logits = 10 * (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ centroids.T
    return np.exp(logits - logits.max(axis=1, keepdims=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", help="a bundle's similarity/index.npz (a trained model's embeddings)")
    parser.add_argument("--n", type=int, default=65000, help="synthetic rows (without --index)")
    parser.add_argument("--dim", type=int, default=192, help="synthetic dimensions (without --index)")
    parser.add_argument("--classes", type=int, default=13, help="synthetic classes (without --index)")
    parser.add_argument("--queries", type=int, default=640)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    embeddings, labels, source = load_embeddings(args, rng)
    held = rng.permutation(len(labels))[:args.queries]
    keep = np.setdiff1d(np.arange(len(labels)), held)
    queries, embeddings, labels = embeddings[held], embeddings[keep], labels[keep]
    ids = [f"bench:train:{i}" for i in range(len(labels))]
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    probs = centroid_probs(queries, unit, labels)
    exact = SimilarityIndex(prefilter_dims=0).fit(embeddings, labels, ids)
    start = time.perf_counter()
    prefilter = SimilarityIndex().fit(embeddings, labels, ids)
    fit_s = time.perf_counter() - start
    truth = [baseline_query(unit, labels, q, p).tolist() for q, p in zip(queries, probs, strict=True)]
    found = {name: [[int(h.id.rsplit(":", 1)[1]) for h in hits]
                    for hits in index.query_batch(queries, probs, k=K, top_classes=TOP_CLASSES)]
             for name, index in (("exact", exact), ("prefilter", prefilter))}
    assert found["exact"] == truth, "the exact scan disagrees with brute force"
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found["prefilter"], truth, strict=True)])
    timings = {}
    for _ in range(3):  # alternate, so load on the shared machine hits both alike
        for name, index in (("exact", exact), ("prefilter", prefilter)):
            timings.setdefault(name, []).append(per_image_ms(index, queries, probs, args.batch))
    exact_ms, prefilter_ms = (float(np.median(timings[n])) for n in ("exact", "prefilter"))
    print(json.dumps({"bench": "similarity", "embeddings": source, "n": len(labels), "dim": embeddings.shape[1],
                      "batch": args.batch, "prefilter_dims": prefilter.prefilter_dims,
                      "candidates_per_class": prefilter.candidates, "fit_s": round(fit_s, 3),
                      "exact_ms_per_image": round(exact_ms, 3), "prefilter_ms_per_image": round(prefilter_ms, 3),
                      "speedup": round(exact_ms / prefilter_ms, 2), "recall_at_4": round(float(recall), 4),
                      "recall_meaningful": bool(args.index)}))


if __name__ == "__main__":
    main()
