"""Following the registry champion: load a moved alias, fail closed, back off from a broken version.

A new version replaces the served bundle only once it is fully loaded, its files match the
gate's digests and it passed its smoke test (`ml.stages.serving_bundle.load`). A version that
failed is retried with exponential backoff (poll interval x 2^n, capped), not on every poll.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("visionloop.serving")


class ChampionFollower:
    """Swaps `worker.bundle` when the champion alias moves; remembers failures per version."""

    def __init__(self, settings: Any, worker: Any, on_swap: Any = None):
        self.settings, self.worker, self.on_swap = settings, worker, on_swap
        self.failures: dict[str, tuple[int, float]] = {}  # version -> (attempts, monotonic time of next try)

    def refresh(self, now: float | None = None) -> bool:
        """Load the champion if the alias moved and its backoff allows; True when a swap happened."""
        from ml.stages import serving_bundle

        now = time.monotonic() if now is None else now
        version = serving_bundle.champion_version(self.settings)
        current = self.worker.bundle
        if version is None or (current is not None and current.version == version):
            return False
        attempts, next_try = self.failures.get(version, (0, 0.0))
        if now < next_try:
            return False
        try:
            bundle = self._load()
        except Exception as exc:
            self._failed(version, attempts + 1, now, exc, current)
            return False
        self.failures.pop(version, None)
        self.worker.bundle = bundle  # in-flight batches keep the old one
        log.info("serving model version %s (was %s)", version, current and current.version)
        current = None  # the last reference here: the old model's cycles can be collected in on_swap
        if self.on_swap is not None:
            self.on_swap()
        return True

    def _load(self) -> Any:
        from ml.stages import serving_bundle

        return serving_bundle.load(self.settings)

    def _failed(self, version: str, attempts: int, now: float, exc: Exception, current: Any) -> None:
        """Log, count and schedule the next try of a version that could not be served."""
        delay = min(self.settings.alias_poll_seconds * 2 ** attempts, self.settings.bundle_retry_max_s)
        self.failures[version] = (attempts, now + delay)
        reason = getattr(exc, "reason", "load")
        metrics = getattr(self.worker, "metrics", None)
        if metrics is not None:
            metrics.bundle_failures.labels(reason=reason).inc()
        log.error("champion version %s refused (%s, attempt %d): %s; still serving %s; next try in %.0f s",
                  version, reason, attempts, exc, current and current.version, delay,
                  exc_info=reason == "load")
