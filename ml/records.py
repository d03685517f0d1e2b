"""Request-log and feedback records: the JSON contract between serving, data and monitoring."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

import numpy as np

# The reserved feedback label "this image shows none of the classes": never a class name. Such
# corrections become outlier images of the next snapshot (ml.data.outliers), not class images.
NONE_OF_THESE = "none_of_these"


# A request id: 32 lowercase hex digits. Ids made by new_request_id() start with their creation time.
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_RANDOM_BITS = 80
# Ids whose time field falls outside [this, now + a day] carry no time (e.g. legacy uuid4 hex ids, whose
# first 48 bits are random: spread over ~8,900 years, they land in the plausible range ~0.03% of the time).
_EARLIEST_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_MAX_FUTURE_MS = 86_400_000


def new_request_id(now: float | None = None) -> str:
    """A time-ordered request id: 48-bit Unix ms then 80 random bits, as 32 hex digits (UUIDv7-like)."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    return f"{(ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS):032x}"


def request_id_age_s(request_id: str, now: float | None = None) -> float | None:
    """Seconds since new_request_id() made this id (negative if made ahead of this clock); None if it carries no time."""
    if not isinstance(request_id, str) or not REQUEST_ID_RE.match(request_id):
        return None
    ms = int(request_id[:12], 16)
    now_ms = (time.time() if now is None else now) * 1000
    if ms < _EARLIEST_MS or ms > now_ms + _MAX_FUTURE_MS:
        return None
    return (now_ms - ms) / 1000


def feedback_labels(classes) -> list[str]:
    """Every label /feedback accepts: the classes, then the reserved NONE_OF_THESE."""
    return [*classes, NONE_OF_THESE]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def encode_embedding(vector: np.ndarray) -> str:
    """float16 little-endian, base64: ~4x smaller than a JSON list and exact to 3 digits."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


@dataclass
class RequestRecord:
    """One classified image, as logged under requests/."""

    request_id: str
    created_at: str
    model_version: str
    label: str
    class_id: int
    confidence: float
    probabilities: list[float]
    is_ood: bool
    ood_score: float
    ood_threshold: float
    ood_detector: str
    pixel_entropy: float
    hist_distance: float
    embedding: np.ndarray = field(repr=False)
    image_key: str | None = None
    image_sha256: str = ""
    image_format: str = ""
    width: int = 0
    height: int = 0
    byte_size: int = 0
    latency_ms: float = 0.0

    def to_json(self) -> str:
        data = dict(self.__dict__)  # asdict() deep-copies: a third of the spool's CPU time
        data["embedding"] = encode_embedding(self.embedding)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> RequestRecord:
        data = json.loads(line)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # newer writers may add fields
        data["embedding"] = decode_embedding(data["embedding"])
        return cls(**data)


@dataclass
class FeedbackRecord:
    """A user's label for a logged request, as stored under feedback/<request_id>.json."""

    request_id: str
    label: str
    predicted_label: str
    model_version: str
    created_at: str
    image_key: str
    source: str = "web"
    image_sha256: str = ""  # of the image at image_key (the request's original bytes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> FeedbackRecord:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def none_of_these(self) -> bool:
        return self.label == NONE_OF_THESE

    @property
    def disagrees(self) -> bool:
        return self.label != self.predicted_label
