"""Byte-verified, loss-free request and feedback log: an fsync'd local spool shipped to the object store.

Spool layout under `VISIONLOOP_SPOOL_DIR` (default `<home>/spool/`; one directory per writing process):
  lock                  flock'd by the one process writing here (a second one gets SpoolLocked)
  next_segment          the next segment number, persisted: numbers never repeat
  segments/<seq>.jsonl  one envelope per line (a request or a feedback record)
  segments/<seq>.bin    the original image bytes; envelopes point at (offset, length)
  sealed/<ms>-<seq>-<batch>.json  a segment with its object keys fixed; `.done` once uploaded
  quarantine/           what cannot ship as it is (torn or unparsable records, stray files), kept for a human
  index.sqlite          request_id -> image location, sha256, predicted label, model version; feedback hashes

Guarantees:
- Exactly once, byte-identical: every request record carries the sha256 of the exact spooled
  bytes; sealing and shipping re-check it, so a record ships only with its own image. A
  segment's object keys (ship time, batch id) are fixed on disk when it is SEALED, so a retry
  after an outage or a crash overwrites the same keys (S3 PUTs are idempotent). Batches ship in
  seal order, so batch keys sort in store order (the monitoring watermark relies on it).
- Never wedged: a record, batch or file that cannot ship for any reason but an unreachable
  store moves to quarantine/ (`RequestLog.quarantined` counts them) and the rest keeps shipping;
  startup never fails on spool content. `store_ok` is False only while the store is unreachable.
- Answered means durable: `log_request` either writes the whole record to the kernel or raises
  SpoolUnavailable (disk full, short write, spool over `VISIONLOOP_REQUEST_LOG_MAX_SPOOL_MB`),
  leaving the segment as it was. An fsync group commit runs every `fsync_interval_s` (0.1 s):
  a process crash loses nothing, a power loss at most that window.
- Feedback finds its request wherever it was served: from this spool's index, else from the
  pointer `request-ids/<request_id>.json` the shipper writes for every request. Its image is
  attached only when its sha256 matches the request's; a repeated correction replaces the
  record and never copies the image again.
  An id found in neither but young enough to be still shipping elsewhere (time-ordered ids,
  `ml.records.new_request_id`; `core.shipping_window_s`) gets SpoolUnavailable (503 + Retry-After);
  an older one UnknownRequest (404).
"""

from ml.requestlog.core import RequestLog
from ml.requestlog.errors import SpoolCorrupt, SpoolLocked, SpoolUnavailable, UnknownRequest
from ml.requestlog.shipper import CONTENT_TYPES

__all__ = ["CONTENT_TYPES", "RequestLog", "SpoolCorrupt", "SpoolLocked", "SpoolUnavailable", "UnknownRequest"]
