"""Object-store keys: the one place that knows the bucket layout (see docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, datetime

SPLITS = ("train", "val", "test")
# Snapshots made since stable splits also have held-out user corrections, which no model trains on.
ALL_SPLITS = (*SPLITS, "corrections")
DATASETS = "datasets/"
REQUESTS = "requests/"
FEEDBACK = "feedback/"
MONITORING = "monitoring/"
# Outside requests/ on purpose: monitoring lists requests/ after its watermark, and one small object
# per request there would be re-listed every window.
REQUEST_IDS = "request-ids/"


def dataset_prefix(version: str) -> str:
    return f"{DATASETS}{version}/"


def dataset_manifest(version: str) -> str:
    return f"{DATASETS}{version}/manifest.json"


def dataset_array(version: str, split: str, name: str) -> str:
    """name is x, y, synthetic or source."""
    if split not in ALL_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {ALL_SPLITS}")
    return f"{DATASETS}{version}/{split}/{name}.npy"


def dataset_index() -> str:
    return f"{DATASETS}index.json"


def image_id(version: str, split: str, index: int) -> str:
    """Id of one dataset image, readable back with parse_image_id."""
    return f"{version}:{split}:{index}"


def parse_image_id(image_id_: str) -> tuple[str, str, int]:
    try:
        version, split, index = image_id_.split(":")
        if split not in ALL_SPLITS or int(index) < 0:
            raise ValueError
        return version, split, int(index)
    except ValueError:
        raise ValueError(f"{image_id_!r} is not an image id of the form <version>:<split>:<index>") from None


def hour_prefix(when: datetime) -> str:
    when = when.astimezone(UTC)
    return f"{REQUESTS}{when:%Y/%m/%d/%H}/"


def request_batch(shipped_at: datetime, batch_id: str) -> str:
    """Batches are named by ship time so keys sort in the order they were written."""
    millis = int(shipped_at.timestamp() * 1000)
    return f"{hour_prefix(shipped_at)}{millis:013d}-{batch_id}.jsonl"


def request_image(shipped_at: datetime, request_id: str, ext: str) -> str:
    return f"{hour_prefix(shipped_at)}images/{request_id}.{ext.lstrip('.')}"


def request_pointer(request_id: str) -> str:
    """Where a shipped request's image is and what was predicted: feedback from any worker or replica."""
    return f"{REQUEST_IDS}{request_id}.json"


def is_request_batch(key: str) -> bool:
    return key.startswith(REQUESTS) and key.endswith(".jsonl") and "/images/" not in key


def feedback_record(request_id: str) -> str:
    return f"{FEEDBACK}{request_id}.json"


def feedback_image(request_id: str, ext: str) -> str:
    return f"{FEEDBACK}images/{request_id}.{ext.lstrip('.')}"


def is_feedback_record(key: str) -> bool:
    return key.startswith(FEEDBACK) and key.endswith(".json") and "/images/" not in key


WATERMARK = f"{MONITORING}watermark.json"
RETRAIN_STATE = f"{MONITORING}retrain_state.json"


def monitoring_window(window_id: str) -> str:
    return f"{MONITORING}windows/{window_id}.json"
