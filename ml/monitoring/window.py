"""Read the request log since the watermark, so no request is read twice and none is skipped.

Batch keys embed their ship time and sort in write order, but a batch shipped
earlier can land later (several serving processes, an outage that delays a
shipper). The watermark therefore keeps the newest key processed plus a ledger
of every key processed within `lookback` of it; each run lists from
`newest - lookback` and takes only keys not in the ledger. A batch that lands
more than `lookback` after its ship time is the one case not caught.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from ml import layout
from ml.records import RequestRecord, utc_now_iso
from ml.storage import ObjectNotFound, ObjectStore

LOOKBACK = timedelta(hours=6)
READ_WORKERS = 16  # I/O bound: threads overlap round trips; MinioStore's pool holds 16 connections


def batch_time(key: str) -> datetime:
    """Ship time embedded in a batch key `.../<shipped_ms>-<batch_id>.jsonl`."""
    millis = int(key.rsplit("/", 1)[1].split("-", 1)[0])
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


def _time_key(when: datetime) -> str:
    """A key that sorts just before every batch shipped at or after `when`."""
    return f"{layout.hour_prefix(when)}{int(when.timestamp() * 1000):013d}"


@dataclass
class Watermark:
    """The newest batch key processed and the keys processed within the lookback before it."""

    last_key: str | None = None
    ledger: list[str] = field(default_factory=list)
    updated_at: str | None = None
    lookback_s: float = LOOKBACK.total_seconds()

    @classmethod
    def load(cls, store: ObjectStore) -> Watermark:
        try:
            data = store.get_json(layout.WATERMARK)
        except ObjectNotFound:
            return cls()
        return cls(data.get("last_key"), list(data.get("ledger", [])), data.get("updated_at"),
                   float(data.get("lookback_s", LOOKBACK.total_seconds())))

    def save(self, store: ObjectStore) -> None:
        store.put_json(layout.WATERMARK, asdict(self))

    def list_from(self) -> str | None:
        """The `start_after` key for listing: lookback before the newest key processed."""
        if self.last_key is None:
            return None
        return _time_key(batch_time(self.last_key) - timedelta(seconds=self.lookback_s))

    def pending(self, store: ObjectStore) -> list[str]:
        """Batch keys not processed yet, oldest first."""
        done = set(self.ledger)
        keys = store.list(layout.REQUESTS, start_after=self.list_from())
        return [k for k in keys if layout.is_request_batch(k) and k not in done]

    def advanced(self, keys: list[str]) -> Watermark:
        """The watermark after processing keys; the ledger drops keys older than the new listing start."""
        if not keys:
            return self
        last = max([*keys, *([self.last_key] if self.last_key else [])])
        start = batch_time(last) - timedelta(seconds=self.lookback_s)
        ledger = sorted(k for k in set(self.ledger) | set(keys) if batch_time(k) >= start)
        return Watermark(last, ledger, utc_now_iso(), self.lookback_s)


def parse_batch(data: bytes) -> list[RequestRecord]:
    return [RequestRecord.from_json(line) for line in data.splitlines() if line.strip()]


def read_batches(store: ObjectStore, keys: list[str], workers: int | None = None) -> list[RequestRecord]:
    """All records of the batches, read concurrently; a request id seen twice is kept once."""
    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=min(workers or READ_WORKERS, len(keys))) as pool:
        batches = list(pool.map(lambda key: parse_batch(store.get_bytes(key)), keys))
    seen: set[str] = set()
    records = []
    for batch in batches:
        for record in batch:
            if record.request_id not in seen:  # a shipper retry may write the same request twice
                seen.add(record.request_id)
                records.append(record)
    return records


def read_json_objects(store: ObjectStore, keys: list[str], workers: int | None = None) -> list[dict]:
    """Small JSON objects (feedback records) read concurrently; vanished ones are skipped."""
    def read(key: str) -> dict | None:
        try:
            return json.loads(store.get_bytes(key))
        except ObjectNotFound:
            return None

    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=min(workers or READ_WORKERS, len(keys))) as pool:
        return [item for item in pool.map(read, keys) if item is not None]
