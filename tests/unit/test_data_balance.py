"""Stable splits and rotation top-ups: right counts, train only, deterministic under the seed."""

from __future__ import annotations

import numpy as np
import pytest

from ml.data.balance import balance as balance_ids
from ml.data.balance import rotated_copies, split_indices
from ml.data.identity import content_ids, feedback_ids


def pool(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    x = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    return x, y, (y % 2).astype(np.int16)


def balance(x, y, source, n_classes, target, seed):
    """balance() with the pixels' content hashes as identities (no feedback)."""
    return balance_ids(x, y, source, content_ids(x), n_classes, target, seed)


def test_splits_are_about_ten_percent_disjoint_and_complete():
    x, _, _ = pool([2000])
    parts = split_indices(content_ids(x), corrections_holdout=0.3)
    assert 150 <= len(parts["val"]) <= 250 and 150 <= len(parts["test"]) <= 250
    assert len(parts["corrections"]) == 0  # only feedback can be held out as a correction
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything) == list(range(len(x)))


def test_feedback_goes_to_train_or_corrections_never_val_or_test():
    ids = feedback_ids([f"{i:032x}" for i in range(1000)])
    parts = split_indices(ids, corrections_holdout=0.3)
    assert len(parts["val"]) == 0 and len(parts["test"]) == 0
    assert 240 <= len(parts["corrections"]) <= 360 and len(parts["train"]) == 1000 - len(parts["corrections"])
    assert len(split_indices(ids, corrections_holdout=0.0)["corrections"]) == 0
    with pytest.raises(ValueError, match="CORRECTIONS_HOLDOUT"):
        split_indices(ids, corrections_holdout=1.5)


def test_rotated_copies_carry_their_origins_identity():
    x, y, source = pool([10, 6])  # 4 copies: quarter turns only
    splits, _ = balance(x, y, source, 2, target=10, seed=0)
    train = splits["train"]
    origin_ids = dict(zip(content_ids(x).tolist(), range(len(x)), strict=True))
    for img, identity in zip(train.x[train.synthetic], train.ids[train.synthetic], strict=True):
        origin = x[origin_ids[identity]]
        assert any(np.array_equal(img, np.rot90(origin, k)) for k in (1, 2, 3))
    held_out = {i for s in ("val", "test") for i in splits[s].ids.tolist()}
    assert held_out.isdisjoint(train.ids.tolist())


def test_quarter_turn_copies_are_distinct_rotations_of_their_origin():
    x, _, _ = pool([10])
    copies, origin = rotated_copies(x, 25, np.random.default_rng(0))
    assert copies.shape == (25, 32, 32, 3)
    seen = set()
    for copy, i in zip(copies, origin, strict=False):
        turns = [k for k in (1, 2, 3) if np.array_equal(copy, np.rot90(x[i], k))]
        assert len(turns) == 1
        seen.add((int(i), turns[0]))
    assert len(seen) == 25, "no (image, turn) pair is used twice while unused ones remain"


def test_small_angle_rotations_fill_a_large_deficit():
    x, _, _ = pool([2])
    copies, origin = rotated_copies(x, 10, np.random.default_rng(0))
    assert len(copies) == 10 and set(origin) <= {0, 1}
    rotations = {(i, k) for i in range(2) for k in (1, 2, 3)}
    extra = [c for c in copies if not any(np.array_equal(c, np.rot90(x[i], k)) for i, k in rotations)]
    assert len(extra) == 4  # 6 quarter-turn copies exist, the other 4 are small-angle rotations
    assert len({c.tobytes() for c in copies}) == 10


def test_balance_tops_up_train_only_to_the_target():
    x, y, source = pool([30, 10, 40])
    splits, synthetic = balance(x, y, source, 3, target=30, seed=1)
    assert list(synthetic) == [0, 20, 0]  # a class above the target is left as it is
    totals = sum(np.bincount(s.y, minlength=3) for s in splits.values())
    assert list(totals) == [30, 30, 40]
    assert splits["train"].synthetic.sum() == 20
    assert not splits["val"].synthetic.any() and not splits["test"].synthetic.any()
    assert (splits["train"].y[splits["train"].synthetic] == 1).all()


def test_rotations_never_copy_validation_or_test_images():
    x, y, source = pool([20])
    splits, _ = balance(x, y, source, 1, target=60, seed=3)
    held_out = np.concatenate([splits["val"].x, splits["test"].x])
    rotated = {np.rot90(img, k).tobytes() for img in held_out for k in (1, 2, 3)}
    train = splits["train"]
    assert not any(img.tobytes() in rotated for img in train.x[train.synthetic])


@pytest.mark.parametrize("seed", [0, 1])
def test_balance_is_deterministic_under_the_seed(seed):
    x, y, source = pool([12, 4])
    a, _ = balance(x, y, source, 2, target=12, seed=seed)
    b, _ = balance(x, y, source, 2, target=12, seed=seed)
    c, _ = balance(x, y, source, 2, target=12, seed=seed + 10)
    for split in a:
        np.testing.assert_array_equal(a[split].x, b[split].x)
        np.testing.assert_array_equal(a[split].source, b[split].source)
    assert not np.array_equal(a["train"].x, c["train"].x)
