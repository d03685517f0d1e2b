"""Similarity query latency: one image against 65,000 training embeddings, baseline vs SimilarityIndex.

Baseline: brute force over every row (one matmul over all 65,000) and a class mask.
Ours: class-partitioned matrix, one matmul over the top-4 classes' slices only.
Batched: `query_batch` for --batch images at once against `query` in a loop (per-image ms).
Prints one JSON line.
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


def baseline_query(unit: np.ndarray, labels: np.ndarray, query: np.ndarray, probs: np.ndarray, k: int = 4,
                   top_classes: int = 4) -> np.ndarray:
    """Brute force: similarity to every row, then keep the rows of the top classes."""
    sims = unit @ (query / np.linalg.norm(query))
    sims[~np.isin(labels, np.argsort(-probs)[:top_classes])] = -np.inf
    best = np.argpartition(-sims, k)[:k]
    return best[np.argsort(-sims[best])]


def timed_ms(fn, queries: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Median and p99 milliseconds per single-image query."""
    times = []
    for q, p in zip(queries, probs, strict=True):
        start = time.perf_counter()
        fn(q, p)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.percentile(times, 99))


def batch_vs_loop(index: SimilarityIndex, queries: np.ndarray, probs: np.ndarray, batch: int) -> tuple[float, float]:
    """Median per-image ms of `query` in a loop and of `query_batch`, over batches of `batch` images."""
    loop, batched = [], []
    for start in range(0, len(queries) - batch + 1, batch):
        q, p = queries[start:start + batch], probs[start:start + batch]
        t0 = time.perf_counter()
        expected = [index.query(a, b) for a, b in zip(q, p, strict=True)]
        t1 = time.perf_counter()
        got = index.query_batch(q, p)
        t2 = time.perf_counter()
        assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in expected], "query_batch disagrees"
        loop.append((t1 - t0) * 1000 / batch)
        batched.append((t2 - t1) * 1000 / batch)
    return float(np.median(loop)), float(np.median(batched))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=65000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=13)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    labels = rng.integers(0, args.classes, args.n)
    ids = [f"bench:train:{i}" for i in range(args.n)]
    start = time.perf_counter()
    index = SimilarityIndex().fit(embeddings, labels, ids)
    fit_s = time.perf_counter() - start
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    probs = rng.dirichlet(np.ones(args.classes), size=args.queries)
    # Same answers first: the speed-up must not change the neighbours.
    for q, p in zip(queries[:20], probs[:20], strict=True):
        ours = [int(h.id.rsplit(":", 1)[1]) for h in index.query(q, p)]
        assert ours == baseline_query(unit, labels, q, p).tolist(), "index disagrees with brute force"
    base_med, base_p99 = timed_ms(lambda q, p: baseline_query(unit, labels, q, p), queries, probs)
    ours_med, ours_p99 = timed_ms(lambda q, p: index.query(q, p), queries, probs)
    loop_ms, batch_ms = batch_vs_loop(index, queries, probs, args.batch)
    print(json.dumps({"bench": "similarity", "n": args.n, "dim": args.dim, "classes": args.classes,
                      "batch": args.batch, "loop_ms_per_image": round(loop_ms, 3),
                      "query_batch_ms_per_image": round(batch_ms, 3),
                      "fit_s": round(fit_s, 3), "baseline_ms_median": round(base_med, 3),
                      "baseline_ms_p99": round(base_p99, 3), "index_ms_median": round(ours_med, 3),
                      "index_ms_p99": round(ours_p99, 3), "target_ms": 5.0, "meets_target": ours_med < 5.0}))


if __name__ == "__main__":
    main()
