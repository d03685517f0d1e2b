"""Outliers versioned in the snapshot: configured outlier folders and users' "none of these" corrections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml import layout
from ml.data import outliers, staging
from ml.data.balance import SPLITS
from ml.data.report import summary
from ml.records import NONE_OF_THESE, FeedbackRecord
from ml.stages import data, snapshots
from ml.stages.data import build as build_dataset
from ml.storage import open_store
from tests.unit.test_data_build import SMALL, write_tree


def add_feedback(settings, request_id: str, label: str, seed: int) -> None:
    """A stored correction with its image, as the request-log shipper writes it."""
    store = open_store(settings)
    path = Path(settings.home) / f"{request_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    store.put_file(layout.feedback_image(request_id, "png"), path)
    record = FeedbackRecord(request_id, label, "cat", "1", "2026-01-01T00:00:00Z", layout.feedback_image(request_id, "png"))
    store.put_bytes(layout.feedback_record(request_id), record.to_json().encode())


@pytest.fixture
def tiny(settings, tmp_path):
    """One folder source plus feedback (two "none of these", one cat) and an outlier folder of 2 classes."""
    tree = write_tree(tmp_path / "imgs", settings.with_(superclasses=SMALL).classes, 10)
    odd = write_tree(tmp_path / "odd", ("kites", "mugs"), 4, seed=3)
    settings = settings.with_(superclasses=SMALL, class_target=10, outlier_sources=(f"folder:{odd}",),
                              data_sources=(f"folder:{tree}", "feedback"))
    add_feedback(settings, "n0", NONE_OF_THESE, 1)
    add_feedback(settings, "n1", NONE_OF_THESE, 2)
    add_feedback(settings, "c0", "cat", 3)
    return settings, odd


def test_none_of_these_goes_to_outliers_not_to_any_split(tiny):
    settings, _ = tiny
    version = build_dataset(settings, workers=1)["version"]
    store = open_store(settings)
    manifest = snapshots.manifest(settings, version)
    ids = np.concatenate([snapshots.split_arrays(settings, version, s).ids for s in SPLITS])
    assert {i for i in ids if i.startswith(b"fb:")} == {b"fb:c0"}  # the cat correction only
    assert NONE_OF_THESE not in manifest["unknown_classes"]
    entry = manifest["outliers"]
    assert entry["counts"] == {"kites": 4, "mugs": 4, outliers.USER_CLASS: 2} and entry["images"] == 10
    assert [s["kind"] for s in entry["sources"]] == ["folder", "feedback"]
    assert all(s["checksum"].startswith("sha256:") for s in entry["sources"])
    arrays = outliers.get(store, outliers.snapshot_prefix(version))
    assert arrays.x.shape == (10, 32, 32, 3) and arrays.x.dtype == np.uint8
    assert arrays.classes.dtype.kind == "U" and arrays.source.dtype == np.int16  # no object arrays
    np.testing.assert_array_equal(np.sort(arrays.classes[arrays.source == 1]), [outliers.USER_CLASS] * 2)
    raw = store.get_bytes(f"{outliers.snapshot_prefix(version)}classes.npy")
    assert np.load(__import__("io").BytesIO(raw), allow_pickle=False).tolist() == arrays.classes.tolist()


def test_version_follows_the_outlier_sources(tiny):
    settings, odd = tiny
    first = build_dataset(settings, workers=1)["version"]
    assert build_dataset(settings, workers=1)["reused"] is True  # same outlier inputs: same version
    write_tree(odd, ("kites",), 5, seed=8)  # one more outlier image, class images unchanged
    second = build_dataset(settings, workers=1)["version"]
    add_feedback(settings, "n2", NONE_OF_THESE, 4)
    third = build_dataset(settings, workers=1)
    assert len({first, second, third["version"]}) == 3 and not third["reused"]
    manifest = snapshots.manifest(settings, third["version"])
    assert manifest["outliers"]["counts"] == {"kites": 5, "mugs": 4, outliers.USER_CLASS: 3}
    no_outliers = build_dataset(settings.with_(outlier_sources=(), data_sources=settings.data_sources[:1]), workers=1)
    assert "outliers" not in snapshots.manifest(settings, no_outliers["version"])


def test_dag_steps_store_the_same_outliers(tiny, tmp_path):
    settings, _ = tiny
    staged = settings.with_(local_store=tmp_path / "staged")
    for request_id, label, seed in (("n0", NONE_OF_THESE, 1), ("n1", NONE_OF_THESE, 2), ("c0", "cat", 3)):
        add_feedback(staged, request_id, label, seed)
    version = data.fetch(staged)["version"]
    data.balance(staged, data.validate(staged, version)["version"])
    data.write(staged, version)
    assert build_dataset(settings, workers=1)["version"] == version
    a = outliers.get(open_store(staged), outliers.snapshot_prefix(version))
    b = outliers.get(open_store(settings), outliers.snapshot_prefix(version))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert not list(open_store(staged).list(staging.STAGING))


def test_read_gives_user_outliers_apart(tiny):
    settings, _ = tiny
    version = build_dataset(settings, workers=1)["version"]
    found = snapshots.outliers(settings, version)
    assert [s.name for s in found["configured"]] == ["odd"] and len(found["configured"][0]) == 8
    assert [len(s) for s in found["user"]] == [2] and set(found["user"][0].classes) == {outliers.USER_CLASS}
    plain = build_dataset(settings.with_(outlier_sources=(), data_sources=settings.data_sources[:1]), workers=1)
    assert snapshots.outliers(settings, plain["version"]) is None
    assert snapshots.outliers(settings, "never-built") is None  # arrays without a manifest: no outliers


def test_summary_lists_the_outliers(tiny):
    settings, _ = tiny
    version = build_dataset(settings, workers=1)["version"]
    text = summary(snapshots.manifest(settings, version))
    assert "outliers: 10 images of 3 classes" in text
    assert f"{outliers.USER_SOURCE}: 2 images of 1 classes" in text and "odd: 8 images of 2 classes" in text
