"""The request log's exceptions: what the service maps to 404 / 503 / a startup error."""

from __future__ import annotations


class UnknownRequest(KeyError):
    """No request with that id was ever logged here or shipped to the object store."""


class SpoolUnavailable(RuntimeError):
    """A record could not be made durable (disk full, spool cap reached): answer 503, retry later."""

    def __init__(self, reason: str, retry_after_s: int = 5):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class SpoolLocked(RuntimeError):
    """Another process already writes this spool directory (one writer per spool)."""


class SpoolCorrupt(ValueError):
    """A spool file or item cannot be shipped as it is (torn, unparsable, bytes not matching): quarantine it."""
