"""Outlier images versioned with the snapshot: `datasets/<v>/outliers/{x,classes,source}.npy` + manifest["outliers"].

Sources: `VISIONLOOP_OUTLIER_SOURCES` (decoded by ml.ood.outlier_data, exactly as the OOD stage
did from settings) and, when `feedback` is a data source, the users' "none of these" corrections
(`ml.records.NONE_OF_THESE`) as one more source of the single class USER_CLASS. Their checksums
are part of the dataset version: a changed outlier folder or a new "none of these" is a new
snapshot. `classes.npy` is fixed-width unicode (no object arrays: loaded with allow_pickle=False).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ml import layout
from ml.config import Settings
from ml.data.base import Source, empty_images
from ml.data.feedback import FeedbackSource
from ml.data.folders import FolderSource
from ml.storage import ObjectStore

log = logging.getLogger(__name__)
USER_KIND = "feedback"
USER_SOURCE = "user_none_of_these"  # its set name in OOD logs
USER_CLASS = "user:none_of_these"
ARRAYS = ("x", "classes", "source")


@dataclass
class OutlierSet:
    """Every outlier image of a snapshot: pixels, class name, index into manifest["outliers"]["sources"]."""

    x: np.ndarray = field(default_factory=empty_images)
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))

    def __len__(self) -> int:
        return len(self.source)


def describe(settings: Settings, resolved: list[Source]) -> list[dict]:
    """{kind, name, checksum} of every outlier source, without decoding (they enter the version hash)."""
    from ml.ood.outlier_data import configured_sources

    out = []
    for spec in configured_sources(settings):
        if spec == "cifar100-unchosen":
            cifar = next((s for s in resolved if s.kind == "cifar100"), None)
            if cifar is None:  # the same condition ml.ood.outlier_data skips it on
                log.warning("outliers: cifar100-unchosen needs the cifar100 data source; skipping it")
                continue
            # Which superclasses are unchosen follows the classes, already in the parameters.
            out.append({"kind": spec, "name": spec, "checksum": cifar.checksum()})
        else:
            out.append({"kind": "folder", "name": spec, "checksum": FolderSource(spec[len("folder:"):]).checksum()})
    feedback = next((s for s in resolved if isinstance(s, FeedbackSource)), None)
    if feedback is not None and (checksum := feedback.none_of_these_checksum()):
        out.append({"kind": USER_KIND, "name": USER_SOURCE, "checksum": checksum})
    return out


def _load_one(settings: Settings, resolved: list[Source], spec: dict, workers: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(set name, images, class names) of one described source."""
    from ml.ood import outlier_data

    if spec["kind"] == USER_KIND:
        feedback = next(s for s in resolved if isinstance(s, FeedbackSource))
        loaded = feedback.load_none_of_these()
        for path, reason in loaded.skipped[:5]:
            log.warning("outliers: skipping %s (%s)", path, reason)
        return USER_SOURCE, loaded.x, np.full(len(loaded), USER_CLASS)
    if spec["kind"] == "cifar100-unchosen":
        found = outlier_data.cifar100_unchosen(settings)  # its archive was fetched with the pool
        if found is None:
            log.warning("outliers: the cifar100 archive is not in %s; cifar100-unchosen is empty",
                        settings.downloads_dir)
            return "cifar100_unchosen", empty_images(), np.zeros(0, "<U1")
    else:
        found = outlier_data.load_folder(spec["name"][len("folder:"):], workers)
    return found.name, found.images, np.asarray(found.classes, dtype=str)


def load(settings: Settings, resolved: list[Source], described: list[dict],
         workers: int = 1) -> tuple[OutlierSet, dict]:
    """Decode every described source; the arrays and the manifest's `outliers` entry."""
    xs, classes, sources, entries = [empty_images()], [], [], []
    for index, spec in enumerate(described):
        name, images, names = _load_one(settings, resolved, spec, workers)
        xs.append(images)
        classes.extend(map(str, names))
        sources.append(np.full(len(names), index, np.int16))
        entries.append({**spec, "set": name, "images": len(names), "counts": dict(sorted(Counter(map(str, names)).items()))})
    width = max([len(c) for c in classes] + [1])
    arrays = OutlierSet(np.concatenate(xs), np.array(classes, dtype=f"<U{width}"),
                        np.concatenate(sources) if sources else np.zeros(0, np.int16))
    entry = {"sources": entries, "images": len(arrays), "counts": dict(sorted(Counter(classes).items())),
             "user_class": USER_CLASS, "user_group": "fit"}
    return arrays, entry


def put(store: ObjectStore, prefix: str, arrays: OutlierSet) -> None:
    """`<prefix>{x,classes,source}.npy`."""
    for name in ARRAYS:
        store.put_array(f"{prefix}{name}.npy", getattr(arrays, name))


def get(store: ObjectStore, prefix: str) -> OutlierSet:
    """`<prefix>{x,classes,source}.npy` (staging, or a snapshot's through ml.stages.snapshots.outliers)."""
    return OutlierSet(*(store.get_array(f"{prefix}{name}.npy") for name in ARRAYS))


def snapshot_prefix(version: str) -> str:
    return f"{layout.dataset_prefix(version)}outliers/"

