"""Read and write snapshots under `datasets/<version>/` (layout in docs/architecture.md).

Readers: `load_split`, `load_manifest`, `read_image` (ids `<version>:<split>:<index>`),
`latest_version`. Snapshots of pipeline 1 (before stable splits) have no `ids.npy` and no
`corrections` split: readers give the pixels' content hashes and an empty split instead. Snapshots never change once written, so loaded arrays are
cached (read-only) per store location: serving can call `read_image` per request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime

import numpy as np

from ml import layout
from ml.data import outliers
from ml.data.balance import SPLITS, SplitArrays
from ml.data.base import empty_images
from ml.data.identity import ID_DTYPE, content_ids
from ml.storage import ObjectNotFound, ObjectStore

ARRAYS = ("x", "y", "synthetic", "source", "ids")
CACHE_SPLITS = 6  # two snapshots' worth of splits
_cache: OrderedDict[str, SplitArrays] = OrderedDict()
_lock = threading.Lock()
_loading: dict[str, threading.Lock] = {}  # one lock per split, so a split is fetched once


def write_snapshot(store: ObjectStore, version: str, splits: dict[str, SplitArrays], manifest: dict,
                   outlier_set: outliers.OutlierSet | None = None) -> str:
    """Write every array (and the outliers), then the manifest (its presence marks a complete snapshot), then the index."""
    for split in SPLITS:
        for name in ARRAYS:
            store.put_array(layout.dataset_array(version, split, name), getattr(splits[split], name))
    if outlier_set is not None:
        outliers.put(store, outliers.snapshot_prefix(version), outlier_set)
    key = layout.dataset_manifest(version)
    store.put_json(key, manifest)
    append_index(store, manifest)
    return key


def exists(store: ObjectStore, version: str) -> bool:
    return store.exists(layout.dataset_manifest(version))


def load_manifest(store: ObjectStore, version: str) -> dict:
    """The manifest of one snapshot; ObjectNotFound names the version if there is none."""
    try:
        return store.get_json(layout.dataset_manifest(version))
    except ObjectNotFound:
        raise ObjectNotFound(f"no dataset version {version!r} in the store "
                             "(see `visionloop data list`)") from None


def load_split(store: ObjectStore, version: str, split: str) -> SplitArrays:
    """x (N,32,32,3) uint8, y (N,) int64, synthetic (N,) bool, source (N,) int16, ids (N,) ASCII; cached."""
    cache_key = store.uri(layout.dataset_array(version, split, "x"))
    with _lock:
        key_lock = _loading.setdefault(cache_key, threading.Lock())
    with key_lock:  # concurrent first reads (serving) download the split once
        with _lock:
            if cache_key in _cache:
                _cache.move_to_end(cache_key)
                return _cache[cache_key]
        return _load(store, version, split, cache_key)


def _load(store: ObjectStore, version: str, split: str, cache_key: str) -> SplitArrays:
    try:
        arrays = {name: store.get_array(layout.dataset_array(version, split, name)) for name in ARRAYS[:-1]}
    except ObjectNotFound:
        if split != "corrections" or not exists(store, version):
            raise ObjectNotFound(f"dataset {version!r} has no {split} split in the store") from None
        arrays = _empty_arrays()  # a pipeline-1 snapshot: nothing was held out of training
    arrays["ids"] = _ids(store, version, split, arrays)
    for array in arrays.values():
        array.flags.writeable = False  # shared between callers through the cache
    result = SplitArrays(**arrays)
    with _lock:
        _cache[cache_key] = result
        while len(_cache) > CACHE_SPLITS:
            _cache.popitem(last=False)
    return result


def _ids(store: ObjectStore, version: str, split: str, arrays: dict) -> np.ndarray:
    """The split's identities; a pipeline-1 snapshot has none stored, so its pixels' content hashes."""
    if "ids" in arrays:
        return arrays["ids"]
    try:
        return store.get_array(layout.dataset_array(version, split, "ids"))
    except ObjectNotFound:
        return content_ids(arrays["x"])


def _empty_arrays() -> dict[str, np.ndarray]:
    return {"x": empty_images(), "y": np.zeros(0, np.int64), "synthetic": np.zeros(0, bool),
            "source": np.zeros(0, np.int16), "ids": np.zeros(0, ID_DTYPE)}


def read_image(store: ObjectStore, image_id: str) -> np.ndarray:
    """The 32x32x3 uint8 image with id `<version>:<split>:<index>`."""
    version, split, index = layout.parse_image_id(image_id)
    arrays = load_split(store, version, split)
    if index >= len(arrays):
        raise ValueError(f"{image_id!r}: the {split} split of {version} has {len(arrays)} images")
    return arrays.x[index]


def read_index(store: ObjectStore) -> list[dict]:
    """`datasets/index.json`: [{version, created_at, counts}], newest last; empty if none yet."""
    try:
        return store.get_json(layout.dataset_index())
    except ObjectNotFound:
        return []


def append_index(store: ObjectStore, manifest: dict) -> None:
    entries = [e for e in read_index(store) if e["version"] != manifest["version"]]
    totals = {split: sum(manifest["counts"][split].values()) for split in SPLITS if split in manifest["counts"]}
    entries.append({"version": manifest["version"], "created_at": manifest["created_at"], "counts": totals})
    store.put_json(layout.dataset_index(), entries)


def latest_version(store: ObjectStore) -> str | None:
    """The newest snapshot (for humans and the CLI; tasks pass versions explicitly)."""
    entries = read_index(store)
    if entries:
        return entries[-1]["version"]
    # Snapshots written without the index (e.g. by test fixtures): newest manifest wins.
    manifests = [store.get_json(k) for k in store.list(layout.DATASETS) if k.endswith("/manifest.json")]
    if not manifests:
        return None
    return max(manifests, key=lambda m: m.get("created_at", ""))["version"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
