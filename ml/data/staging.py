"""Intermediate arrays between the `dataset_build` tasks, under `staging/<version>/` in the object store.

Each DAG step (ml.stages.data) reads its input from here and writes its output here, so
tasks pass only the version string. The version is a content hash, so a retried task
rewrites the same keys; the snapshot step clears the area.
"""

from __future__ import annotations

import numpy as np

from ml.data import outliers
from ml.data.balance import SPLITS, SplitArrays
from ml.data.snapshot import ARRAYS
from ml.data.validate import Pool
from ml.storage import ObjectStore

STAGING = "staging/"
POOL_ARRAYS = ("x", "y", "source", "ids")


def key(version: str, name: str) -> str:
    return f"{STAGING}{version}/{name}"


def put_pool(store: ObjectStore, version: str, stage: str, pool: Pool, info: dict) -> None:
    """The pool's arrays plus `info` (what later steps need for the manifest) and its problems."""
    for name in POOL_ARRAYS:
        store.put_array(key(version, f"{stage}/{name}.npy"), getattr(pool, name))
    store.put_json(key(version, f"{stage}/info.json"), {**info, "problems": pool.problems()})


def get_pool(store: ObjectStore, version: str, stage: str) -> tuple[Pool, dict]:
    info = store.get_json(key(version, f"{stage}/info.json"))
    arrays = {n: store.get_array(key(version, f"{stage}/{n}.npy")) for n in POOL_ARRAYS}
    problems = info["problems"]
    pool = Pool(**arrays, duplicates=problems["duplicates"], skipped_count=problems["skipped"],
                skipped=[tuple(p) for p in problems["skipped_examples"]],
                unknown_classes=problems["unknown_classes"], notes=problems["notes"])
    return pool, info


def put_outliers(store: ObjectStore, version: str, arrays: outliers.OutlierSet) -> None:
    outliers.put(store, key(version, "outliers/"), arrays)


def get_outliers(store: ObjectStore, version: str) -> outliers.OutlierSet:
    return outliers.get(store, key(version, "outliers/"))


def put_splits(store: ObjectStore, version: str, splits: dict[str, SplitArrays], synthetic: np.ndarray) -> None:
    """The balanced splits and the per-class count of rotated copies."""
    for split, arrays in splits.items():
        for name in ARRAYS:
            store.put_array(key(version, f"{split}/{name}.npy"), getattr(arrays, name))
    store.put_array(key(version, "synthetic.npy"), synthetic)


def get_splits(store: ObjectStore, version: str) -> tuple[dict[str, SplitArrays], np.ndarray]:
    splits = {s: SplitArrays(*(store.get_array(key(version, f"{s}/{n}.npy")) for n in ARRAYS)) for s in SPLITS}
    return splits, np.asarray(store.get_array(key(version, "synthetic.npy")))


def clear(store: ObjectStore, version: str) -> None:
    for name in list(store.list(f"{STAGING}{version}/")):
        store.delete(name)
