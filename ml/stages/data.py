"""The data stage: sources -> validation -> balancing -> a versioned snapshot under `datasets/<version>/`.

`build` runs it in one call, in memory (`visionloop data build`, `make data`, benchmarks).
The `dataset_build` DAG runs the same pieces as four resumable tasks, `fetch`, `validate`,
`balance` and `write`, passing only the version (a content hash of the inputs) and keeping
the arrays in between under `staging/<version>/` (ml.data.staging). Both paths call the same
ml.data functions, so they give the same version and the same pixels; when the snapshot
already exists every step is a no-op and the result says `reused`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ml import layout
from ml.config import Settings
from ml.data import outliers, snapshot, staging
from ml.data.base import Source
from ml.data.build import balance_pool, load_pool, make_manifest, plan
from ml.data.decode import default_workers
from ml.data.report import summary
from ml.data.validate import clean
from ml.stages import snapshots
from ml.storage import open_store

log = logging.getLogger(__name__)
summary_log = logging.getLogger("ml.data.summary")  # the counts table, for task logs (the CLI prints it itself)


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Log how long a step took (shown by `visionloop data build --profile`)."""
    started = time.perf_counter()
    yield
    log.info("%s: %.2f s", step, time.perf_counter() - started)


def result(version: str, manifest: dict, reused: bool) -> dict:
    """What the stage returns (and the DAG passes on): small and JSON-able."""
    return {"version": version, "manifest_key": layout.dataset_manifest(version),
            "counts": manifest["counts"], "reused": reused}


def build(settings: Settings, sources: Iterable[str | Source] | None = None, workers: int | None = None) -> dict:
    """Build (or reuse) the snapshot of the sources; {"version", "manifest_key", "counts", "reused"}."""
    store = open_store(settings)
    resolved, described, params, outlier_sources, version = plan(settings, store, sources)
    if snapshot.exists(store, version):
        log.info("dataset %s already exists; reusing it", version)
        return result(version, snapshots.manifest(settings, version), reused=True)
    with timed("fetch and decode"):
        pool = load_pool(settings, resolved, workers)
        extra, entry = (outliers.load(settings, resolved, outlier_sources, workers or default_workers())
                        if outlier_sources else (None, None))
    images_in = len(pool)
    with timed("validate"):
        pool = clean(pool, settings.classes)
    with timed("split and balance"):
        splits, synthetic = balance_pool(settings, pool)
    manifest = make_manifest(version, settings, described, params, pool, images_in, splits, synthetic)
    if entry is not None:
        manifest["outliers"] = entry
    with timed("write snapshot"):
        snapshot.write_snapshot(store, version, splits, manifest, extra)
    summary_log.info("%s", summary(manifest))
    return result(version, manifest, reused=False)


def fetch(settings: Settings, sources: list[str] | None = None) -> dict:
    """DAG step 1: download/read and decode every source (and the outliers) into staging; {"version", "reused"}."""
    store = open_store(settings)
    resolved, described, params, outlier_sources, version = plan(settings, store, sources)
    if snapshot.exists(store, version):
        return {"version": version, "reused": True}
    pool = load_pool(settings, resolved)
    info = {"version": version, "sources": described, "parameters": params, "images_in": len(pool)}
    if outlier_sources:  # decoded here with the pool, kept in staging until the write step
        extra, info["outliers"] = outliers.load(settings, resolved, outlier_sources, default_workers())
        staging.put_outliers(store, version, extra)
    staging.put_pool(store, version, "raw", pool, info)
    return {"version": version, "reused": False}


def validate(settings: Settings, version: str) -> dict:
    """DAG step 2: drop duplicates and fail on an empty class; {"version", "images"}."""
    store = open_store(settings)
    if snapshot.exists(store, version):
        return {"version": version, "images": None}
    pool, info = staging.get_pool(store, version, "raw")
    pool = clean(pool, settings.classes)
    staging.put_pool(store, version, "clean", pool, info)
    return {"version": version, "images": len(pool)}


def balance(settings: Settings, version: str) -> dict:
    """DAG step 3: stable splits, train topped up with rotations; {"version", "synthetic"}."""
    store = open_store(settings)
    if snapshot.exists(store, version):
        return {"version": version, "synthetic": None}
    pool, _ = staging.get_pool(store, version, "clean")
    splits, synthetic = balance_pool(settings, pool)
    staging.put_splits(store, version, splits, synthetic)
    return {"version": version, "synthetic": int(synthetic.sum())}


def write(settings: Settings, version: str) -> dict:
    """DAG step 4: write the snapshot and its manifest, clear staging; returns what `build` returns."""
    store = open_store(settings)
    if snapshot.exists(store, version):
        return result(version, snapshots.manifest(settings, version), reused=True)
    pool, info = staging.get_pool(store, version, "clean")
    splits, synthetic = staging.get_splits(store, version)
    manifest = make_manifest(version, settings, info["sources"], info["parameters"], pool,
                             info["images_in"], splits, synthetic)
    extra = None
    if "outliers" in info:
        manifest["outliers"] = info["outliers"]
        extra = staging.get_outliers(store, version)
    snapshot.write_snapshot(store, version, splits, manifest, extra)
    staging.clear(store, version)
    summary_log.info("%s", summary(manifest))
    return result(version, manifest, reused=False)
