"""Records survive a JSON round trip with the field names other stages read."""

from __future__ import annotations

import json
from datetime import UTC

import numpy as np

from ml import layout
from ml.records import FeedbackRecord, RequestRecord, decode_embedding, encode_embedding


def test_request_record_round_trip_keeps_embedding():
    emb = np.linspace(-3, 3, 256).astype(np.float32)
    rec = RequestRecord("r1", "2026-11-25T10:00:00+00:00", "3", "cat", 3, 0.9, [0.1] * 13, False,
                        0.2, 0.5, "knn", 6.1, 0.12, emb, image_key="requests/x.png")
    line = rec.to_json()
    assert json.loads(line)["label"] == "cat"
    back = RequestRecord.from_json(line)
    np.testing.assert_allclose(back.embedding, emb, atol=2e-3)
    assert back.probabilities == [0.1] * 13 and back.image_key == "requests/x.png"


def test_unknown_fields_from_newer_writers_are_ignored():
    rec = FeedbackRecord("r1", "dog", "cat", "2", "2026-11-25T10:00:00+00:00", "feedback/images/r1.png")
    data = json.loads(rec.to_json()) | {"added_later": 1}
    back = FeedbackRecord.from_json(json.dumps(data))
    assert back == rec and back.disagrees


def test_embedding_encoding_is_compact():
    assert len(encode_embedding(np.zeros(512))) < 1400
    assert decode_embedding(encode_embedding(np.ones(3))).tolist() == [1.0, 1.0, 1.0]


def test_request_batch_keys_sort_in_ship_order():
    from datetime import datetime, timedelta

    t0 = datetime(2026, 11, 25, 9, 59, 59, tzinfo=UTC)
    keys = [layout.request_batch(t0 + timedelta(seconds=s), "b") for s in (0, 1, 3601)]
    assert keys == sorted(keys)
    assert keys[0].startswith("requests/2026/11/25/09/") and keys[2].startswith("requests/2026/11/25/11/")
    assert all(layout.is_request_batch(k) for k in keys)
    assert not layout.is_request_batch(layout.request_image(t0, "r1", "png"))


def test_image_ids_round_trip_and_reject_garbage():
    import pytest

    assert layout.parse_image_id(layout.image_id("abc", "train", 7)) == ("abc", "train", 7)
    for bad in ("abc", "abc:nope:1", "abc:train:-1", "a:train:x"):
        with pytest.raises(ValueError):
            layout.parse_image_id(bad)
