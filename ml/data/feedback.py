"""Corrected user images from the object store: `feedback/<request_id>.json` plus its image.

Each record is an `ml.records.FeedbackRecord`; the image lives at
`record.image_key` and its label is the user's label (`record.label`).
A record whose label is not a configured class, or whose image is missing
or unreadable, is reported and skipped. A "none of these" correction
(`ml.records.NONE_OF_THESE`) is no class image: `none_of_these` hands those
images to the snapshot's outliers (ml.data.outliers) instead.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator

from ml import layout
from ml.data.base import Loaded, Source, class_index
from ml.data.decode import Item, decode_items
from ml.data.identity import feedback_ids
from ml.records import FeedbackRecord
from ml.storage import ObjectNotFound, ObjectStore


class FeedbackSource(Source):
    """`feedback`: images users labelled through the service."""

    kind = "feedback"

    def __init__(self, store: ObjectStore):
        self.store = store
        self._records: dict[str, bytes] | None = None

    @property
    def name(self) -> str:
        return "feedback"

    def records(self) -> dict[str, bytes]:
        """Raw record JSON by key, read once per build so the checksum and the load agree."""
        if self._records is None:
            keys = [k for k in self.store.list(layout.FEEDBACK) if layout.is_feedback_record(k)]
            self._records = {key: self.store.get_bytes(key) for key in keys}
        return self._records

    def checksum(self) -> str:
        # Images are written once per request id; a correction rewrites the record, so the
        # records alone identify the content.
        digest = hashlib.sha256()
        for key, raw in sorted(self.records().items()):
            digest.update(key.encode() + b"\0" + hashlib.sha256(raw).digest())
        return f"sha256:{digest.hexdigest()}"

    def _none_of_these(self) -> list[tuple[str, bytes, FeedbackRecord]]:
        out = []
        for key, raw in sorted(self.records().items()):
            try:
                record = FeedbackRecord.from_json(raw)
            except (ValueError, TypeError):
                continue  # `load` reports it
            if record.none_of_these:
                out.append((key, raw, record))
        return out

    def none_of_these_checksum(self) -> str:
        """Checksum of the "none of these" records; empty when there are none (no outlier source)."""
        found = self._none_of_these()
        digest = hashlib.sha256()
        for key, raw, _ in found:
            digest.update(key.encode() + b"\0" + hashlib.sha256(raw).digest())
        return f"sha256:{digest.hexdigest()}" if found else ""

    def load_none_of_these(self) -> Loaded:
        """The "none of these" corrections' images, decoded like class images: outliers, not classes."""
        broken: list[tuple[str, str]] = []

        def payloads() -> Iterator[Item]:
            for _, _, record in self._none_of_these():
                try:
                    yield record.image_key, 0, self.store.get_bytes(record.image_key)
                except ObjectNotFound:
                    broken.append((record.image_key, "image missing"))

        out = decode_items(payloads(), workers=1, desc="none of these")
        out.skipped.extend(broken)
        return out

    def load(self, classes: tuple[str, ...], workers: int = 1) -> Loaded:
        index, unknown, broken = class_index(classes), Counter(), []
        request_of: dict[str, str] = {}  # image key -> request id, in the order decoded

        def items() -> Iterator[Item]:
            for key, raw in sorted(self.records().items()):
                try:
                    record = FeedbackRecord.from_json(raw)
                except (ValueError, TypeError) as exc:
                    broken.append((key, f"not a feedback record: {exc}"))
                    continue
                if record.none_of_these:
                    continue  # an outlier image (none_of_these), never a class image
                if record.label not in index:
                    unknown[record.label] += 1
                    continue
                try:
                    data = self.store.get_bytes(record.image_key)
                except ObjectNotFound:
                    broken.append((record.image_key, "image missing"))
                    continue
                request_of[record.image_key] = record.request_id
                yield record.image_key, index[record.label], data

        # Feedback is small; decoding in this process avoids pool start-up.
        out = decode_items(items(), workers=1, desc="feedback")
        # The split of a correction follows its request id (ml.data.identity), not its pixels.
        failed = {path for path, _ in out.skipped}
        out.ids = feedback_ids([r for key, r in request_of.items() if key not in failed])
        out.skipped.extend(broken)
        out.unknown_classes.update(unknown)
        return out
