"""The spool's files: append-only segments (JSONL envelopes + image bytes) and the sqlite index."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _paths(directory: Path, seq: int) -> tuple[Path, Path]:
    return directory / f"{seq:012d}.jsonl", directory / f"{seq:012d}.bin"


def write_durably(path: Path, data: bytes) -> None:
    """Write via a temp file, fsync it, rename, fsync the folder: the file is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_envelopes(directory: Path, seq: int) -> Iterator[dict]:
    """Every complete envelope of a segment; a torn last line (power loss) is skipped."""
    jsonl, _ = _paths(directory, seq)
    with open(jsonl, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                yield json.loads(line)
            except ValueError:
                log.warning("spool segment %s line %d is torn; skipped", jsonl.name, number)


def read_blob(directory: Path, seq: int, offset: int, length: int) -> bytes | None:
    """Bytes of one spooled image, or None once its segment has been shipped and removed."""
    try:
        with open(_paths(directory, seq)[1], "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        return data if len(data) == length else None
    except FileNotFoundError:
        return None


class SpoolWriter:
    """Appends envelopes to the current segment; tracks every segment not yet shipped."""

    def __init__(self, directory: Path, max_records: int, fsync_each: bool = False):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_records, self.fsync_each = max_records, fsync_each
        self.segments: dict[int, dict] = {}  # seq -> {"count", "sealed"}
        self.current: int | None = None
        self._fds: tuple[int, int] | None = None
        self._offset, self._opened = 0, 0.0
        self._dirty = False

    @property
    def count(self) -> int:
        return self.segments[self.current]["count"] if self.current is not None else 0

    @property
    def full(self) -> bool:
        return self.count >= self.max_records

    @property
    def pending(self) -> int:
        return sum(seg["count"] for seg in list(self.segments.values()))

    def age_s(self) -> float:
        return time.monotonic() - self._opened if self.current is not None else 0.0

    def existing_segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.jsonl"))

    def adopt(self, seq: int, count: int, sealed: bool) -> None:
        """Take over a segment a previous process left behind (closed: it will be sealed)."""
        self.segments[seq] = {"count": count, "sealed": sealed}

    def append(self, prefix: str, record_json: str, blob: bytes) -> tuple[int, int, int]:
        """Write the blob, then one envelope line pointing at it; returns (seq, offset, length)."""
        if self.current is None or self.full:
            self.rotate()
            self._open()
        jsonl_fd, bin_fd = self._fds
        offset = self._offset
        if blob:
            os.write(bin_fd, blob)
            self._offset += len(blob)
        line = f'{prefix}{record_json},"blob":[{offset},{len(blob)}]}}\n'
        os.write(jsonl_fd, line.encode())
        self.segments[self.current]["count"] += 1
        self._dirty = True
        if self.fsync_each:
            self.sync()
        return self.current, offset, len(blob)

    def _open(self) -> None:
        seq = max([*self.segments, *self.existing_segments(), -1]) + 1
        jsonl, binary = _paths(self.dir, seq)
        self._fds = (os.open(jsonl, _FLAGS, 0o644), os.open(binary, _FLAGS, 0o644))
        self.current, self._offset, self._opened = seq, 0, time.monotonic()
        self.segments[seq] = {"count": 0, "sealed": False}

    def sync(self) -> None:
        if self._fds and self._dirty:
            for fd in self._fds:
                os.fsync(fd)
            self._dirty = False

    def rotate(self) -> None:
        """Close the current segment; it becomes a candidate for sealing."""
        if self._fds:
            self.sync()
            for fd in self._fds:
                os.close(fd)
        self._fds, self.current = None, None

    close = rotate

    def closed_segments(self) -> list[int]:
        return sorted(s for s, seg in self.segments.items() if s != self.current and not seg["sealed"])

    def mark_sealed(self, seq: int) -> None:
        self.segments[seq]["sealed"] = True

    def forget(self, seq: int) -> None:
        """Remove a shipped segment's files."""
        for path in _paths(self.dir, seq):
            path.unlink(missing_ok=True)
        self.segments.pop(seq, None)


class SpoolIndex:
    """request_id -> where its image is and what was predicted; survives restarts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, segment INTEGER, "
            "offset INTEGER, length INTEGER, ext TEXT, image_key TEXT, label TEXT, model_version TEXT)")
        self.db.commit()

    def add(self, request_id: str, seq: int, offset: int, length: int, ext: str, label: str,
            model_version: str, ignore_existing: bool = False) -> None:
        verb = "INSERT OR IGNORE" if ignore_existing else "INSERT OR REPLACE"
        self.db.execute(f"{verb} INTO requests VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                        (request_id, seq, offset, length, ext, label, model_version))

    def set_image_keys(self, pairs: list[tuple[str, str]]) -> None:
        self.db.executemany("UPDATE requests SET image_key = ? WHERE request_id = ?",
                            [(key, rid) for rid, key in pairs])
        self.db.commit()

    def get(self, request_id: str) -> dict | None:
        cursor = self.db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()
