"""`<spool>/quarantine/`: spool files and records that cannot ship as they are, kept for a human, never retried."""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Quarantine:
    """Moves bad spool items aside so everything else keeps shipping; `count` is what the service exposes."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.count = 0
        self._seq = itertools.count()

    def _dest(self, name: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / f"{int(time.time() * 1000):013d}-{next(self._seq)}-{name}"

    def move(self, path: Path, why: str, count: bool = True) -> None:
        """Move one file aside (count=False for the companions of an item already counted)."""
        if not path.exists():
            return
        dest = self._dest(path.name)
        os.replace(path, dest)
        if count:
            self.count += 1
            log.warning("quarantined %s as %s: %s", path, dest.name, why)

    def lines(self, seq: int, lines: list[bytes], why: str) -> None:
        """Keep the raw lines of bad records of one segment; the good ones ship."""
        dest = self._dest(f"segment-{seq:012d}-records.jsonl")
        with open(dest, "wb") as handle:
            handle.writelines(line if line.endswith(b"\n") else line + b"\n" for line in lines)
            handle.flush()
            os.fsync(handle.fileno())
        self.count += len(lines)
        log.warning("quarantined %d record(s) of spool segment %d in %s: %s", len(lines), seq, dest.name, why)
