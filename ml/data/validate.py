"""Merge sources into one pool, drop exact duplicates, and refuse a class with no images."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from ml.data.base import MAX_EXAMPLES, DataError, Loaded
from ml.data.identity import content_ids

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """All real images of a build: uint8 x, class ids y, each image's source index and identity."""

    x: np.ndarray
    y: np.ndarray
    source: np.ndarray
    ids: np.ndarray | None = None  # None only for pools built by hand; clean() fills it in
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    unknown_classes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def problems(self) -> dict:
        """The JSON-able summary of what was left out, for the manifest and the report."""
        return {"skipped": self.skipped_count, "skipped_examples": [list(p) for p in self.skipped],
                "duplicates": self.duplicates, "unknown_classes": dict(self.unknown_classes),
                "notes": list(self.notes)}


def merge(loaded: list[Loaded]) -> Pool:
    """One pool from every source's images, in source order; keeps the full skip count."""
    pool = Pool(
        x=loaded[0].x if len(loaded) == 1 else np.concatenate([part.x for part in loaded]),
        y=np.concatenate([part.y for part in loaded]).astype(np.int64),
        source=np.concatenate([np.full(len(part), i, dtype=np.int16) for i, part in enumerate(loaded)]),
        ids=np.concatenate([content_ids(part.x) if part.ids is None else part.ids for part in loaded]),
    )
    for part in loaded:
        pool.skipped_count += len(part.skipped)
        pool.skipped.extend(part.skipped[: MAX_EXAMPLES - len(pool.skipped)])
        for name, n in part.unknown_classes.items():
            pool.unknown_classes[name] = pool.unknown_classes.get(name, 0) + n
        pool.notes.extend(part.notes)
    return pool


def first_occurrences(x: np.ndarray) -> np.ndarray:
    """Indices of the first image of each distinct 32x32 pixel content, in input order.

    A vectorised 64-bit multilinear hash finds candidate duplicates (~10x faster than a
    per-image digest); every candidate is then compared byte for byte, so only exact
    duplicates are dropped. On a hash collision between different images the exact
    (slower) digest path decides instead.
    """
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    if len(x) == 0 or flat.shape[1] % 8:
        return _first_by_digest(flat)
    words = flat.view(np.uint64)
    weights = np.random.default_rng(0).integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
    hashes = np.dot(words, weights)  # integer dot: wraps modulo 2**64 by design, no temporaries
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    group_first = first[inverse.ravel()]
    candidates = np.flatnonzero(group_first != np.arange(len(x)))
    if not (flat[candidates] == flat[group_first[candidates]]).all():
        return _first_by_digest(flat)
    return np.sort(first)


def _first_by_digest(flat: np.ndarray) -> np.ndarray:
    seen: set[bytes] = set()
    keep = np.zeros(len(flat), dtype=bool)
    for i, row in enumerate(flat):
        digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            keep[i] = True
    return np.flatnonzero(keep)


def clean(pool: Pool, classes: tuple[str, ...]) -> Pool:
    """The pool without exact duplicates (the first source wins); raises if a class is empty."""
    keep = first_occurrences(pool.x)
    pool.duplicates = len(pool) - len(keep)
    if pool.ids is None:
        pool.ids = content_ids(pool.x)
    if pool.duplicates:  # np.take copies whole rows, far faster than fancy indexing here
        pool.x, pool.y, pool.source = np.take(pool.x, keep, axis=0), pool.y[keep], pool.source[keep]
        pool.ids = pool.ids[keep]
    counts = np.bincount(pool.y, minlength=len(classes))
    empty = [name for name, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"no images for class {', '.join(empty)}: add a source that has them "
            "(VISIONLOOP_DATA_SOURCES, e.g. folder:<dir with a folder per class>) "
            "or remove the class from VISIONLOOP_SUPERCLASSES"
        )
    if pool.skipped_count:
        log.warning("skipped %d unreadable or misplaced files, e.g. %s", pool.skipped_count,
                    "; ".join(f"{p} ({why})" for p, why in pool.skipped))
    if pool.unknown_classes:
        log.warning("skipped folders that are not configured classes: %s", pool.unknown_classes)
    return pool


def counts_by(y: np.ndarray, groups: np.ndarray, group_names: list[str],
              classes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """{group name: {class: count}} for every group (zeros included, so tables line up)."""
    table = np.zeros((len(group_names), len(classes)), dtype=np.int64)
    np.add.at(table, (groups.astype(np.int64), y), 1)
    return {g: {c: int(n) for c, n in zip(classes, row, strict=True)}
            for g, row in zip(group_names, table, strict=True)}
