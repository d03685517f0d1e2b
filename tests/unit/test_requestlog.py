"""The spool: records survive restarts, ship exactly once, feedback finds its request's image."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from ml import layout
from ml.records import FeedbackRecord, RequestRecord, utc_now_iso
from ml.requestlog import RequestLog, UnknownRequest
from ml.storage import LocalStore, StorageUnavailable


def make_record(label: str = "cat", version: str = "3") -> RequestRecord:
    return RequestRecord(
        request_id=uuid.uuid4().hex, created_at=utc_now_iso(), model_version=version, label=label,
        class_id=3, confidence=0.9, probabilities=[0.01] * 13, is_ood=False, ood_score=0.1,
        ood_threshold=0.5, ood_detector="test", pixel_entropy=5.0, hist_distance=0.2,
        embedding=np.arange(8, dtype=np.float32), image_format="PNG", byte_size=4)


def shipped_records(store) -> list[dict]:
    rows = []
    for key in store.list(layout.REQUESTS):
        if layout.is_request_batch(key):
            rows += [json.loads(line) for line in store.get_bytes(key).decode().splitlines() if line]
    return rows


class FlakyStore(LocalStore):
    """A local store that can be switched off, like an S3 outage."""

    down = False

    def put_many(self, objects):  # put_bytes goes through here too
        if self.down:
            raise StorageUnavailable("store is down (test)")
        super().put_many(objects)


@pytest.fixture
def store(settings):
    return FlakyStore(settings.store_dir)


def test_records_and_images_ship_in_batches(settings, store):
    settings = settings.with_(request_log_batch=3)
    rlog = RequestLog(settings, store)
    records = [make_record() for _ in range(7)]
    for i, rec in enumerate(records):
        rlog.log_request(rec, f"img{i}".encode(), "png")
    assert rlog.backlog() == 7
    assert rlog.flush()
    rows = shipped_records(store)
    assert sorted(r["request_id"] for r in rows) == sorted(r.request_id for r in records)
    batches = [k for k in store.list(layout.REQUESTS) if layout.is_request_batch(k)]
    assert len(batches) == 3  # 3 + 3 + 1
    for row in rows:
        assert store.get_bytes(row["image_key"]).startswith(b"img")
    assert RequestRecord.from_json(json.dumps(rows[0])).embedding.shape == (8,)


def test_outage_then_recovery_ships_each_record_once(settings, store):
    rlog = RequestLog(settings, store)
    store.down = True
    first = [make_record() for _ in range(5)]
    for rec in first:
        rlog.log_request(rec, b"x", "png")
    with pytest.raises(StorageUnavailable):
        rlog.flush()
    assert rlog.backlog() == 5
    store.down = False
    assert rlog.flush()
    assert rlog.flush()  # nothing left: a second flush must not re-ship
    ids = [r["request_id"] for r in shipped_records(store)]
    assert sorted(ids) == sorted(r.request_id for r in first)


def test_restart_keeps_unshipped_records_and_index(settings, store):
    store.down = True
    rlog = RequestLog(settings, store)
    rec = make_record(label="dog", version="7")
    rlog.log_request(rec, b"original-bytes", "jpeg")
    with pytest.raises(StorageUnavailable):
        rlog.flush()  # sealed on disk with its keys fixed, not shipped
    rlog.log_request(make_record(), b"y", "png")  # unsealed when the process "dies"
    rlog.writer.close()
    rlog.index.close()
    rlog.spool_lock.release()  # the process is gone: so is its flock

    store.down = False
    again = RequestLog(settings, store)
    assert again.backlog() == 2
    assert again.lookup(rec.request_id)["label"] == "dog"
    assert again.flush()
    assert len(shipped_records(store)) == 2
    assert len([k for k in store.list(layout.REQUESTS) if layout.is_request_batch(k)]) == 2


@pytest.mark.parametrize("ship_first", [False, True])
def test_feedback_copies_the_original_bytes(settings, store, ship_first):
    rlog = RequestLog(settings, store)
    rec = make_record(label="cat", version="5")
    rlog.log_request(rec, b"\x89PNG-original", "png")
    if ship_first:
        assert rlog.flush()  # the spool copy is gone: the shipper copies from the store
    fb = rlog.log_feedback(rec.request_id, "dog", source="api")
    assert (fb.predicted_label, fb.model_version, fb.label) == ("cat", "5", "dog")
    assert rlog.flush()
    stored = FeedbackRecord.from_json(store.get_bytes(layout.feedback_record(rec.request_id)))
    assert stored.label == "dog" and stored.disagrees
    assert store.get_bytes(stored.image_key) == b"\x89PNG-original"
    assert stored.image_key == layout.feedback_image(rec.request_id, "png")


def test_unknown_request_is_rejected(settings, store):
    rlog = RequestLog(settings, store)
    with pytest.raises(UnknownRequest):
        rlog.log_feedback("nope", "cat")


def test_background_shipper_ships_on_interval(settings, store):
    settings = settings.with_(request_log_interval_s=0.2)
    rlog = RequestLog(settings, store).start()
    try:
        rlog.log_request(make_record(), b"z", "png")
        import time

        deadline = time.monotonic() + 5
        while rlog.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rlog.backlog() == 0
        assert len(shipped_records(store)) == 1
    finally:
        rlog.stop()
