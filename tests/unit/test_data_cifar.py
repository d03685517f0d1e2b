"""CIFAR sources read tiny archives in the official pickle formats, with download, md5 and clear errors."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ml.config import CIFAR10_CLASSES
from ml.data.cifar import Cifar10Source, Cifar100Source
from ml.data.download import DownloadError

COARSE = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "insects"]
CLASSES = CIFAR10_CLASSES + ("fruit_and_vegetables", "insects", "food_containers")


def _add(archive: tarfile.TarFile, name: str, obj: object) -> None:
    data = pickle.dumps(obj)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _rows(images: np.ndarray) -> np.ndarray:
    """(N,32,32,3) -> CIFAR rows: the R plane, then G, then B, 3072 bytes per image."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def make_cifar10(path: Path, per_batch: int = 4, seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz with 6 tiny batches; returns its md5 and all images/labels in order."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "cifar-10-batches-py/batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            y = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
            _add(archive, f"cifar-10-batches-py/{name}", {b"data": _rows(x), b"labels": y})
            xs.append(x)
            ys.extend(y)
    return hashlib.md5(path.read_bytes()).hexdigest(), np.concatenate(xs), np.array(ys)


def make_cifar100(path: Path, n: int = 12, seed: int = 1) -> tuple[str, dict[str, np.ndarray]]:
    """A cifar-100-python.tar.gz (train, test, meta); returns its md5 and the images per coarse name."""
    rng = np.random.default_rng(seed)
    by_name: dict[str, list[np.ndarray]] = {c: [] for c in COARSE}
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "cifar-100-python/meta", {b"coarse_label_names": [c.encode() for c in COARSE],
                                                b"fine_label_names": [b"f%d" % i for i in range(100)]})
        for name in ("train", "test"):
            x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            coarse = [i % len(COARSE) for i in range(n)]
            _add(archive, f"cifar-100-python/{name}",
                 {b"data": _rows(x), b"fine_labels": list(rng.integers(0, 100, n)), b"coarse_labels": coarse})
            for image, c in zip(x, coarse, strict=False):
                by_name[COARSE[c]].append(image)
    return hashlib.md5(path.read_bytes()).hexdigest(), {k: np.array(v) for k, v in by_name.items() if v}


def test_cifar10_is_downloaded_verified_and_decoded_pixel_exact(tmp_path):
    md5, x, y = make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    source = Cifar10Source(tmp_path / "cache", url=(tmp_path / "cifar-10-python.tar.gz").as_uri(), md5=md5)
    loaded = source.load(CLASSES)
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").is_file()
    assert loaded.x.shape == (24, 32, 32, 3) and loaded.x.dtype == np.uint8
    np.testing.assert_array_equal(loaded.x, x)  # train and test batches, in order, HWC
    np.testing.assert_array_equal(loaded.y, y)  # CIFAR-10 ids are the first ten VisionLoop ids
    assert source.checksum() == f"md5:{md5}"


def test_cached_archive_is_reused_without_network(tmp_path):
    md5, _, _ = make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    cache = tmp_path / "cache"
    Cifar10Source(cache, url=(tmp_path / "cifar-10-python.tar.gz").as_uri(), md5=md5).load(CLASSES)
    offline = Cifar10Source(cache, url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5=md5)
    assert len(offline.load(CLASSES)) == 24


def test_cifar100_takes_only_configured_superclasses_by_name(tmp_path):
    md5, by_name = make_cifar100(tmp_path / "cifar-100-python.tar.gz")
    source = Cifar100Source(tmp_path / "cache", url=(tmp_path / "cifar-100-python.tar.gz").as_uri(), md5=md5)
    loaded = source.load(CLASSES)
    assert set(np.unique(loaded.y)) == {10, 11, 12}
    for name in ("fruit_and_vegetables", "insects", "food_containers"):
        got = loaded.x[loaded.y == CLASSES.index(name)]
        np.testing.assert_array_equal(got, by_name[name])
    assert len(loaded) == 12  # 24 images over 6 superclasses, 3 configured


def test_offline_error_names_url_and_where_to_put_the_archive(tmp_path):
    url = "http://127.0.0.1:9/cifar-100-python.tar.gz"
    source = Cifar100Source(tmp_path / "cache", url=url, md5="0" * 32)
    with pytest.raises(DownloadError) as info:
        source.load(CLASSES)
    message = str(info.value)
    assert url in message
    assert str(tmp_path / "cache" / "cifar-100-python.tar.gz") in message
    assert not list((tmp_path / "cache").glob("*.part"))  # no half-written file left to confuse the cache


def test_checksum_mismatch_is_an_error_naming_the_file(tmp_path):
    make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    source = Cifar10Source(tmp_path / "cache", url=(tmp_path / "cifar-10-python.tar.gz").as_uri(), md5="f" * 32)
    with pytest.raises(DownloadError, match="should have md5 f{32}") as info:
        source.load(CLASSES)
    assert str(tmp_path / "cache" / "cifar-10-python.tar.gz") in str(info.value)


def test_build_from_both_archives_via_settings_overrides(settings, tmp_path):
    from ml.stages import snapshots
    from ml.stages.data import build

    md5_10, _, _ = make_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=10)
    md5_100, _ = make_cifar100(tmp_path / "cifar-100-python.tar.gz", n=60)
    extra = {"cifar10_url": (tmp_path / "cifar-10-python.tar.gz").as_uri(), "cifar10_md5": md5_10,
             "cifar100_url": (tmp_path / "cifar-100-python.tar.gz").as_uri(), "cifar100_md5": md5_100}
    settings = settings.with_(data_sources=("cifar10", "cifar100"), class_target=30, **extra)
    result = build(settings, workers=1)
    manifest = snapshots.manifest(settings, result["version"])
    assert manifest["counts_by_source"]["cifar10"]["cat"] == 6  # one per batch, train and test batches
    assert manifest["counts_by_source"]["cifar100"]["insects"] == 20
    assert manifest["synthetic"]["insects"] == 10 and manifest["synthetic"]["cat"] == 24
    assert [s["checksum"] for s in manifest["sources"]] == [f"md5:{md5_10}", f"md5:{md5_100}"]
