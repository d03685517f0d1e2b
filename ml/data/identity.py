"""Image identities and the stable split rule: an image's split depends on its identity only.

An identity is the sha256 hex digest of the decoded 32x32 uint8 pixels, or
`fb:<request_id>` for a user correction (a relabelled request keeps its id).
Rotated copies carry their origin's identity. The split is a hash of the
identity, so adding images to a class never moves an existing image to another
split, and no test image of one snapshot can be a training image of the next.
"""

from __future__ import annotations

import hashlib

import numpy as np

FEEDBACK_PREFIX = "fb:"
ID_DTYPE = "S67"  # ASCII: 64 hex digits, or "fb:" + a 32-digit uuid4 hex (room for longer ids)
SPLIT_SALT = b"visionloop-split-v1\0"
CORRECTIONS_SALT = b"visionloop-corrections-v1\0"


def content_ids(x: np.ndarray) -> np.ndarray:
    """(N,) ASCII sha256 hex digests of each image's bytes."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return np.array([hashlib.sha256(row.tobytes()).hexdigest().encode() for row in flat], dtype=ID_DTYPE)


def feedback_ids(request_ids: list[str]) -> np.ndarray:
    """(N,) `fb:<request_id>` identities of corrected user images."""
    return np.array([(FEEDBACK_PREFIX + r).encode() for r in request_ids], dtype=ID_DTYPE)


def unit_hash(ids: np.ndarray, salt: bytes) -> np.ndarray:
    """A uniform number in [0, 1) per identity: the first 8 bytes of sha256(salt + id)."""
    words = [int.from_bytes(hashlib.sha256(salt + bytes(i)).digest()[:8], "big") for i in ids]
    return np.array(words, dtype=np.float64) / 2.0**64


def is_feedback(ids: np.ndarray) -> np.ndarray:
    return np.char.startswith(np.asarray(ids, dtype=ID_DTYPE), FEEDBACK_PREFIX.encode())


def assign_splits(ids: np.ndarray, val_fraction: float, test_fraction: float,
                  corrections_holdout: float) -> dict[str, np.ndarray]:
    """Indices per split: feedback -> train or corrections, every other image -> train, val or test."""
    feedback = is_feedback(ids)
    u = unit_hash(ids, SPLIT_SALT)
    held = unit_hash(ids, CORRECTIONS_SALT) < corrections_holdout
    val = ~feedback & (u < val_fraction)
    test = ~feedback & (u >= val_fraction) & (u < val_fraction + test_fraction)
    corrections = feedback & held
    train = ~(val | test | corrections)
    return {name: np.flatnonzero(mask) for name, mask in
            (("train", train), ("val", val), ("test", test), ("corrections", corrections))}
