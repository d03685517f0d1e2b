"""Sealing closed segments and shipping sealed batches; bad batches go to quarantine, never block the rest."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ml import layout
from ml.requestlog import failpoints
from ml.requestlog.errors import SpoolCorrupt
from ml.requestlog.spool import check_envelopes, read_blob, segment_paths, write_durably
from ml.storage import ObjectNotFound, StorageError, StorageUnavailable

log = logging.getLogger(__name__)
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "gif": "image/gif",
                 "webp": "image/webp", "bmp": "image/bmp", "tiff": "image/tiff"}
_TRANSIENT = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM)  # the disk, not the data
MAX_REFUSALS = 5  # a batch the store keeps refusing (not unreachable) goes to quarantine after this many tries


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sealed_segment(path: Path) -> int:
    """The segment number in a sealed file's name `<ms>-<seq>-<batch>.json`; SpoolCorrupt for a stray file."""
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        raise SpoolCorrupt(f"{path.name} is not a sealed batch name") from None


class Shipper:
    """Mixin for RequestLog: the writer, index, store, quarantine and lock live there."""

    def _cycle(self, force: bool) -> None:
        with self._lock:
            age = self.writer.age_s()
            if self.writer.count and (force or self.writer.full or age >= self.interval_s):
                self._sync()
                self.writer.rotate()
            closed = self.writer.closed_segments()
        for seq in closed:
            try:
                self._seal(seq)
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    raise  # the local disk is full: retried, the segment is fine
                self._quarantine_segment(seq, f"cannot seal: {exc}")
        for path in sorted(self.sealed_dir.glob("*.json")):
            self._ship_or_quarantine(path)

    def _ship_or_quarantine(self, path: Path) -> None:
        """Ship one batch; only an unreachable store stops the cycle (and keeps the batch)."""
        try:
            self._ship(path)
            self._refusals.pop(path.name, None)
        except (StorageUnavailable, ObjectNotFound):  # ObjectNotFound on a PUT: the bucket is gone
            raise
        except StorageError as exc:
            self._refusals[path.name] = self._refusals.get(path.name, 0) + 1
            if self._refusals[path.name] < MAX_REFUSALS:
                raise
            self._quarantine_batch(path, f"the store refused it {MAX_REFUSALS} times: {exc}")
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                raise
            self._quarantine_batch(path, str(exc))
        except Exception as exc:  # noqa: BLE001  (anything else is this batch's content: never wedge on it)
            self._quarantine_batch(path, str(exc) or type(exc).__name__)

    def _seal(self, seq: int) -> None:
        """Fix the keys of one closed segment on disk; from here a retry reuses them."""
        shipped_at = datetime.now(UTC)
        batch_id = uuid.uuid4().hex[:16]
        envelopes, bad = check_envelopes(self.writer.dir, seq)
        if bad:
            self.quarantine.lines(seq, bad, "unparsable, torn or not matching its sha256")
        lines, images, pointers, feedback, keys = [], [], [], [], []
        for env in envelopes:
            rec, ext = env["record"], env["ext"]
            if env["kind"] == "request":
                rec["image_key"] = layout.request_image(shipped_at, rec["request_id"], ext)
                lines.append(json.dumps(rec, separators=(",", ":")))
                images.append([rec["image_key"], env["blob"], CONTENT_TYPES.get(ext, "application/octet-stream"),
                               rec["image_sha256"]])
                pointers.append({"request_id": rec["request_id"], "image_key": rec["image_key"], "ext": ext,
                                 "image_sha256": rec["image_sha256"], "label": rec["label"],
                                 "model_version": rec["model_version"]})
                keys.append((rec["request_id"], rec["image_key"]))
            else:
                feedback.append({"key": layout.feedback_record(rec["request_id"]), "record": rec, "ext": ext,
                                 "blob": env["blob"] if env["blob"][1] else None, "sha256": env.get("sha256"),
                                 "copy_from": env.get("copy_from")})
        doc = {"segment": seq, "batch_key": layout.request_batch(shipped_at, batch_id) if lines else None,
               "body": "\n".join(lines) + "\n" if lines else "", "images": images, "pointers": pointers,
               "feedback": feedback}
        name = f"{int(shipped_at.timestamp() * 1000):013d}-{seq:012d}-{batch_id}.json"
        write_durably(self.sealed_dir / name, json.dumps(doc).encode())
        with self._lock:
            self.writer.mark_sealed(seq)
            self.index.set_image_keys(keys)
        failpoints.hit("after_seal")

    def _ship(self, path: Path) -> None:
        """Upload one sealed batch (images, pointers, feedback, the batch object last), then forget it."""
        seq = sealed_segment(path)
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict) or doc.get("segment") != seq:
            raise SpoolCorrupt("sealed batch is not an object for its segment")
        objects = [(key, self._blob(seq, blob, sha[0] if sha else None), content_type)
                   for key, blob, content_type, *sha in doc["images"]]
        objects += [(layout.request_pointer(p["request_id"]), _compact(p), "application/json")
                    for p in doc.get("pointers", [])]
        self.store.put_many(objects)  # one flush (local) or parallel PUTs (S3) for the whole batch
        for fb in doc["feedback"]:
            self._ship_feedback(seq, fb)
        if doc["batch_key"]:
            self.store.put_bytes(doc["batch_key"], doc["body"].encode(), "application/x-ndjson")
        failpoints.hit("after_ship_before_delete")
        done = path.with_suffix(".done")
        os.replace(path, done)
        with self._lock:
            self.writer.forget(seq)
        done.unlink()

    def _ship_feedback(self, seq: int, fb: dict) -> None:
        rec = fb["record"]
        sha = fb.get("sha256")
        if (fb["blob"] or fb["copy_from"]) and not self._feedback_image_shipped(rec, sha):
            data = self._blob(seq, fb["blob"], sha) if fb["blob"] else self._fetch_verified(fb["copy_from"], sha)
            if data is not None:
                self.store.put_bytes(rec["image_key"], data, CONTENT_TYPES.get(fb["ext"], "application/octet-stream"))
        self.store.put_bytes(fb["key"], _compact(rec), "application/json")

    def _feedback_image_shipped(self, rec: dict, sha: str | None) -> bool:
        """A repeated correction: the stored feedback already has this very image (same hash)."""
        if not sha:
            return False
        try:
            previous = json.loads(self.store.get_bytes(layout.feedback_record(rec["request_id"])))
        except (ObjectNotFound, ValueError):
            return False
        return previous.get("image_sha256") == sha and self.store.exists(rec["image_key"])

    def _fetch_verified(self, key: str, sha: str | None) -> bytes | None:
        """The request's image from the store, only if it is the exact original (same sha256)."""
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFound:
            log.warning("feedback image source %s is gone; the feedback ships without an image", key)
            return None
        if sha and hashlib.sha256(data).hexdigest() != sha:
            log.warning("feedback image source %s does not match the request's sha256; not attached", key)
            return None
        return data

    def _blob(self, seq: int, blob: list[int], sha: str | None) -> bytes:
        data = read_blob(self.writer.dir, seq, blob[0], blob[1])
        if data is None:
            raise SpoolCorrupt(f"spool segment {seq} lost its image bytes")
        if sha and hashlib.sha256(data).hexdigest() != sha:
            raise SpoolCorrupt(f"spool segment {seq}: image bytes do not match their sha256")
        return data

    def _quarantine_batch(self, path: Path, why: str) -> None:
        try:
            seq = sealed_segment(path)
        except SpoolCorrupt:
            seq = None
        self.quarantine.move(path, why)
        self._refusals.pop(path.name, None)
        if seq is not None:
            self._quarantine_segment(seq, why, count=False)

    def _quarantine_segment(self, seq: int, why: str, count: bool = True) -> None:
        """Set a segment's files aside and stop counting its records as backlog."""
        with self._lock:
            for i, part in enumerate(segment_paths(self.writer.dir, seq)):
                self.quarantine.move(part, why, count=count and i == 0)
            self.writer.segments.pop(seq, None)
