"""Request-log and feedback records: the JSON contract between serving, data and monitoring."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

import numpy as np

# The reserved feedback label "this image shows none of the classes": never a class name. Such
# corrections become outlier images of the next snapshot (ml.data.outliers), not class images.
NONE_OF_THESE = "none_of_these"


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
