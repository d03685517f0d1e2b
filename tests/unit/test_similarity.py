"""SimilarityIndex: known neighbours come back nearest first, only from the most probable classes."""

from __future__ import annotations

import numpy as np
import pytest

from ml.layout import image_id
from ml.similarity import SimilarityIndex

C, D = 6, 8


@pytest.fixture
def index_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, 300)
    embeddings = rng.normal(size=(300, D)).astype(np.float32) * rng.uniform(0.5, 3, size=(300, 1))
    ids = [image_id("v1", "train", i) for i in range(300)]
    return embeddings, labels, ids


def one_hot(*classes: int) -> np.ndarray:
    probs = np.full(C, 0.01)
    for rank, c in enumerate(classes):
        probs[c] = 0.9 - 0.1 * rank
    return probs


def test_exact_copy_is_the_nearest_neighbour_at_distance_zero(index_data):
    embeddings, labels, ids = index_data
    index = SimilarityIndex().fit(embeddings, labels, ids)
    hits = index.query(embeddings[17] * 5.0, one_hot(labels[17]))  # scale does not matter after normalising
    assert hits[0].id == "v1:train:17" and hits[0].label == labels[17]
    assert hits[0].distance == pytest.approx(0.0, abs=1e-3)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)


def test_matches_brute_force_within_the_top_classes(index_data):
    embeddings, labels, ids = index_data
    index = SimilarityIndex().fit(embeddings, labels, ids)
    query, probs = np.random.default_rng(1).normal(size=D), one_hot(2, 4, 0, 5)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    allowed = np.flatnonzero(np.isin(labels, [2, 4, 0, 5]))
    expected = allowed[np.argsort(np.linalg.norm(unit[allowed] - q, axis=1))[:4]]
    hits = index.query(query, probs, k=4, top_classes=4)
    assert [h.id for h in hits] == [ids[i] for i in expected]


def test_restricts_to_top_classes_even_when_other_classes_are_closer(index_data):
    embeddings, labels, ids = index_data
    index = SimilarityIndex().fit(embeddings, labels, ids)
    target = int(np.flatnonzero(labels == 3)[0])
    hits = index.query(embeddings[target], one_hot(1, 2), k=5, top_classes=2)
    assert len(hits) == 5 and {h.label for h in hits} <= {1, 2}
    assert all(h.id != ids[target] for h in hits)


def test_save_load_round_trip_keeps_ids_labels_and_unit_rows(tmp_path, index_data):
    embeddings, labels, ids = index_data
    index = SimilarityIndex().fit(embeddings, labels, ids)
    path = index.save(tmp_path / "similarity" / "index.npz")
    with np.load(path, allow_pickle=False) as stored:
        assert stored["embeddings"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(stored["embeddings"], axis=1), 1.0, rtol=1e-5)
        assert set(stored["ids"]) == set(ids)
    loaded = SimilarityIndex.load(path)
    probs = one_hot(0, 1, 2, 3)
    before, after = index.query(embeddings[5], probs), loaded.query(embeddings[5], probs)
    assert [(h.id, h.label) for h in after] == [(h.id, h.label) for h in before]
    assert [h.distance for h in after] == pytest.approx([h.distance for h in before], abs=1e-5)


def test_fewer_candidates_than_k_returns_what_exists():
    index = SimilarityIndex().fit(np.eye(3, 4), np.array([0, 1, 2]), ["a:train:0", "a:train:1", "a:train:2"])
    hits = index.query(np.ones(4), np.array([0.7, 0.2, 0.1]), k=4, top_classes=1)
    assert [h.id for h in hits] == ["a:train:0"]


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError):
        SimilarityIndex().fit(np.zeros((3, 4)), np.zeros(2), ["a", "b", "c"])


def brute_force(embeddings, labels, queries, probs, k, top_classes):
    """Row indexes and distances of the k nearest unit vectors among each query's top classes."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    out = []
    for q, p in zip(queries, probs, strict=True):
        sims = unit @ (q / np.linalg.norm(q))
        sims[~np.isin(labels, np.argsort(-p)[:top_classes])] = -np.inf
        best = np.argsort(-sims)[:k]
        out.append((best.tolist(), np.sqrt(np.maximum(2 - 2 * sims[best], 0)).tolist()))
    return out


@pytest.mark.parametrize("k, top_classes", [(4, 4), (1, 1), (7, 2), (3, 6)])
def test_query_batch_matches_brute_force_for_each_image(index_data, k, top_classes):
    embeddings, labels, ids = index_data
    index = SimilarityIndex().fit(embeddings, labels, ids)
    rng = np.random.default_rng(3)
    queries, probs = rng.normal(size=(25, D)), rng.dirichlet(np.ones(C), size=25)
    batch = index.query_batch(queries, probs, k=k, top_classes=top_classes)
    assert len(batch) == 25
    for hits, (rows, distances) in zip(batch, brute_force(embeddings, labels, queries, probs, k, top_classes),
                                       strict=True):
        assert [h.id for h in hits] == [ids[r] for r in rows] and [h.label for h in hits] == labels[rows].tolist()
        assert [h.distance for h in hits] == pytest.approx(distances, abs=1e-5)


def test_pca_prefilter_finds_the_exact_neighbours_when_the_embeddings_have_few_directions():
    """Trained embeddings concentrate on few directions; the prefilter scans those and re-ranks exactly."""
    rng = np.random.default_rng(5)
    n, dims, rank = 3000, 48, 6
    labels = rng.integers(0, C, n)
    mixing = rng.normal(size=(rank, dims))
    embeddings = (rng.normal(size=(n, rank)) + 2 * np.eye(C, rank)[labels]) @ mixing
    embeddings += 0.01 * rng.normal(size=embeddings.shape)
    ids = [image_id("v1", "train", i) for i in range(n)]
    index = SimilarityIndex(prefilter_dims=8, candidates=16, prefilter_min_rows=0).fit(embeddings, labels, ids)
    assert index.basis_ is not None
    queries = (rng.normal(size=(40, rank)) + 2 * np.eye(C, rank)[rng.integers(0, C, 40)]) @ mixing
    probs = rng.dirichlet(np.ones(C), size=40)
    got = index.query_batch(queries, probs, k=4, top_classes=3)
    for hits, (rows, distances) in zip(got, brute_force(embeddings, labels, queries, probs, 4, 3), strict=True):
        assert [h.id for h in hits] == [ids[r] for r in rows]
        assert [h.distance for h in hits] == pytest.approx(distances, abs=1e-5)


def test_query_batch_with_fewer_candidates_than_k():
    index = SimilarityIndex().fit(np.eye(3, 4), np.array([0, 1, 2]), ["a:train:0", "a:train:1", "a:train:2"])
    hits = index.query_batch(np.ones((2, 4)), np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]), k=4, top_classes=1)
    assert [[h.id for h in row] for row in hits] == [["a:train:0"], ["a:train:2"]]
