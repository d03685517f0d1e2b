"""The spool's files: append-only segments (JSONL envelopes + image bytes), the segment counter and the lock."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ml.requestlog import failpoints
from ml.requestlog.errors import SpoolCorrupt, SpoolLocked

log = logging.getLogger(__name__)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def segment_paths(directory: Path, seq: int) -> tuple[Path, Path]:
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


def read_lines(directory: Path, seq: int) -> Iterator[bytes]:
    """Every line of a segment's JSONL, raw (validation is the caller's)."""
    with open(segment_paths(directory, seq)[0], "rb") as handle:
        yield from handle


def read_blob(directory: Path, seq: int, offset: int, length: int) -> bytes | None:
    """Bytes of one spooled image, or None once its segment is gone or too short (torn)."""
    try:
        with open(segment_paths(directory, seq)[1], "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        return data if len(data) == length else None
    except FileNotFoundError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is in; a short write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


class SpoolLock:
    """An exclusive flock on `<spool>/lock`, held for the process lifetime: one writer per spool."""

    def __init__(self, directory: Path):
        self.path = directory / "lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise SpoolLocked(
                f"spool {directory} is locked by pid {holder}; give each process (each serving worker) its own "
                "spool directory (VISIONLOOP_SPOOL_DIR)") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


class SegmentCounter:
    """The next segment number, persisted: numbers never repeat, even once every segment has shipped."""

    def __init__(self, path: Path, floor: int = 0):
        self.path = path
        try:
            stored = int(path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            stored = 0  # lost or torn: the floor (segments on disk, index rows) still prevents reuse
        self.next = max(stored, floor)

    def take(self) -> int:
        """Reserve one number durably before any file of it exists."""
        seq = self.next
        write_durably(self.path, f"{seq + 1}\n".encode())
        self.next = seq + 1
        return seq


class SpoolWriter:
    """Appends envelopes to the current segment; tracks every segment not yet shipped and their bytes."""

    def __init__(self, directory: Path, max_records: int, counter: SegmentCounter, fsync_each: bool = False):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_records, self.counter, self.fsync_each = max_records, counter, fsync_each
        self.segments: dict[int, dict] = {}  # seq -> {"count", "sealed", "bytes"}
        self.current: int | None = None
        self._fds: tuple[int, int] | None = None
        self._sizes = [0, 0]  # jsonl, bin
        self._opened = 0.0
        self._dirty = False
        self._last: tuple[int | None, int, int] = (None, 0, 0)

    @property
    def count(self) -> int:
        return self.segments[self.current]["count"] if self.current is not None else 0

    @property
    def full(self) -> bool:
        return self.count >= self.max_records

    @property
    def pending(self) -> int:
        return sum(seg["count"] for seg in list(self.segments.values()))

    @property
    def bytes(self) -> int:
        return sum(seg["bytes"] for seg in list(self.segments.values()))

    def age_s(self) -> float:
        return time.monotonic() - self._opened if self.current is not None else 0.0

    def adopt(self, seq: int, count: int, sealed: bool) -> None:
        """Take over a segment a previous process left behind (closed: it will be sealed)."""
        size = sum(p.stat().st_size for p in segment_paths(self.dir, seq) if p.exists())
        self.segments[seq] = {"count": count, "sealed": sealed, "bytes": size}

    def append(self, prefix: str, record_json: str, blob: bytes) -> tuple[int, int, int]:
        """Write the blob, then one envelope line pointing at it; all or nothing. Returns (seq, offset, length)."""
        if self.current is None or self.full:
            self.rotate()
            self._open()
        jsonl_fd, bin_fd = self._fds
        offset = self._sizes[1]
        line = f'{prefix}{record_json},"blob":[{offset},{len(blob)}]}}\n'.encode()
        try:
            failpoints.hit("enospc_on_write")
            if blob:
                _write_all(bin_fd, blob)
            _write_all(jsonl_fd, line)
        except OSError:
            self._truncate()  # the segment stays exactly as it was before this record
            raise
        self._sizes[0] += len(line)
        self._sizes[1] += len(blob)
        seg = self.segments[self.current]
        seg["count"] += 1
        seg["bytes"] += len(line) + len(blob)
        self._dirty = True
        self._last = (self.current, len(line), len(blob))
        if self.fsync_each:
            self.sync()
        return self.current, offset, len(blob)

    def undo_last(self) -> None:
        """Drop the record just appended (its index row could not be written)."""
        seq, line_len, length = self._last
        if seq != self.current or seq is None:
            return
        self._sizes[0] -= line_len
        self._sizes[1] -= length
        self._truncate()
        seg = self.segments[seq]
        seg["count"] -= 1
        seg["bytes"] -= line_len + length
        self._last = (None, 0, 0)

    def _truncate(self) -> None:
        for fd, size in zip(self._fds, self._sizes, strict=True):
            try:
                os.ftruncate(fd, size)
            except OSError:
                log.exception("could not roll back a partial spool write")

    def _open(self) -> None:
        seq = self.counter.take()
        jsonl, binary = segment_paths(self.dir, seq)
        fds = [os.open(jsonl, _FLAGS, 0o644)]
        try:
            fds.append(os.open(binary, _FLAGS, 0o644))
        except OSError:
            os.close(fds[0])
            raise
        self._fds = (fds[0], fds[1])
        self.current, self._sizes, self._opened = seq, [0, 0], time.monotonic()
        self.segments[seq] = {"count": 0, "sealed": False, "bytes": 0}

    def sync(self) -> None:
        if self._fds and self._dirty:
            failpoints.hit("before_fsync")
            for fd in self._fds:
                os.fsync(fd)
            self._dirty = False

    def rotate(self) -> None:
        """Close the current segment; it becomes a candidate for sealing."""
        if self._fds:
            try:
                self.sync()
            finally:
                for fd in self._fds:
                    os.close(fd)
        self._fds, self.current = None, None

    close = rotate

    def closed_segments(self) -> list[int]:
        return sorted(s for s, seg in self.segments.items() if s != self.current and not seg["sealed"])

    def mark_sealed(self, seq: int) -> None:
        if seq in self.segments:
            self.segments[seq]["sealed"] = True

    def forget(self, seq: int) -> None:
        """Remove a shipped segment's files."""
        for path in segment_paths(self.dir, seq):
            path.unlink(missing_ok=True)
        self.segments.pop(seq, None)


