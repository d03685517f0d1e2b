"""Records survive a JSON round trip with the field names other stages read."""

from __future__ import annotations

import json
from datetime import UTC

import numpy as np
import pytest

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


def test_new_request_ids_are_time_ordered_hex_and_unique():
    from ml.records import REQUEST_ID_RE, new_request_id

    t0 = 1_796_000_000.0  # 2026-11-30
    ids = [new_request_id(now=t0 + (step + 0.5) / 1000) for step in (0, 1, 2, 1000, 3_600_000) for _ in range(5)]
    groups = [ids[i:i + 5] for i in range(0, len(ids), 5)]  # 5 ids per millisecond
    assert all(max(a) < min(b) for a, b in zip(groups[:-1], groups[1:], strict=True))  # later ms sorts after
    assert all(REQUEST_ID_RE.match(i) for i in ids)
    same_ms = {new_request_id(now=t0) for _ in range(2000)}
    assert len(same_ms) == 2000  # 80 random bits: no collision within one millisecond
    assert len({i[12:] for i in same_ms}) == 2000 and len({i[:12] for i in same_ms}) == 1


def test_request_id_age_reads_the_creation_time_back():
    import random
    import uuid

    from ml.records import new_request_id, request_id_age_s

    t0 = 1_796_000_000.0
    made = new_request_id(now=t0)
    assert request_id_age_s(made, now=t0 + 12.5) == pytest.approx(12.5, abs=0.002)
    assert request_id_age_s(made, now=t0 - 2.0) == pytest.approx(-2.0, abs=0.002)  # a clock ahead of ours
    assert 0 <= request_id_age_s(new_request_id()) < 5
    for no_time in ("", "xyz", "F" * 32, "0" * 32, "f" * 32, made[:-1], made + "0", None):
        assert request_id_age_s(no_time) is None, no_time
    rng = random.Random(0)
    legacy = [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(500)]  # the old uuid4 ids
    assert sum(request_id_age_s(i) is not None for i in legacy) <= 2  # random times: rarely 2024..tomorrow
