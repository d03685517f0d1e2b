"""The one snapshot reader: manifests, split arrays, outliers and single images of `datasets/<version>/`.

Every stage reads snapshots through these functions (layout in docs/architecture.md); the
writer stays in `ml.data.snapshot`. Snapshots of pipeline 1 (before stable splits) have no
`ids.npy` and no `corrections` split, and early fixtures no `synthetic.npy`: the readers give
the pixels' content hashes, an empty split and an all-false mask instead. Snapshots never
change once written, so `split_arrays` caches (read-only) per store location and serving can
call `read_image` per request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ml import layout
from ml.config import Settings
from ml.data import outliers as outlier_store
from ml.data.balance import SplitArrays
from ml.data.base import empty_images
from ml.data.identity import ID_DTYPE, content_ids
from ml.data.snapshot import ARRAYS, exists, read_index
from ml.storage import ObjectNotFound, ObjectStore, open_store

CACHE_SPLITS = 6  # two snapshots' worth of splits
_cache: OrderedDict[str, SplitArrays] = OrderedDict()
_lock = threading.Lock()
_loading: dict[str, threading.Lock] = {}  # one lock per split, so a split is fetched once


def latest_version(settings: Settings) -> str | None:
    """The newest snapshot (for humans, the CLI and an untriggered pipeline; tasks pass versions)."""
    store = open_store(settings)
    entries = read_index(store)
    if entries:
        return entries[-1]["version"]
    # Snapshots written without the index (e.g. by test fixtures): newest manifest wins.
    manifests = [store.get_json(k) for k in store.list(layout.DATASETS) if k.endswith("/manifest.json")]
    if not manifests:
        return None
    return max(manifests, key=lambda m: m.get("created_at", ""))["version"]


def index(settings: Settings) -> list[dict]:
    """`datasets/index.json`: [{version, created_at, counts}], newest last; empty if none yet."""
    return read_index(open_store(settings))


def manifest(settings: Settings, version: str) -> dict:
    """The manifest of one snapshot; ObjectNotFound names the version if there is none."""
    return _manifest(open_store(settings), version)


def _manifest(store: ObjectStore, version: str) -> dict:
    try:
        return store.get_json(layout.dataset_manifest(version))
    except ObjectNotFound:
        raise ObjectNotFound(f"no dataset version {version!r} in the store "
                             "(see `visionloop data list`)") from None


def split(settings: Settings, version: str, split: str, names: tuple[str, ...] = ("x", "y")) -> tuple[np.ndarray, ...]:
    """Only the named arrays of one split (uncached: training reads big splits once)."""
    store = open_store(settings)
    found: dict[str, np.ndarray] = {}
    for name in names:
        found[name] = _array(store, version, split, name, found)
    return tuple(found[name] for name in names)


def split_arrays(settings: Settings, version: str, split: str) -> SplitArrays:
    """x (N,32,32,3) uint8, y (N,) int64, synthetic (N,) bool, source (N,) int16, ids (N,) ASCII; cached."""
    return _cached_split(open_store(settings), version, split)


def _cached_split(store: ObjectStore, version: str, split: str) -> SplitArrays:
    cache_key = store.uri(layout.dataset_array(version, split, "x"))
    with _lock:
        key_lock = _loading.setdefault(cache_key, threading.Lock())
    with key_lock:  # concurrent first reads (serving) download the split once
        with _lock:
            if cache_key in _cache:
                _cache.move_to_end(cache_key)
                return _cache[cache_key]
        found: dict[str, np.ndarray] = {}
        for name in ARRAYS:
            found[name] = _array(store, version, split, name, found)
            found[name].flags.writeable = False  # shared between callers through the cache
        result = SplitArrays(**found)
        with _lock:
            _cache[cache_key] = result
            while len(_cache) > CACHE_SPLITS:
                _cache.popitem(last=False)
        return result


def _array(store: ObjectStore, version: str, split: str, name: str, found: dict[str, np.ndarray]) -> np.ndarray:
    """One stored array, or what an older snapshot implies in its place (`found`: arrays read so far)."""
    try:
        return store.get_array(layout.dataset_array(version, split, name))
    except ObjectNotFound:
        if split == "corrections" and exists(store, version):
            return _empty(name)  # a pipeline-1 snapshot: nothing was held out of training
        if name == "ids":
            x = found["x"] if "x" in found else _array(store, version, split, "x", found)
            return content_ids(x)
        if name == "synthetic":
            y = found["y"] if "y" in found else _array(store, version, split, "y", found)
            return np.zeros(len(y), bool)
        raise ObjectNotFound(f"dataset {version!r} has no {split} split in the store") from None


def _empty(name: str) -> np.ndarray:
    return {"x": empty_images(), "y": np.zeros(0, np.int64), "synthetic": np.zeros(0, bool),
            "source": np.zeros(0, np.int16), "ids": np.zeros(0, ID_DTYPE)}[name]


def outliers(settings: Settings, version: str) -> dict[str, list] | None:
    """{"configured": [...], "user": [...]} OutlierImages versioned with the snapshot; None when it has none."""
    from ml.ood.outlier_data import OutlierImages

    store = open_store(settings)
    try:
        entry = store.get_json(layout.dataset_manifest(version)).get("outliers")
    except ObjectNotFound:  # arrays written without a manifest (test fixtures)
        return None
    if not entry:
        return None
    arrays = outlier_store.get(store, outlier_store.snapshot_prefix(version))
    out: dict[str, list] = {"configured": [], "user": []}
    for position, spec in enumerate(entry["sources"]):
        keep = arrays.source == position
        if keep.any():
            group = "user" if spec["kind"] == outlier_store.USER_KIND else "configured"
            out[group].append(OutlierImages(spec["set"], arrays.x[keep], arrays.classes[keep]))
    return out


def read_image(settings: Settings, image_id: str) -> np.ndarray:
    """The 32x32x3 uint8 image with id `<version>:<split>:<index>`."""
    version, split_name, position = layout.parse_image_id(image_id)
    arrays = split_arrays(settings, version, split_name)
    if position >= len(arrays):
        raise ValueError(f"{image_id!r}: the {split_name} split of {version} has {len(arrays)} images")
    return arrays.x[position]


class TrainingImages:
    """Reads single training images by dataset id, from a local memory-mapped copy of x.npy (serving's /similar)."""

    def __init__(self, store: Any, cache_dir: Path):
        self.store, self.cache_dir = store, Path(cache_dir)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()  # the page asks for 4 images at once: download x.npy once

    def get(self, image_id: str) -> np.ndarray:
        """(32, 32, 3) uint8 for '<version>:<split>:<index>'; KeyError if unknown."""
        try:
            version, split_name, position = layout.parse_image_id(image_id)
        except ValueError as exc:
            raise KeyError(str(exc)) from None
        if split_name not in layout.SPLITS:  # held-out corrections are users' uploads, never shown to others
            raise KeyError(f"{image_id}: not a training image")
        with self._lock:
            array = self._load(version, split_name)
        if position >= len(array):
            raise KeyError(f"{image_id}: index out of range")
        return np.asarray(array[position])

    def _load(self, version: str, split_name: str) -> np.ndarray:
        if (version, split_name) not in self._arrays:
            path = self.cache_dir / version / f"{split_name}_x.npy"
            if not path.is_file():
                try:
                    self.store.get_file(layout.dataset_array(version, split_name, "x"), path)
                except ObjectNotFound:
                    raise KeyError(f"no dataset {version!r}") from None
            self._arrays[(version, split_name)] = np.load(path, mmap_mode="r")
        return self._arrays[(version, split_name)]