def parse_envelope(line: bytes) -> dict:
    """One JSONL line as an envelope dict with the fields the shipper needs; SpoolCorrupt otherwise."""
    try:
        env = json.loads(line)
        blob, rec = env["blob"], env["record"]
        ok = (isinstance(env, dict) and env.get("kind") in ("request", "feedback") and isinstance(rec, dict)
              and isinstance(env.get("ext"), str) and isinstance(rec.get("request_id"), str)
              and isinstance(blob, list) and len(blob) == 2 and all(isinstance(v, int) and v >= 0 for v in blob))
        if ok and env["kind"] == "request":
            ok = all(isinstance(rec.get(k), str) for k in ("label", "model_version", "image_sha256"))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise SpoolCorrupt("not a spool envelope")
    return env


def blob_sha(env: dict) -> str | None:
    """The sha256 an envelope's bytes must have (None: an unverifiable legacy feedback copy)."""
    return env["record"]["image_sha256"] if env["kind"] == "request" else env.get("sha256")


def check_envelopes(directory: Path, seq: int) -> tuple[list[dict], list[bytes]]:
    """A segment's envelopes whose bytes fit in the .bin and match their sha256, and the bad raw lines."""
    good, bad = [], []
    binary = segment_paths(directory, seq)[1]
    with open(binary, "rb") if binary.exists() else open(os.devnull, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for raw in read_lines(directory, seq):
            try:
                env = parse_envelope(raw)
                offset, length = env["blob"]
                if offset + length > size:
                    raise SpoolCorrupt("image bytes past the end of the segment (torn)")
                expected = blob_sha(env)
                if length and expected:  # empty: a record spooled before hashes were kept
                    handle.seek(offset)
                    if hashlib.sha256(handle.read(length)).hexdigest() != expected:
                        raise SpoolCorrupt("image bytes do not match their sha256")
                good.append(env)
            except SpoolCorrupt as exc:
                log.warning("spool segment %d: bad record (%s)", seq, exc)
                bad.append(raw)
    return good, bad
