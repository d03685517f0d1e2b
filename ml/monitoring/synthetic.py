"""Seeded synthetic model outputs, reference packs and logged requests, for tests and benches.

One generative story for both sides: a class is drawn from a prior, its
embedding is the class centre plus noise, and the scalars follow fixed
distributions. `shift` moves every signal together (noisier embeddings,
lower confidence, higher entropy and histogram distance, more OOD).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from ml import layout
from ml.monitoring.reference import ReferencePack
from ml.records import RequestRecord
from ml.storage import ObjectStore

EMBED_DIM = 16


def outputs(n: int, n_classes: int, seed: int, shift: float = 0.0, prior: np.ndarray | None = None,
            dim: int = EMBED_DIM) -> dict:
    """Per-request arrays: predicted, probs, confidence, embeddings, pixel_entropy, hist_distance, is_ood."""
    centres = np.random.default_rng(12345).normal(0, 1.5, size=(n_classes, dim))  # fixed across calls
    rng = np.random.default_rng(seed)
    labels = rng.choice(n_classes, size=n, p=prior)
    embeddings = centres[labels] + rng.normal(shift, 1 + shift, size=(n, dim))  # shift moves and widens
    logits = -((embeddings[:, None, :] - centres[None]) ** 2).sum(-1) / 2.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return {"labels": labels, "predicted": probs.argmax(1), "probs": probs.astype(np.float32),
            "confidence": probs.max(1).astype(np.float32), "embeddings": embeddings.astype(np.float32),
            "pixel_entropy": rng.normal(7.0 + 0.3 * shift, 0.4, n).astype(np.float32),
            "hist_distance": rng.beta(2 + 2 * shift, 8, n).astype(np.float32),
            "is_ood": rng.random(n) < 0.05 * (1 + 4 * shift)}


def pack(classes: list[str], n: int = 2000, seed: int = 0, expected_ood_rate: float = 0.05,
         dim: int = EMBED_DIM) -> ReferencePack:
    """A reference pack from the unshifted distribution."""
    from sklearn.decomposition import PCA

    out = outputs(n, len(classes), seed, dim=dim)
    pca = PCA(n_components=8, random_state=0).fit(out["embeddings"])
    errors = np.array([(out["labels"][out["predicted"] == c] != c).mean() if (out["predicted"] == c).any() else 0.0
                       for c in range(len(classes))])
    result = ReferencePack(
        confidence=out["confidence"], pixel_entropy=out["pixel_entropy"], hist_distance=out["hist_distance"],
        predicted=out["predicted"], probs=out["probs"], embeddings_pca=np.empty((0, 8), np.float32),
        class_histograms=np.full((len(classes), 32), 1 / 32), class_error_rate=errors,
        pca_components=pca.components_.astype(np.float32), pca_mean=pca.mean_.astype(np.float32),
        classes=list(classes), expected_ood_rate=expected_ood_rate, meta={"n": n, "synthetic": True})
    result.embeddings_pca = result.pca_transform(out["embeddings"])
    return result


def records(n: int, classes: list[str], seed: int, shift: float = 0.0, model_version: str = "1",
            start: datetime | None = None, dim: int = EMBED_DIM) -> list[RequestRecord]:
    """n RequestRecords one second apart from `start`."""
    out = outputs(n, len(classes), seed, shift, dim=dim)
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    return [RequestRecord(
        request_id=uuid.UUID(int=np.random.default_rng([seed, i]).integers(2**63)).hex,
        created_at=(start + timedelta(seconds=i)).isoformat(), model_version=model_version,
        label=classes[int(out["predicted"][i])], class_id=int(out["predicted"][i]),
        confidence=float(out["confidence"][i]), probabilities=out["probs"][i].round(5).tolist(),
        is_ood=bool(out["is_ood"][i]), ood_score=0.0, ood_threshold=1.0, ood_detector="synthetic",
        pixel_entropy=float(out["pixel_entropy"][i]), hist_distance=float(out["hist_distance"][i]),
        embedding=out["embeddings"][i]) for i in range(n)]


def write_batch(store: ObjectStore, batch: list[RequestRecord], shipped_at: datetime, batch_id: str) -> str:
    """Write one request-log batch the way the shipper does; returns its key."""
    key = layout.request_batch(shipped_at, batch_id)
    store.put_bytes(key, ("\n".join(r.to_json() for r in batch) + "\n").encode(), "application/x-ndjson")
    return key


def write_batches(store: ObjectStore, recs: list[RequestRecord], shipped_at: datetime,
                  batch_size: int = 200, every: timedelta = timedelta(seconds=5)) -> list[str]:
    """Split records into batches shipped `every` apart from shipped_at; returns the keys."""
    return [write_batch(store, recs[i:i + batch_size], shipped_at + every * (i // batch_size), f"b{i:07d}")
            for i in range(0, len(recs), batch_size)]
