"""The dataset build as four resumable steps for the `dataset_build` DAG: fetch, validate, balance, snapshot.

Each step takes the settings and a version, reads its input arrays from
`staging/<version>/` in the object store and writes its output there, so tasks
pass only the version string. The version is a content hash, so a retried or
repeated task rewrites the same keys. `snapshot` deletes the staging area.
When the snapshot already exists every step is a no-op.
"""

from __future__ import annotations

import logging

import numpy as np

from ml.config import Settings
from ml.data import outliers, snapshot
from ml.data.balance import SPLITS, SplitArrays
from ml.data.build import balance_pool, load_pool, make_manifest, plan, result
from ml.data.decode import default_workers
from ml.data.report import summary
from ml.data.validate import Pool, clean
from ml.storage import ObjectStore, open_store

log = logging.getLogger(__name__)
summary_log = logging.getLogger("ml.data.summary")  # the counts table, for task logs
STAGING = "staging/"
POOL_ARRAYS = ("x", "y", "source", "ids")


def staging_key(version: str, name: str) -> str:
    return f"{STAGING}{version}/{name}"


def _put_pool(store: ObjectStore, version: str, stage: str, pool: Pool, extra: dict) -> None:
    for name in POOL_ARRAYS:
        store.put_array(staging_key(version, f"{stage}/{name}.npy"), getattr(pool, name))
    store.put_json(staging_key(version, f"{stage}/info.json"), {**extra, "problems": pool.problems()})


def _get_pool(store: ObjectStore, version: str, stage: str) -> tuple[Pool, dict]:
    info = store.get_json(staging_key(version, f"{stage}/info.json"))
    arrays = {n: store.get_array(staging_key(version, f"{stage}/{n}.npy")) for n in POOL_ARRAYS}
    problems = info["problems"]
    pool = Pool(**arrays, duplicates=problems["duplicates"], skipped_count=problems["skipped"],
                skipped=[tuple(p) for p in problems["skipped_examples"]],
                unknown_classes=problems["unknown_classes"], notes=problems["notes"])
    return pool, info


def fetch(settings: Settings, sources: list[str] | None = None) -> dict:
    """Download/read and decode every source; returns {"version", "reused"}."""
    store = open_store(settings)
    resolved, described, params, outlier_sources, version = plan(settings, store, sources)
    if snapshot.exists(store, version):
        return {"version": version, "reused": True}
    pool = load_pool(settings, resolved)
    info = {"version": version, "sources": described, "parameters": params, "images_in": len(pool)}
    if outlier_sources:  # decoded here with the pool, kept in staging until the snapshot step
        extra, info["outliers"] = outliers.load(settings, resolved, outlier_sources, default_workers())
        outliers.put(store, staging_key(version, "outliers/"), extra)
    _put_pool(store, version, "raw", pool, info)
    return {"version": version, "reused": False}


def validate(settings: Settings, version: str) -> dict:
    """Drop duplicates and fail on an empty class; returns {"version", "images"}."""
    store = open_store(settings)
    if snapshot.exists(store, version):
        return {"version": version, "images": None}
    pool, info = _get_pool(store, version, "raw")
    pool = clean(pool, settings.classes)
    _put_pool(store, version, "clean", pool, info)
    return {"version": version, "images": len(pool)}


def balance_step(settings: Settings, version: str) -> dict:
    """Split and top up train with rotations; returns {"version", "synthetic"}."""
    store = open_store(settings)
    if snapshot.exists(store, version):
        return {"version": version, "synthetic": None}
    pool, _ = _get_pool(store, version, "clean")
    splits, synthetic = balance_pool(settings, pool)
    for split, arrays in splits.items():
        for name in snapshot.ARRAYS:
            store.put_array(staging_key(version, f"{split}/{name}.npy"), getattr(arrays, name))
    store.put_array(staging_key(version, "synthetic.npy"), synthetic)
    return {"version": version, "synthetic": int(synthetic.sum())}


def write(settings: Settings, version: str) -> dict:
    """Write the snapshot and its manifest, clear staging; returns build_dataset's dict."""
    store = open_store(settings)
    if snapshot.exists(store, version):
        return result(version, snapshot.load_manifest(store, version), reused=True)
    pool, info = _get_pool(store, version, "clean")
    splits = {s: SplitArrays(*(store.get_array(staging_key(version, f"{s}/{n}.npy"))
                               for n in snapshot.ARRAYS)) for s in SPLITS}
    synthetic = np.asarray(store.get_array(staging_key(version, "synthetic.npy")))
    manifest = make_manifest(version, settings, info["sources"], info["parameters"], pool,
                             info["images_in"], splits, synthetic)
    extra = None
    if "outliers" in info:
        manifest["outliers"] = info["outliers"]
        extra = outliers.get(store, staging_key(version, "outliers/"))
    snapshot.write_snapshot(store, version, splits, manifest, extra)
    for key in list(store.list(f"{STAGING}{version}/")):
        store.delete(key)
    summary_log.info("%s", summary(manifest))
    return result(version, manifest, reused=False)
