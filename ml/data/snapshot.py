"""Write snapshots under `datasets/<version>/` (layout in docs/architecture.md).

The writer only: the arrays, the outliers, then the manifest (its presence marks a complete
snapshot), then `datasets/index.json`. Every reader is in `ml.stages.snapshots`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ml import layout
from ml.data import outliers
from ml.data.balance import SPLITS, SplitArrays
from ml.storage import ObjectNotFound, ObjectStore

ARRAYS = ("x", "y", "synthetic", "source", "ids")


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
    """A complete snapshot of this version is in the store (the writer skips, the stage reuses it)."""
    return store.exists(layout.dataset_manifest(version))


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


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
