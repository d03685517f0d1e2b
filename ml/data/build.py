"""The pieces of a dataset build: plan and version the sources, decode, balance, make the manifest.

`ml.stages.data` runs them, in one call (`build`) or as the four `dataset_build` tasks; both
use the functions below, so a CLI build and a DAG build give the same version and the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable

import numpy as np

from ml.config import Settings
from ml.data import outliers, snapshot
from ml.data.balance import SPLITS, TEST_FRACTION, VAL_FRACTION, SplitArrays, balance
from ml.data.base import Source
from ml.data.decode import default_workers
from ml.data.sources import resolve_sources
from ml.data.validate import Pool, counts_by, merge
from ml.imaging import IMAGE_SIZE
from ml.storage import ObjectStore

log = logging.getLogger(__name__)
# Bump when a change to this package changes the pixels or the splits.
# 2: splits by a hash of each image's identity, feedback in train or `corrections` only.
PIPELINE = 2


def parameters(settings: Settings) -> dict:
    """Everything besides the sources that decides a snapshot's content."""
    return {"classes": list(settings.classes), "class_target": settings.class_target,
            "seed": settings.seed, "val_fraction": VAL_FRACTION, "test_fraction": TEST_FRACTION,
            "splits": "sha256 of pixels (feedback: of the request id)",
            "corrections_holdout": settings.corrections_holdout,
            "image_size": IMAGE_SIZE, "resample": "centre-crop+lanczos",
            "balance": "train-only rotations: quarter turns, then small angles", "pipeline": PIPELINE}


def dataset_version(described: list[dict], params: dict, outlier_sources: list[dict] | None = None) -> str:
    """Content hash of the inputs and parameters: same inputs, same version.

    Source names (paths) are left out, so moving a folder does not make a new dataset. Outlier
    sources enter only when there are some, so a build without them keeps its version.
    """
    inputs = {"sources": [[d["kind"], d["checksum"]] for d in described], "parameters": params}
    if outlier_sources:
        inputs["outliers"] = [[d["kind"], d["checksum"]] for d in outlier_sources]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def plan(settings: Settings, store: ObjectStore, sources: Iterable[str | Source] | None = None
         ) -> tuple[list[Source], list[dict], dict, list[dict], str]:
    """Resolve the sources and outlier sources, checksum them and name the version, without decoding."""
    resolved = resolve_sources(settings, store, sources)
    described = [s.describe() for s in resolved]
    params = parameters(settings)
    outlier_sources = outliers.describe(settings, resolved)
    return resolved, described, params, outlier_sources, dataset_version(described, params, outlier_sources)


def load_pool(settings: Settings, resolved: list[Source], workers: int | None = None) -> Pool:
    """Every source decoded to 32x32 uint8, merged in source order."""
    workers = workers or default_workers()
    loaded = []
    for source in resolved:
        started = time.perf_counter()
        part = source.load(settings.classes, workers)
        log.info("%s: %d images in %.1f s", source.name, len(part), time.perf_counter() - started)
        loaded.append(part)
    return merge(loaded)


def make_manifest(version: str, settings: Settings, described: list[dict], params: dict,
                  pool: Pool, images_in: int, splits: dict[str, SplitArrays],
                  synthetic: np.ndarray) -> dict:
    """The manifest of docs/architecture.md, plus what was skipped and why."""
    classes = settings.classes
    names = [d["name"] for d in described]
    per_split = {}
    for split in SPLITS:
        counts = np.bincount(splits[split].y, minlength=len(classes))
        per_split[split] = {c: int(n) for c, n in zip(classes, counts, strict=True)}
    # Distinct identities per split (rotated copies share their origin's): `<split>/ids.npy` holds them.
    ids = {split: int(len(np.unique(splits[split].ids))) for split in SPLITS}
    return {
        "version": version, "classes": list(classes), "created_at": snapshot.utc_now(),
        "sources": described, "parameters": params,
        "counts": per_split, "ids": ids,
        "counts_by_source": counts_by(pool.y, pool.source, names, classes),
        "synthetic": {c: int(n) for c, n in zip(classes, synthetic, strict=True)},
        "images_in": images_in, "images_out": sum(len(a) for a in splits.values()),
        **pool.problems(),
    }


def balance_pool(settings: Settings, pool: Pool) -> tuple[dict[str, SplitArrays], np.ndarray]:
    """Stable splits of a cleaned pool and the rotated top-ups (ml.data.balance)."""
    return balance(pool.x, pool.y, pool.source, pool.ids, len(settings.classes), settings.class_target,
                   settings.seed, settings.corrections_holdout)
