"""RequestLog: the API the service calls (log a request, log feedback, backlog) and its background threads."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path

from ml import layout
from ml.config import Settings
from ml.records import REQUEST_ID_RE, FeedbackRecord, RequestRecord, request_id_age_s, utc_now_iso
from ml.requestlog.errors import SpoolUnavailable, UnknownRequest
from ml.requestlog.quarantine import Quarantine
from ml.requestlog.recovery import Recovery, open_index
from ml.requestlog.shipper import Shipper
from ml.requestlog.spool import SegmentCounter, SpoolLock, SpoolWriter, read_blob
from ml.storage import ObjectNotFound, ObjectStore, StorageError, StorageUnavailable, open_store

log = logging.getLogger(__name__)
SHIP_BACKOFF_MAX_S = 10.0  # the shipper's longest wait between attempts after a store error
CLOCK_SKEW_S = 5.0  # allowed clock difference between the replica that made an id and the one asked


def shipping_window_s(interval_s: float) -> float:
    """How long after its id was made a request's `request-ids/` pointer may still be on its way to the store.

    The request is spooled before it is answered; its segment is sealed once it is `interval_s` old
    (the ship loop looks every min(interval_s, 1) s) and shipped in the same cycle, pointer before batch.
    On top: two waits of the longest retry backoff (covering 0.5+1+2+4+8 s of retries after a brief
    store error) and the clock skew between replicas. A request whose shipping is held up longer (a
    long store outage on the serving replica, a backlog of many batches) is answered 404 until it lands.
    """
    return interval_s + min(interval_s, 1.0) + 2 * SHIP_BACKOFF_MAX_S + CLOCK_SKEW_S


class RequestLog(Shipper, Recovery):
    """Append-only spool plus a background shipper; thread-safe; one per process and spool directory."""

    def __init__(self, settings: Settings, store: ObjectStore | None = None, fsync_interval_s: float = 0.1,
                 spool_dir: Path | None = None):
        self.settings = settings
        self.store = store or open_store(settings)
        self.dir = Path(spool_dir or settings.spool_dir or Path(settings.home) / "spool").absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spool_lock = SpoolLock(self.dir)  # before touching anything else: SpoolLocked if taken
        try:
            self._open_spool(settings, fsync_interval_s)
        except BaseException:
            self.spool_lock.release()  # a later attempt (or another process) may take the spool
            raise

    def _open_spool(self, settings: Settings, fsync_interval_s: float) -> None:
        """Everything after the lock: index, writer, recovery of what a previous process left."""
        self.batch_size = max(1, settings.request_log_batch)
        self.interval_s = settings.request_log_interval_s
        self.fsync_interval_s = fsync_interval_s
        self.max_spool_bytes = int(settings.request_log_max_spool_mb * 1024 * 1024)
        self.quarantine = Quarantine(self.dir / "quarantine")
        self.index = open_index(self.dir / "index.sqlite", self.quarantine)
        self.counter = SegmentCounter(self.dir / "next_segment")
        self.writer = SpoolWriter(self.dir / "segments", self.batch_size, self.counter,
                                  fsync_each=fsync_interval_s <= 0)
        self.sealed_dir = self.dir / "sealed"
        self.sealed_dir.mkdir(exist_ok=True)
        self.store_ok = True  # False only while the object store is unreachable
        self._refusals: dict[str, int] = {}
        self._lock = threading.Lock()  # guards the writer and the index
        self._wake, self._stop, self._force = threading.Event(), threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        top = self._recover()
        self.counter.next = max(self.counter.next, top + 1, self.index.max_segment() + 1)

    @property
    def quarantined(self) -> int:
        """Spool files and records set aside in `<spool>/quarantine/` since this process started."""
        return self.quarantine.count

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.interval_s))

    # -- writing ---------------------------------------------------------------------------

    def log_request(self, record: RequestRecord, image: bytes, ext: str) -> None:
        """Spool one request and its exact bytes before it is answered; SpoolUnavailable if not durable."""
        record.image_sha256 = hashlib.sha256(image).hexdigest()  # of the bytes spooled, nothing else
        prefix = f'{{"kind":"request","ext":"{ext}","record":'
        body = record.to_json()
        with self._lock:
            seq, offset, length = self._append(prefix, body, image)
            try:
                self.index.add(record.request_id, seq, offset, length, ext, record.label, record.model_version,
                               record.image_sha256)
            except sqlite3.Error as exc:
                self.writer.undo_last()
                raise SpoolUnavailable(f"spool index {self.dir} cannot be written: {exc}", self.retry_after_s) from None
        if self.writer.full:
            self._wake.set()

    def _append(self, prefix: str, body: str, blob: bytes) -> tuple[int, int, int]:
        """Checked append under the lock: the spool cap, then all-or-nothing writes."""
        if self.writer.bytes + len(blob) + len(body) > self.max_spool_bytes:
            self._wake.set()
            why = "the object store is unreachable" if not self.store_ok else "the shipper is behind"
            raise SpoolUnavailable(
                f"request spool {self.dir} is full ({self.writer.bytes / 2**20:.0f} MB, cap "
                f"VISIONLOOP_REQUEST_LOG_MAX_SPOOL_MB={self.settings.request_log_max_spool_mb:g}); {why}",
                self.retry_after_s)
        try:
            return self.writer.append(prefix, body, blob)
        except OSError as exc:
            log.error("request spool %s: write failed: %s", self.dir, exc)
            raise SpoolUnavailable(f"request spool {self.dir} cannot be written: {exc.strerror or exc}",
                                   self.retry_after_s) from None

    def log_feedback(self, request_id: str, label: str, source: str = "web") -> FeedbackRecord:
        """Spool a user's label for a logged request (here or in the store); UnknownRequest if neither knows it."""
        with self._lock:
            row = self.index.get(request_id)
        if row is None:
            row = self._shipped_request(request_id)
        sha = row["sha256"] or ""
        record = FeedbackRecord(request_id=request_id, label=label, predicted_label=row["label"],
                                model_version=row["model_version"], created_at=utc_now_iso(),
                                image_key=layout.feedback_image(request_id, row["ext"]), source=source,
                                image_sha256=sha)
        with self._lock:
            repeat = bool(sha) and self.index.feedback_sha(request_id) == sha
        image, copy_from = (b"", None) if repeat else self._feedback_source(row)
        envelope = {"kind": "feedback", "ext": row["ext"], "copy_from": copy_from, "sha256": sha or None}
        prefix = json.dumps(envelope)[:-1] + ',"record":'
        with self._lock:
            self._append(prefix, record.to_json(), image)
            if sha:
                try:
                    self.index.add_feedback(request_id, sha)
                except sqlite3.Error as exc:  # as for requests: never keep a record we cannot answer for
                    self.writer.undo_last()
                    raise SpoolUnavailable(f"request spool {self.dir}: index write failed: {exc}",
                                           self.retry_after_s) from None
        self._wake.set()
        return record

    def _feedback_source(self, row: dict) -> tuple[bytes, str | None]:
        """The request's bytes from the spool if still there and intact, else the store key to copy from."""
        if row["segment"] is not None and row["sha256"]:
            data = read_blob(self.writer.dir, row["segment"], row["offset"], row["length"])
            if data is not None and hashlib.sha256(data).hexdigest() == row["sha256"]:
                return data, None
            with self._lock:  # shipped meanwhile: its image key is set from sealing on
                row = self.index.get(row["request_id"]) or row
        return b"", row["image_key"]

    def _shipped_request(self, request_id: str) -> dict:
        """The pointer another worker or replica shipped for this request (requests served elsewhere)."""
        if not REQUEST_ID_RE.match(request_id):
            raise UnknownRequest(request_id)
        try:
            pointer = json.loads(self.store.get_bytes(layout.request_pointer(request_id)))
            return {"request_id": request_id, "segment": None, "image_key": str(pointer["image_key"]),
                    "sha256": str(pointer["image_sha256"]), "label": str(pointer["label"]),
                    "model_version": str(pointer["model_version"]), "ext": str(pointer["ext"])}
        except ObjectNotFound:
            pending = self._still_shipping(request_id)
            raise (pending or UnknownRequest(request_id)) from None
        except StorageError as exc:
            raise SpoolUnavailable(f"request {request_id} is not in this spool and the object store cannot "
                                   f"be asked: {exc}", self.retry_after_s) from None
        except (ValueError, KeyError, TypeError):
            log.warning("request pointer for %s is malformed", request_id)
            raise UnknownRequest(request_id) from None

    def _still_shipping(self, request_id: str) -> SpoolUnavailable | None:
        """A retry answer when the id is young enough that the worker that made it may not have shipped it yet."""
        age = request_id_age_s(request_id)  # None: not a time-ordered id, nothing says it is on its way
        window = shipping_window_s(self.interval_s)
        if age is None or age > window:
            return None
        retry = max(1, math.ceil(min(self.interval_s + 1.0, window - age)))
        return SpoolUnavailable(f"request {request_id} is not known here yet (it was answered {max(age, 0.0):.1f} s "
                                "ago and the worker that answered it may still be shipping it); retry shortly", retry)

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
            with self._lock:
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
        if self.spool_lock.fd < 0:
            return  # stopped already
        if self._threads:
            self.flush(timeout_s if self.store_ok else 0.0)
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
        if any(thread.is_alive() for thread in self._threads):
            # A ship still in flight: keep the files and the lock; the process exit releases them.
            log.warning("request log %s: shipper still busy after %.0f s; leaving the spool locked", self.dir, timeout_s)
            return
        self._threads.clear()
        with self._lock:
            try:
                self._sync()
                self.writer.close()
            finally:
                self.index.close()
                self.spool_lock.release()

    # -- background work ---------------------------------------------------------------------

    def _sync(self) -> None:
        self.writer.sync()
        self.index.commit()

    def _sync_loop(self) -> None:
        while not self._stop.wait(max(self.fsync_interval_s, 0.05)):
            with self._lock:
                try:
                    self._sync()
                except (OSError, sqlite3.Error):  # disk trouble: the writes themselves report it
                    log.exception("request spool %s: fsync failed", self.dir)

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
                unreachable = isinstance(exc, StorageUnavailable | ObjectNotFound)  # else: refused, retried
                if self.store_ok and unreachable:
                    log.warning("object store unavailable, spooling locally: %s", exc)
                self.store_ok = not unreachable
                backoff = min(max(0.5, backoff * 2), SHIP_BACKOFF_MAX_S)
            except Exception:  # never let the shipper die: the spool keeps everything
                log.exception("request log shipper failed; retrying")
                backoff = min(max(0.5, backoff * 2), SHIP_BACKOFF_MAX_S)
