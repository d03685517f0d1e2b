"""Corrections: one record per request, the image copied once, found whichever worker served the request."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from ml import layout
from ml.records import FeedbackRecord
from ml.requestlog import RequestLog, SpoolUnavailable, UnknownRequest
from tests.unit.test_requestlog import FlakyStore, make_record


class CountingStore(FlakyStore):
    """Counts PUTs per key (a repeated image copy would show as a second PUT)."""

    def __init__(self, root):
        super().__init__(root)
        self.puts: Counter = Counter()

    def put_many(self, objects):  # put_bytes goes through here too
        super().put_many(objects)
        self.puts.update(key for key, _, _ in objects)


@pytest.fixture
def store(settings):
    return CountingStore(settings.store_dir)


def stored_feedback(store, request_id: str) -> FeedbackRecord:
    return FeedbackRecord.from_json(store.get_bytes(layout.feedback_record(request_id)))


def test_repeated_corrections_keep_one_record_and_copy_the_image_once(settings, store, tmp_path):
    rlog = RequestLog(settings, store)
    rec = make_record(label="cat")
    rlog.log_request(rec, b"original-cat", "png")
    rlog.log_feedback(rec.request_id, "dog")
    rlog.log_feedback(rec.request_id, "bird")  # same batch: spooled without a second copy of the bytes
    assert rlog.flush()
    rlog.log_feedback(rec.request_id, "frog")  # after shipping
    assert rlog.flush()
    other = RequestLog(settings, store, spool_dir=tmp_path / "other-worker")
    other.log_feedback(rec.request_id, "deer")  # another worker, through the store
    assert other.flush()
    fb = stored_feedback(store, rec.request_id)
    assert fb.label == "deer" and fb.predicted_label == "cat"
    assert store.get_bytes(fb.image_key) == b"original-cat"
    assert store.puts[fb.image_key] == 1
    assert [k for k in store.list(layout.FEEDBACK) if layout.is_feedback_record(k)] == [
        layout.feedback_record(rec.request_id)]


def test_feedback_through_the_store_from_another_spool(settings, store, tmp_path):
    served = RequestLog(settings, store, spool_dir=tmp_path / "worker-0")
    rec = make_record(label="ship", version="9")
    served.log_request(rec, b"\xff\xd8jpeg-bytes", "jpeg")
    assert served.flush()
    elsewhere = RequestLog(settings, store, spool_dir=tmp_path / "worker-1")
    assert elsewhere.lookup(rec.request_id) is None
    fb = elsewhere.log_feedback(rec.request_id, "airplane", source="api")
    assert (fb.predicted_label, fb.model_version) == ("ship", "9")
    assert elsewhere.flush()
    stored = stored_feedback(store, rec.request_id)
    assert stored.image_key == layout.feedback_image(rec.request_id, "jpeg")
    assert store.get_bytes(stored.image_key) == b"\xff\xd8jpeg-bytes"
    assert stored.image_sha256 == hashlib.sha256(b"\xff\xd8jpeg-bytes").hexdigest()
    with pytest.raises(UnknownRequest):
        elsewhere.log_feedback(make_record().request_id, "cat")
    with pytest.raises(UnknownRequest):
        elsewhere.log_feedback("../../etc/passwd", "cat")


def test_feedback_never_attaches_bytes_that_do_not_match(settings, store, tmp_path):
    served = RequestLog(settings, store, spool_dir=tmp_path / "worker-0")
    rec = make_record()
    served.log_request(rec, b"genuine", "png")
    assert served.flush()
    image_key = served.lookup(rec.request_id)["image_key"]
    store.put_bytes(image_key, b"overwritten by someone else")
    elsewhere = RequestLog(settings, store, spool_dir=tmp_path / "worker-1")
    elsewhere.log_feedback(rec.request_id, "dog")
    assert elsewhere.flush()
    stored = stored_feedback(store, rec.request_id)
    assert stored.label == "dog"
    assert not store.exists(stored.image_key)  # no image beats a wrong image


def test_feedback_for_an_unknown_id_while_the_store_is_down_is_unavailable_not_unknown(settings, store):
    rlog = RequestLog(settings, store)

    def down(key):
        from ml.storage import StorageUnavailable

        raise StorageUnavailable("store is down (test)")

    store.get_bytes = down
    with pytest.raises(SpoolUnavailable, match="object store"):
        rlog.log_feedback(make_record().request_id, "cat")


def test_a_young_unshipped_request_is_retry_later_and_an_old_one_unknown(settings, store):
    """Sent to a replica before the one that answered has shipped it: 503 + Retry-After, not a final 404."""
    import time
    import uuid

    from ml.records import new_request_id
    from ml.requestlog.core import shipping_window_s

    settings = settings.with_(request_log_interval_s=2.0, serve_workers=1)
    window = shipping_window_s(2.0)
    assert window == 2.0 + 1.0 + 20.0 + 5.0  # interval + ship-loop tick + two 10 s backoffs + clock skew
    rlog = RequestLog(settings, store)
    now = time.time()
    for age in (0.0, 3.0, window - 2):
        with pytest.raises(SpoolUnavailable, match="may still be shipping") as info:
            rlog.log_feedback(new_request_id(now=now - age), "cat")
        assert 1 <= info.value.retry_after_s <= 3  # about one ship interval, never past the window
    for never in (new_request_id(now=now - window - 2), new_request_id(now=now - 86400), uuid.uuid4().hex):
        with pytest.raises(UnknownRequest):
            rlog.log_feedback(never, "cat")
    assert rlog.backlog() == 0  # nothing spooled for a request nobody knows


def test_a_young_request_is_found_once_its_worker_has_shipped_it(settings, store, tmp_path):
    from ml.records import new_request_id

    served = RequestLog(settings, store, spool_dir=tmp_path / "replica-a")
    rec = make_record(label="ship")
    rec.request_id = new_request_id()
    served.log_request(rec, b"bytes-of-a", "png")
    elsewhere = RequestLog(settings, store, spool_dir=tmp_path / "replica-b")
    with pytest.raises(SpoolUnavailable):
        elsewhere.log_feedback(rec.request_id, "cat")
    assert served.flush()
    assert elsewhere.log_feedback(rec.request_id, "cat").predicted_label == "ship"
    assert elsewhere.flush()
    assert store.get_bytes(stored_feedback(store, rec.request_id).image_key) == b"bytes-of-a"
