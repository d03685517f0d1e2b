"""The data stage end to end on tiny folders and feedback: counts, versions, reuse, errors, readers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml import layout
from ml.data import staging
from ml.data.balance import SPLITS
from ml.data.base import DataError
from ml.data.folders import FolderSource
from ml.data.report import summary
from ml.data.snapshot import ARRAYS
from ml.records import FeedbackRecord
from ml.stages import data, snapshots
from ml.stages.data import build as build_dataset
from ml.storage import LocalStore, ObjectNotFound, open_store

SMALL = ("insects",)  # 11 classes keep the trees tiny


def write_tree(root: Path, classes: tuple[str, ...], per_class: dict[str, int] | int = 10, seed: int = 0) -> Path:
    """`<class>/<i>.png` of random 32x32 pixels (no two alike)."""
    rng = np.random.default_rng(seed)
    for name in classes:
        n = per_class if isinstance(per_class, int) else per_class.get(name, 10)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def tiny(settings, tmp_path):
    """Settings with one folder source: 10 images per class, 5 of `insects`, target 10."""
    tree = write_tree(tmp_path / "imgs", settings.with_(superclasses=SMALL).classes, {"insects": 5})
    return settings.with_(superclasses=SMALL, class_target=10, data_sources=(f"folder:{tree}",)), tree


def test_build_balances_and_writes_the_documented_layout(tiny):
    settings, _ = tiny
    result = build_dataset(settings, workers=1)
    manifest = snapshots.manifest(settings, result["version"])
    assert result["reused"] is False and result["manifest_key"] == layout.dataset_manifest(result["version"])
    assert manifest["synthetic"]["insects"] == 5 and manifest["synthetic"]["cat"] == 0
    for c in settings.classes:
        assert sum(manifest["counts"][s][c] for s in SPLITS) == 10
    held_out = sum(manifest["counts"][s]["insects"] for s in ("val", "test"))
    assert manifest["counts"]["train"]["insects"] == 10 - held_out and manifest["counts"]["corrections"]["insects"] == 0
    assert sum(manifest["ids"].values()) == 105  # every real image once, rotated copies share their origin's id
    train, val = snapshots.split_arrays(settings, result["version"], "train"), snapshots.split_arrays(settings, result["version"], "val")
    assert train.x.dtype == np.uint8 and train.x.shape[1:] == (32, 32, 3)
    assert train.y.dtype == np.int64 and train.synthetic.dtype == bool and train.source.dtype == np.int16
    assert train.synthetic.sum() == 5 and not val.synthetic.any()
    assert manifest["sources"][0]["kind"] == "folder" and manifest["sources"][0]["checksum"].startswith("sha256:")
    assert result["counts"] == manifest["counts"]


def test_same_inputs_same_version_and_no_work_twice(tiny, monkeypatch):
    settings, tree = tiny
    first = build_dataset(settings, workers=1)
    monkeypatch.setattr(FolderSource, "load", lambda *a, **k: pytest.fail("decoded again"))
    again = build_dataset(settings, workers=1)
    assert again == {**first, "reused": True}
    monkeypatch.undo()
    assert build_dataset(settings.with_(seed=7), workers=1)["version"] != first["version"]


def test_new_images_make_a_new_version(tiny):
    settings, tree = tiny
    first = build_dataset(settings, workers=1)["version"]
    write_tree(tree, ("cat",), 11, seed=5)  # overwrites cat/0..9 and adds cat/10
    second = build_dataset(settings, workers=1)
    assert second["version"] != first and not second["reused"]
    assert [e["version"] for e in snapshots.index(settings)] == [first, second["version"]]
    assert snapshots.latest_version(settings) == second["version"]


def test_duplicates_are_removed_and_reported(tiny):
    settings, tree = tiny
    shutil.copy(tree / "cat/0.png", tree / "dog/copy-of-cat.png")
    version = build_dataset(settings, workers=1)["version"]
    manifest = snapshots.manifest(settings, version)
    assert manifest["duplicates"] == 1 and manifest["images_in"] == 106
    assert manifest["counts_by_source"][manifest["sources"][0]["name"]]["dog"] == 10


def test_a_class_with_no_images_is_an_error_naming_it(tiny):
    settings, tree = tiny
    shutil.rmtree(tree / "insects")
    with pytest.raises(DataError, match="no images for class insects"):
        build_dataset(settings, workers=1)


def test_feedback_images_are_user_images_with_the_users_label(tiny):
    settings, _ = tiny
    store = open_store(settings)
    rng = np.random.default_rng(9)
    for i, label in enumerate(["insects", "insects", "dragon"]):
        path = Path(settings.home) / f"fb{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
        store.put_file(layout.feedback_image(f"r{i}", "png"), path)
        record = FeedbackRecord(f"r{i}", label, "cat", "1", "2026-01-01T00:00:00Z", layout.feedback_image(f"r{i}", "png"))
        store.put_bytes(layout.feedback_record(f"r{i}"), record.to_json().encode())
    record = FeedbackRecord("gone", "cat", "dog", "1", "2026-01-01T00:00:00Z", "feedback/images/gone.png")
    store.put_bytes(layout.feedback_record("gone"), record.to_json().encode())
    version = build_dataset(settings, sources=[*settings.data_sources, "feedback"], workers=1)["version"]
    manifest = snapshots.manifest(settings, version)
    assert manifest["counts_by_source"]["feedback"]["insects"] == 2
    assert manifest["synthetic"]["insects"] == 3  # 5 folder + 2 feedback real images, target 10
    assert manifest["unknown_classes"] == {"dragon": 1}
    assert ["feedback/images/gone.png", "image missing"] in manifest["skipped_examples"]
    kinds = [s["kind"] for s in manifest["sources"]]
    x = np.concatenate([snapshots.split_arrays(settings, version, s).source for s in SPLITS])
    assert (x == kinds.index("feedback")).sum() >= 2
    feedback_ids = np.concatenate([snapshots.split_arrays(settings, version, s).ids for s in SPLITS])
    assert {i for i in feedback_ids if i.startswith(b"fb:")} == {b"fb:r0", b"fb:r1"}


def test_image_ids_read_back_the_stored_pixels(tiny):
    settings, _ = tiny
    version = build_dataset(settings, workers=1)["version"]
    test = snapshots.split_arrays(settings, version, "test")
    np.testing.assert_array_equal(snapshots.read_image(settings, layout.image_id(version, "test", 3)), test.x[3])
    assert snapshots.split_arrays(settings, version, "test") is test  # cached for per-request use
    assert not test.x.flags.writeable
    with pytest.raises(ValueError, match=f"has {len(test)} images"):
        snapshots.read_image(settings, layout.image_id(version, "test", len(test)))


def test_readers_accept_the_shared_fixture_snapshot(tiny_snapshot):
    settings, version = tiny_snapshot.settings, tiny_snapshot.version
    x, y = tiny_snapshot.arrays["val"]
    np.testing.assert_array_equal(snapshots.split_arrays(settings, version, "val").y, y)
    np.testing.assert_array_equal(snapshots.read_image(settings, f"{version}:val:5"), x[5])
    assert snapshots.latest_version(settings) == version  # found without an index.json
    table = summary(snapshots.manifest(settings, version))  # `visionloop data show`, no per-source counts
    assert table.splitlines()[-1].split() == ["TOTAL", "0", "312", "104", "104", "520"]


def test_dag_steps_build_the_same_snapshot_and_clean_up(tiny, tmp_path):
    settings, _ = tiny
    staged = settings.with_(local_store=tmp_path / "staged")
    version = data.fetch(staged)["version"]
    data.balance(staged, data.validate(staged, version)["version"])
    assert data.write(staged, version)["reused"] is False
    direct = build_dataset(settings, workers=1)
    assert direct["version"] == version
    for split in SPLITS:
        a = snapshots.split_arrays(staged, version, split)
        b = snapshots.split_arrays(settings, version, split)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.synthetic, b.synthetic)
        np.testing.assert_array_equal(a.ids, b.ids)
    assert not list(open_store(staged).list(staging.STAGING))
    assert data.fetch(staged)["reused"] is True


def test_moving_the_folder_keeps_the_version(tiny, tmp_path):
    settings, tree = tiny
    first = build_dataset(settings, workers=1)["version"]
    moved = tree.rename(tmp_path / "moved")
    again = build_dataset(settings.with_(data_sources=(f"folder:{moved}",)), workers=1)
    assert again["version"] == first and again["reused"]


def test_concurrent_first_reads_fetch_a_split_once(tiny_snapshot, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    settings, version = tiny_snapshot.settings, tiny_snapshot.version
    calls = []
    original = LocalStore.get_array
    monkeypatch.setattr(LocalStore, "get_array", lambda store, key: calls.append(key) or original(store, key))
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda i: snapshots.read_image(settings, f"{version}:test:{i}"), range(8)))
    assert len(calls) == len(ARRAYS)  # the fixture stores ids.npy too
    np.testing.assert_array_equal(images[7], tiny_snapshot.arrays["test"][0][7])


def test_split_reads_only_the_named_arrays_and_fills_in_what_old_snapshots_lack(tiny_snapshot):
    settings, store, version = tiny_snapshot.settings, tiny_snapshot.store, tiny_snapshot.version
    store.delete(layout.dataset_array(version, "train", "synthetic"))  # an early snapshot had no mask
    x, y, synthetic = snapshots.split(settings, version, "train", ("x", "y", "synthetic"))
    np.testing.assert_array_equal(x, tiny_snapshot.arrays["train"][0])
    assert synthetic.dtype == bool and len(synthetic) == len(y) and not synthetic.any()
    assert len(snapshots.split(settings, version, "corrections", ("y",))[0]) == 0  # none held out then
    with pytest.raises(ObjectNotFound, match="no dataset version 'nope'"):
        snapshots.manifest(settings, "nope")
    with pytest.raises(ObjectNotFound, match="has no val split"):
        snapshots.split(settings, "nope", "val")
