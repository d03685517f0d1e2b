"""Turn `Settings.data_sources` specs (cifar10, cifar100, feedback, folder:<path>) into Source objects."""

from __future__ import annotations

from collections.abc import Iterable

from ml.config import Settings
from ml.data.base import DataError, Source
from ml.data.cifar import Cifar10Source, Cifar100Source
from ml.data.feedback import FeedbackSource
from ml.data.folders import FolderSource
from ml.storage import ObjectStore

SPEC_HELP = "cifar10, cifar100, feedback or folder:<directory, .tar, .tar.gz or .zip>"


def resolve_source(spec: str | Source, settings: Settings, store: ObjectStore) -> Source:
    """One source from its spec; Source objects pass through (tests and callers with custom URLs)."""
    if isinstance(spec, Source):
        return spec
    spec = spec.strip()
    if spec in ("cifar10", "cifar100"):
        cls = Cifar10Source if spec == "cifar10" else Cifar100Source
        url, md5 = getattr(settings, f"{spec}_url"), getattr(settings, f"{spec}_md5")
        return cls(settings.downloads_dir, url or None, md5 or None)
    if spec == "feedback":
        return FeedbackSource(store)
    if spec.startswith("folder:") and spec[len("folder:"):].strip():
        return FolderSource(spec[len("folder:"):].strip())
    raise DataError(f"unknown data source {spec!r} in VISIONLOOP_DATA_SOURCES; use {SPEC_HELP}")


def resolve_sources(settings: Settings, store: ObjectStore,
                    specs: Iterable[str | Source] | None = None) -> list[Source]:
    """The sources to build from, in order (earlier sources win exact duplicates)."""
    specs = list(settings.data_sources if specs is None else specs)
    if not specs:
        raise DataError(f"no data sources configured; set VISIONLOOP_DATA_SOURCES to {SPEC_HELP}")
    sources = [resolve_source(spec, settings, store) for spec in specs]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"a data source is listed twice: {', '.join(names)}")
    return sources
