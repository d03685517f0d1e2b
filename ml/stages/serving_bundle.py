"""The registry side of serving: which version the champion alias names, and its bundle fetched, verified and loaded.

`load` resolves the alias, downloads `runs:/<run_id>/model` and `runs:/<run_id>/bundle` into
`<home>/serving/bundles/<run_id>/` (the cache is keyed by run id, shared by the workers of a
service), checks both folders against the gate's digests and returns a smoke-tested
`ml.bundle.ServingBundle`. `serving.champion` follows the alias with it; `serving.build
--champion` bakes the same verified files into a Bento with `export`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ml.bundle import MODEL_FILE, ServingBundle, verify_digests
from ml.config import Settings
from ml.stages import tracking

log = logging.getLogger(__name__)
ARTIFACTS = ("bundle", "model")


def champion_version(settings: Settings, alias: str = tracking.CHAMPION) -> str | None:
    """The registry version the alias points at now, or None if there is none (or MLflow is down): keep serving."""
    try:
        return tracking.champion_version(settings, alias)
    except Exception as exc:  # noqa: BLE001  (an unreachable server must not take the service down)
        log.debug("no %s version: %s", alias, exc)
        return None


def fetch(settings: Settings, alias: str = tracking.CHAMPION) -> tuple[Path, str, str]:
    """Download (once per run) and verify the alias's `bundle/` and `model/`; (directory, version, run id).

    Raises ml.bundle.BundleRejected when the files differ from the gate's recorded digests.
    """
    mv = tracking.client(settings).get_model_version_by_alias(settings.model_name, alias)
    target = Path(settings.home).absolute() / "serving" / "bundles" / str(mv.run_id)
    with _cache_lock(target):  # the workers of one service share the cache and start together
        for artifact in ARTIFACTS:
            if not (target / artifact).is_dir():
                _download(settings, mv.run_id, artifact, target)
        verify_digests(target, dict(mv.tags or {}), str(mv.version), settings.serve_unverified_versions)
    return target, str(mv.version), str(mv.run_id)


def load(settings: Settings, alias: str = tracking.CHAMPION) -> ServingBundle:
    """The alias's bundle, fetched, verified, loaded and smoke-tested (BundleRejected when a check fails)."""
    target, version, run_id = fetch(settings, alias)
    bundle = ServingBundle.from_dir(target, model_loader=lambda: tracking.load_keras(target / "model"),
                                    version=version, run_id=run_id, imagenet=settings.imagenet_enabled,
                                    runtime=settings.inference_runtime, runtime_threads=settings.openvino_threads,
                                    similarity_prefilter_dims=settings.similarity_prefilter_dims)
    bundle.smoke_test()
    return bundle


def export(settings: Settings, destination: Path, alias: str = tracking.CHAMPION) -> tuple[Path, str]:
    """Write the alias's verified bundle as a bundle dir (`model.keras` beside `bundle/`); (directory, version)."""
    bundle = load(settings, alias)  # the same checks serving makes before it swaps
    destination.mkdir(parents=True, exist_ok=True)
    tracking.load_keras(Path(bundle.root) / "model").save(destination / MODEL_FILE)
    shutil.copytree(Path(bundle.root) / "bundle", destination / "bundle")
    return destination, bundle.version


@contextmanager
def _cache_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on one cached run (download, verify) across the processes that share it."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(settings: Settings, run_id: str, artifact: str, target: Path) -> None:
    """Download `runs:/<run_id>/<artifact>` to `target/<artifact>`: it appears whole or not at all."""
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".download-"))
    try:
        tracking.download(settings, run_id, artifact, staging)
        shutil.rmtree(target / artifact, ignore_errors=True)
        (staging / artifact).rename(target / artifact)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
