"""Watermark: across runs no request is read twice and none is skipped, late-landing batches included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ml import layout
from ml.config import CIFAR10_CLASSES
from ml.monitoring import synthetic
from ml.monitoring.window import Watermark, batch_time, read_batches
from ml.storage import LocalStore, ObjectStore

CLASSES = list(CIFAR10_CLASSES)
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def consume(store: ObjectStore) -> list[str]:
    """One monitoring run: read pending batches, then advance and save the watermark."""
    mark = Watermark.load(store)
    keys = mark.pending(store)
    ids = [r.request_id for r in read_batches(store, keys)]
    mark.advanced(keys).save(store)
    return ids


def ship(store: ObjectStore, seed: int, when: datetime, n: int = 5, batch_id: str | None = None) -> list[str]:
    recs = synthetic.records(n, CLASSES, seed=seed)
    synthetic.write_batch(store, recs, when, batch_id or f"s{seed}")
    return [r.request_id for r in recs]


def check_exactly_once(store: ObjectStore) -> None:
    """Runs interleaved with shipping, including batches that land after newer ones were processed."""
    seen: list[str] = []
    shipped = ship(store, 1, T0) + ship(store, 2, T0 + timedelta(minutes=1))
    seen += consume(store)
    shipped += ship(store, 3, T0 + timedelta(minutes=5))
    seen += consume(store)
    late_a = ship(store, 4, T0 + timedelta(minutes=2), batch_id="late")  # sealed before the last key, lands now
    shipped += late_a
    seen += consume(store)
    assert set(late_a) <= set(seen)
    seen += consume(store)  # nothing new: reads nothing
    shipped += ship(store, 5, T0 + timedelta(hours=1)) + ship(store, 6, T0 + timedelta(hours=2, minutes=3))
    seen += consume(store)
    late_b = ship(store, 7, T0 + timedelta(hours=1, minutes=30), batch_id="late2")  # an hour already read
    shipped += late_b
    seen += consume(store)
    assert len(seen) == len(set(seen)), "a request was read twice"
    assert sorted(seen) == sorted(shipped), "a request was skipped"


def test_exactly_once_on_a_local_store(tmp_path):
    check_exactly_once(LocalStore(tmp_path))


def test_ledger_is_pruned_to_the_lookback(tmp_path):
    store = LocalStore(tmp_path)
    for hour in range(10):
        ship(store, hour, T0 + timedelta(hours=hour))
        consume(store)
    mark = Watermark.load(store)
    assert mark.last_key.endswith("s9.jsonl")
    assert all(batch_time(k) >= batch_time(mark.last_key) - timedelta(hours=6) for k in mark.ledger)
    assert len(mark.ledger) == 7  # hours 3..9


def test_listing_ignores_images_and_starts_at_the_lookback(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes(layout.request_image(T0, "abc", "png"), b"png")
    ship(store, 1, T0)
    mark = Watermark.load(store)
    assert all(layout.is_request_batch(k) for k in mark.pending(store))
    consume(store)
    assert Watermark.load(store).list_from() < layout.request_batch(T0 - timedelta(hours=5), "x")


def test_duplicate_request_ids_are_read_once(tmp_path):
    store = LocalStore(tmp_path)
    recs = synthetic.records(4, CLASSES, seed=1)
    synthetic.write_batch(store, recs, T0, "a")
    synthetic.write_batch(store, recs[2:], T0 + timedelta(seconds=1), "retry")
    assert len(read_batches(store, Watermark.load(store).pending(store))) == 4


@pytest.mark.parametrize("key", ["requests/2026/03/01/10/1772359200000-abc.jsonl"])
def test_batch_time_reads_the_ship_time(key):
    assert batch_time(key) == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
