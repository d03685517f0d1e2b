"""Stable splits across snapshot versions: adding images never moves an image to another split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from ml import layout
from ml.data.balance import SPLITS
from ml.records import FeedbackRecord
from ml.stages import snapshots
from ml.stages.data import build as build_dataset
from ml.storage import open_store
from tests.unit.test_data_build import SMALL, write_tree


def split_of(settings, version: str) -> dict[bytes, str]:
    """identity -> split for every image of a snapshot (rotated copies share their origin's)."""
    where: dict[bytes, str] = {}
    for split in SPLITS:
        for identity in snapshots.split_arrays(settings, version, split).ids.tolist():
            assert where.setdefault(identity, split) == split, f"{identity!r} is in two splits"
    return where


def add_feedback(settings, store, request_ids: list[str], label: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for rid in request_ids:
        path = Path(settings.home) / f"{rid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        store.put_file(layout.feedback_image(rid, "png"), path)
        record = FeedbackRecord(rid, label, "cat", "1", "2026-01-01T00:00:00Z", layout.feedback_image(rid, "png"))
        store.put_bytes(layout.feedback_record(rid), record.to_json().encode())


def test_adding_images_moves_no_image_and_no_test_image_reaches_training(settings, tmp_path):
    classes = settings.with_(superclasses=SMALL).classes
    tree = write_tree(tmp_path / "imgs", classes, 20)
    settings = settings.with_(superclasses=SMALL, class_target=30,
                              data_sources=(f"folder:{tree}", "feedback"))
    store = open_store(settings)
    add_feedback(settings, store, [f"{i:032x}" for i in range(20)], "bird", seed=1)
    first = build_dataset(settings, workers=1)["version"]
    # Every class grows (new files, new pixels) and more corrections arrive.
    write_tree(tmp_path / "imgs-more", classes, 15, seed=42)
    for path in (tmp_path / "imgs-more").rglob("*.png"):
        path.rename(tree / path.parent.name / f"new-{path.name}")
    add_feedback(settings, store, [f"{i:032x}" for i in range(20, 40)], "bird", seed=2)
    second = build_dataset(settings, workers=1)["version"]
    assert second != first
    before, after = split_of(settings, first), split_of(settings, second)
    assert len(after) == len(before) + 15 * len(classes) + 20
    moved = {i: (before[i], after[i]) for i in before if after.get(i) != before[i]}
    assert not moved, f"{len(moved)} images changed split, e.g. {next(iter(moved.items()))}"
    held_out_before = {i for i, s in before.items() if s in ("test", "corrections")}
    training_after = {i for i, s in after.items() if s == "train"}
    assert not held_out_before & training_after
    manifest = snapshots.manifest(settings, second)
    assert manifest["parameters"]["pipeline"] == 2
    assert manifest["ids"] == {s: sum(1 for v in after.values() if v == s) for s in SPLITS}


def test_corrections_never_enter_validation_or_test(settings, tmp_path):
    tree = write_tree(tmp_path / "imgs", settings.with_(superclasses=SMALL).classes, 10)
    settings = settings.with_(superclasses=SMALL, class_target=10, corrections_holdout=0.5,
                              data_sources=(f"folder:{tree}", "feedback"))
    store = open_store(settings)
    add_feedback(settings, store, [f"{i:032x}" for i in range(40)], "cat", seed=3)
    version = build_dataset(settings, workers=1)["version"]
    where = split_of(settings, version)
    feedback = {i: s for i, s in where.items() if i.startswith(b"fb:")}
    assert len(feedback) == 40 and set(feedback.values()) == {"train", "corrections"}
    corrections = snapshots.split_arrays(settings, version, "corrections")
    assert (corrections.y == settings.classes.index("cat")).all() and not corrections.synthetic.any()
    assert snapshots.manifest(settings, version)["counts"]["corrections"]["cat"] == len(corrections)


def test_a_snapshot_from_before_stable_splits_reads_with_content_ids(tiny_snapshot):
    settings, store, version = tiny_snapshot.settings, tiny_snapshot.store, tiny_snapshot.version
    for split in layout.SPLITS:
        store.delete(layout.dataset_array(version, split, "ids"))
    snapshots._cache.clear()
    test = snapshots.split_arrays(settings, version, "test")
    expected = [hashlib.sha256(img.tobytes()).hexdigest().encode() for img in test.x]
    assert test.ids.tolist() == expected
    assert len(snapshots.split_arrays(settings, version, "corrections")) == 0
