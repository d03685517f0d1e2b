"""Validation: only exact duplicates go (first source wins), every skip is counted, empty classes fail."""

from __future__ import annotations

import numpy as np
import pytest

from ml.data import validate
from ml.data.base import DataError, Loaded
from ml.data.validate import clean, first_occurrences, merge


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_exact_duplicates_keep_their_first_occurrence():
    x = images(50)
    x[10], x[40], x[41] = x[3], x[3], x[7]
    near = x[20].copy()
    near[0, 0, 0] ^= 1  # one bit away from x[20]: not a duplicate
    x[30] = near
    assert list(first_occurrences(x)) == [i for i in range(50) if i not in (10, 40, 41)]


def test_a_hash_collision_never_drops_a_different_image(monkeypatch):
    x = images(20)
    x[5] = x[2]
    monkeypatch.setattr(validate.np, "dot", lambda a, b: np.zeros(len(a), np.uint64))  # everything collides
    assert list(first_occurrences(x)) == [i for i in range(20) if i != 5]


def test_merge_counts_every_skip_but_keeps_few_examples():
    parts = [Loaded(images(3, s), np.arange(3), skipped=[(f"s{s}/{i}.jpg", "bad") for i in range(4)])
             for s in range(3)]
    pool = merge(parts)
    assert pool.skipped_count == 12 and len(pool.skipped) == 5
    assert list(pool.source) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_duplicates_across_sources_keep_the_earlier_source():
    a, b = images(4, 1), images(4, 2)
    b[0] = a[2]
    pool = clean(merge([Loaded(a, np.arange(4)), Loaded(b, np.arange(4))]), ("w", "x", "y", "z"))
    assert pool.duplicates == 1 and list(pool.source) == [0, 0, 0, 0, 1, 1, 1]


def test_empty_class_names_the_class():
    with pytest.raises(DataError, match="no images for class y, z"):
        clean(merge([Loaded(images(2), np.array([0, 1]))]), ("w", "x", "y", "z"))
