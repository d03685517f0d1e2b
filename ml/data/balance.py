"""Stable splits by image identity, then rotated copies that top up small classes in train only.

Splits follow `ml.data.identity.assign_splits`: about 10 % validation and 10 %
test by a hash of each image's identity, so an image keeps its split in every
snapshot; user corrections go to train or to the held-out `corrections` split.

`class_target` counts a class over all splits. A class below it gets
`target - count` rotated copies of its train images: quarter turns (90, 180,
270 degrees) first, chosen at random without repeats; if a class needs more
than three copies per train image, small-angle rotations (quarter turn plus
5-15 degrees, centre-cropped to hide the corners, Lanczos back to 32x32)
follow; past 27 copies per train image they repeat. Everything is seeded, so
the same inputs give the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ml.data.identity import ID_DTYPE, assign_splits
from ml.imaging import IMAGE_SIZE
from ml.layout import ALL_SPLITS

SPLITS = ALL_SPLITS  # a snapshot's splits (ml.layout); corrections hold only feedback
HELD_OUT = ("val", "test", "corrections")
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
SMALL_ANGLES = (5, -5, 10, -10, 15, -15)
# Every (quarter turn, small angle) pair: 24 more distinct copies per image after the 3 quarter turns.
EXTRA_TURNS = tuple((q, a) for a in SMALL_ANGLES for q in range(4))


@dataclass
class SplitArrays:
    """One split of a snapshot: images, class ids, synthetic flags, source indices, identities."""

    x: np.ndarray
    y: np.ndarray
    synthetic: np.ndarray
    source: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def split_indices(ids: np.ndarray, corrections_holdout: float) -> dict[str, np.ndarray]:
    """Sorted indices per split, a pure function of each image's identity (see ml.data.identity)."""
    if not 0.0 <= corrections_holdout <= 1.0:
        raise ValueError(f"VISIONLOOP_CORRECTIONS_HOLDOUT={corrections_holdout} must be in [0, 1]")
    return assign_splits(ids, VAL_FRACTION, TEST_FRACTION, corrections_holdout)


def small_rotation(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate by a few degrees and crop the largest centred square that has no empty corner."""
    size = image.shape[0]
    rad = np.deg2rad(abs(degrees))
    side = int(size / (np.cos(rad) + np.sin(rad)))
    lo = (size - side) // 2
    rotated = Image.fromarray(image).rotate(degrees, resample=Image.BICUBIC)
    cropped = rotated.crop((lo, lo, lo + side, lo + side))
    return np.asarray(cropped.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.uint8)


def rotated_copies(x: np.ndarray, deficit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`deficit` rotated copies of images x, and the index in x each copy came from."""
    n = len(x)
    # (image, turn) pairs without repeats; sorted so each turn is one contiguous, vectorised block.
    quarter = np.sort(rng.permutation(3 * n)[: min(deficit, 3 * n)])
    origin, turns = quarter % n, quarter // n + 1
    copies = np.empty((deficit, *x.shape[1:]), dtype=np.uint8)
    for k in (1, 2, 3):
        lo, hi = np.searchsorted(turns, [k, k + 1])
        copies[lo:hi] = np.rot90(take(x, origin[lo:hi]), k, axes=(1, 2))
    extra = np.arange(deficit - len(quarter))
    extra_origin = rng.permutation(n)[extra % n]
    for j, (i, r) in enumerate(zip(extra_origin, extra // n, strict=True)):
        q, angle = EXTRA_TURNS[r % len(EXTRA_TURNS)]
        copies[len(quarter) + j] = small_rotation(np.rot90(x[i], q), angle)
    return copies, np.concatenate([origin, extra_origin]).astype(np.int64)


def take(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows of x: np.take copies whole rows, ~8x faster than fancy indexing on (N,32,32,3)."""
    return np.take(x, index, axis=0)


def balance(x: np.ndarray, y: np.ndarray, source: np.ndarray, ids: np.ndarray, n_classes: int,
            target: int, seed: int, corrections_holdout: float = 0.3) -> tuple[dict[str, SplitArrays], np.ndarray]:
    """Splits with train topped up to `target` per class, and the synthetic count per class."""
    splits = split_indices(ids, corrections_holdout)
    deficits = np.maximum(target - np.bincount(y, minlength=n_classes), 0)
    train = splits["train"]
    deficits[np.bincount(y[train], minlength=n_classes) == 0] = 0  # nothing to rotate
    # One allocation for train: real rows first, then the copies, then an in-place shuffle.
    n_real, n_all = len(train), len(train) + int(deficits.sum())
    out = SplitArrays(np.empty((n_all, *x.shape[1:]), np.uint8),
                      np.concatenate([y[train], np.repeat(np.arange(n_classes), deficits)]),
                      np.arange(n_all) >= n_real, np.empty(n_all, np.int16), np.empty(n_all, ID_DTYPE))
    np.take(x, train, axis=0, out=out.x[:n_real], mode="clip")  # "clip": no hidden buffer copy
    out.source[:n_real], out.ids[:n_real] = source[train], ids[train]
    rng, start = np.random.default_rng([seed, 1]), n_real
    for c in np.flatnonzero(deficits):
        members = train[y[train] == c]
        copies, origin = rotated_copies(take(x, members), int(deficits[c]), rng)
        stop = start + len(copies)
        out.x[start:stop] = copies
        # A rotated copy is its origin for leakage purposes: same source, same identity.
        out.source[start:stop], out.ids[start:stop] = source[members][origin], ids[members][origin]
        start = stop
    result = {"train": _shuffled(out, seed)}
    for name in HELD_OUT:
        idx = splits[name]
        held_out = SplitArrays(take(x, idx), y[idx], np.zeros(len(idx), bool), source[idx], ids[idx])
        result[name] = _shuffled(held_out, seed)
    return result, deficits.astype(np.int64)


def _shuffled(arrays: SplitArrays, seed: int) -> SplitArrays:
    """Shuffle in place with one seeded order, so a reader taking the first N images gets every class."""
    for array in (arrays.x, arrays.y, arrays.synthetic, arrays.source, arrays.ids):
        np.random.default_rng([seed, 2, len(array)]).shuffle(array)  # same seed, same permutation
    arrays.y, arrays.source = arrays.y.astype(np.int64), arrays.source.astype(np.int16)
    return arrays
