"""Loss-free request and feedback log: an fsync'd local spool shipped to the object store in batches.

Spool layout under `<home>/spool/`:
  segments/<seq>.jsonl  one envelope per line (a request or a feedback record)
  segments/<seq>.bin    the original image bytes; envelopes point at (offset, length)
  sealed/<ms>-<seq>-<batch>.json  a segment with its object keys fixed; `.done` once uploaded
  index.sqlite          request_id -> image location, predicted label, model version

Exactly once: a segment's object keys (ship time, batch id) are chosen when it
is SEALED and written to disk before any upload, so a retry after an outage or
a crash overwrites the same keys (S3 PUTs are idempotent) and never makes a
second copy. Sealed files are shipped in seal order, so batch keys appear in
the store in sorting order (the monitoring watermark relies on it).

Durability window: every record is written to the kernel before the request
is answered (a process crash loses nothing) and fsync'd by a group commit
every `fsync_interval_s` (default 0.1 s): a power loss can lose at most that
window. `fsync_interval_s=0` fsyncs each record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ml import layout
from ml.config import Settings
from ml.records import FeedbackRecord, RequestRecord, utc_now_iso
from ml.requestlog.spool import SpoolIndex, SpoolWriter, read_blob, read_envelopes, write_durably
from ml.storage import ObjectNotFound, ObjectStore, StorageError, open_store

log = logging.getLogger(__name__)
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "gif": "image/gif",
                 "webp": "image/webp", "bmp": "image/bmp", "tiff": "image/tiff"}


class UnknownRequest(KeyError):
    """No request with that id was ever logged here."""


class SpoolUnavailable(RuntimeError):
    """A record could not be made durable (disk full, spool cap reached): answer 503, retry later."""

    def __init__(self, reason: str, retry_after_s: int = 5):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class SpoolLocked(RuntimeError):
    """Another process already writes this spool directory (one writer per spool)."""


class RequestLog:
    """Append-only spool plus a background shipper; thread-safe."""

    def __init__(self, settings: Settings, store: ObjectStore | None = None, fsync_interval_s: float = 0.1,
                 spool_dir: Path | None = None):
        self.settings = settings
        self.store = store or open_store(settings)
        self.dir = Path(spool_dir or Path(settings.home) / "spool").absolute()
        self.batch_size = max(1, settings.request_log_batch)
        self.interval_s = settings.request_log_interval_s
        self.fsync_interval_s = fsync_interval_s
        self.writer = SpoolWriter(self.dir / "segments", self.batch_size, fsync_each=fsync_interval_s <= 0)
        self.index = SpoolIndex(self.dir / "index.sqlite")
        self.sealed_dir = self.dir / "sealed"
        self.store_ok = True
        self._lock = threading.Lock()  # guards the writer and the index
        self._wake, self._stop, self._force = threading.Event(), threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._recover()

    # -- writing ---------------------------------------------------------------------------

    def log_request(self, record: RequestRecord, image: bytes, ext: str) -> None:
        """Spool one classified request and its original bytes before the response goes out."""
        prefix = f'{{"kind":"request","ext":"{ext}","record":'
        with self._lock:
            seq, offset, length = self.writer.append(prefix, record.to_json(), image)
            self.index.add(record.request_id, seq, offset, length, ext, record.label, record.model_version)
        if self.writer.full:
            self._wake.set()

    def log_feedback(self, request_id: str, label: str, source: str = "web") -> FeedbackRecord:
        """Spool a user's label for a logged request; raises UnknownRequest for an unknown id."""
        with self._lock:
            row = self.index.get(request_id)
        if row is None:
            raise UnknownRequest(request_id)
        ext = row["ext"]
        record = FeedbackRecord(request_id=request_id, label=label, predicted_label=row["label"],
                                model_version=row["model_version"], created_at=utc_now_iso(),
                                image_key=layout.feedback_image(request_id, ext), source=source)
        image = read_blob(self.writer.dir, row["segment"], row["offset"], row["length"])
        copy_from = None if image is not None else row["image_key"]
        with self._lock:
            envelope = {"kind": "feedback", "ext": ext, "copy_from": copy_from}
            prefix = json.dumps(envelope)[:-1] + ',"record":'
            self.writer.append(prefix, record.to_json(), image or b"")
        self._wake.set()
        return record

    def lookup(self, request_id: str) -> dict | None:
        with self._lock:
            return self.index.get(request_id)

    def backlog(self) -> int:
        """Records (requests and feedback) not yet in the object store."""
        return self.writer.pending

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RequestLog:
        for target, name in ((self._sync_loop, "spool-sync"), (self._ship_loop, "spool-ship")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Seal and ship everything spooled so far; True when the backlog reached zero."""
        deadline = time.monotonic() + timeout_s
        if not self._threads:  # not started: ship inline (tests, CLI)
            self._sync()
            self._cycle(force=True)
            return self.backlog() == 0
        while time.monotonic() < deadline and self.backlog():
            self._force.set()
            self._wake.set()
            time.sleep(0.02)
        return self.backlog() == 0

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the threads after a last ship attempt; what is left ships on the next start."""
        if self._threads:
            self.flush(timeout_s if self.store_ok else 0.0)
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()
        with self._lock:
            self._sync()
            self.writer.close()
            self.index.close()

    # -- background work ---------------------------------------------------------------------

    def _sync(self) -> None:
        self.writer.sync()
        self.index.commit()

    def _sync_loop(self) -> None:
        while not self._stop.wait(max(self.fsync_interval_s, 0.05)):
            with self._lock:
                self._sync()

    def _ship_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(backoff or min(self.interval_s, 1.0))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._cycle(force=self._force.is_set())
                self._force.clear()
                backoff, self.store_ok = 0.0, True
            except StorageError as exc:
                if self.store_ok:
                    log.warning("object store unavailable, spooling locally: %s", exc)
                self.store_ok, backoff = False, min(max(0.5, backoff * 2), 10.0)
            except Exception:  # never let the shipper die: the spool keeps everything
                log.exception("request log shipper failed; retrying")
                backoff = min(max(0.5, backoff * 2), 10.0)

    def _cycle(self, force: bool) -> None:
        with self._lock:
            age = self.writer.age_s()
            if self.writer.count and (force or self.writer.full or age >= self.interval_s):
                self._sync()
                self.writer.rotate()
            closed = self.writer.closed_segments()
        for seq in closed:
            self._seal(seq)
        for path in sorted(self.sealed_dir.glob("*.json")):
            self._ship(path)

    def _seal(self, seq: int) -> None:
        """Fix the keys of one closed segment on disk; from here a retry reuses them."""
        shipped_at = datetime.now(UTC)
        batch_id = uuid.uuid4().hex[:16]
        lines, images, feedback, keys = [], [], [], []
        for env in read_envelopes(self.writer.dir, seq):
            rec = env["record"]
            blob = env.get("blob")
            if env["kind"] == "request":
                rec["image_key"] = layout.request_image(shipped_at, rec["request_id"], env["ext"])
                lines.append(json.dumps(rec, separators=(",", ":")))
                images.append([rec["image_key"], blob, CONTENT_TYPES.get(env["ext"], "application/octet-stream")])
                keys.append((rec["request_id"], rec["image_key"]))
            else:
                feedback.append({"key": layout.feedback_record(rec["request_id"]), "record": rec,
                                 "blob": blob if blob and blob[1] else None, "copy_from": env.get("copy_from"),
                                 "ext": env["ext"]})
        doc = {"segment": seq, "batch_key": layout.request_batch(shipped_at, batch_id) if lines else None,
               "body": "\n".join(lines) + "\n" if lines else "", "images": images, "feedback": feedback}
        name = f"{int(shipped_at.timestamp() * 1000):013d}-{seq:012d}-{batch_id}.json"
        write_durably(self.sealed_dir / name, json.dumps(doc).encode())
        with self._lock:
            self.writer.mark_sealed(seq)
            self.index.set_image_keys(keys)

    def _ship(self, path: Path) -> None:
        """Upload one sealed batch (images first, the batch object last), then forget it."""
        doc = json.loads(path.read_text())
        seq = doc["segment"]
        for key, blob, content_type in doc["images"]:
            self.store.put_bytes(key, self._blob(seq, blob), content_type)
        for fb in doc["feedback"]:
            self._ship_feedback(seq, fb)
        if doc["batch_key"]:
            self.store.put_bytes(doc["batch_key"], doc["body"].encode(), "application/x-ndjson")
        done = path.with_suffix(".done")
        os.replace(path, done)
        with self._lock:
            self.writer.forget(seq)
        done.unlink()

    def _ship_feedback(self, seq: int, fb: dict) -> None:
        image_key = fb["record"]["image_key"]
        content_type = CONTENT_TYPES.get(fb["ext"], "application/octet-stream")
        if fb["blob"]:
            self.store.put_bytes(image_key, self._blob(seq, fb["blob"]), content_type)
        elif fb["copy_from"]:
            try:
                self.store.put_bytes(image_key, self.store.get_bytes(fb["copy_from"]), content_type)
            except ObjectNotFound:
                log.warning("feedback %s: original image %s is gone", fb["record"]["request_id"], fb["copy_from"])
        self.store.put_bytes(fb["key"], json.dumps(fb["record"], separators=(",", ":")).encode(), "application/json")

    def _blob(self, seq: int, blob: list[int]) -> bytes:
        data = read_blob(self.writer.dir, seq, blob[0], blob[1])
        if data is None:
            raise StorageError(f"spool segment {seq} lost its image bytes")
        return data

    def _recover(self) -> None:
        """Finish what a previous process left: cleanup of shipped batches, re-index, queue the rest."""
        self.sealed_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.sealed_dir.glob("*.tmp"):
            tmp.unlink()
        for done in self.sealed_dir.glob("*.done"):
            self.writer.forget(json.loads(done.read_text())["segment"])
            done.unlink()
        sealed = {int(p.name.split("-")[1]) for p in self.sealed_dir.glob("*.json")}
        for seq in self.writer.existing_segments():
            envelopes = list(read_envelopes(self.writer.dir, seq))
            self.writer.adopt(seq, len(envelopes), sealed=seq in sealed)
            for env in envelopes:
                if env["kind"] == "request":
                    rec, blob = env["record"], env["blob"]
                    self.index.add(rec["request_id"], seq, blob[0], blob[1], env["ext"], rec["label"],
                                   rec["model_version"], ignore_existing=True)
        self.index.commit()
