"""The spool's sqlite index: request_id -> where its image is, its sha256 and what was predicted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

_COLUMNS = ("request_id", "segment", "offset", "length", "ext", "image_key", "label", "model_version", "sha256")


class SpoolIndex:
    """Survives restarts; rebuilt from the segments when lost. Rows outlive their segments (feedback later)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
        try:
            self._prepare()
        except sqlite3.DatabaseError:
            self.db.close()
            raise

    def _prepare(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, segment INTEGER, "
            "offset INTEGER, length INTEGER, ext TEXT, image_key TEXT, label TEXT, model_version TEXT, sha256 TEXT)")
        have = {row[1] for row in self.db.execute("PRAGMA table_info(requests)")}
        if "sha256" not in have:  # an index written before hashes were kept: those rows stay unverified
            self.db.execute("ALTER TABLE requests ADD COLUMN sha256 TEXT")
        self.db.execute("CREATE TABLE IF NOT EXISTS feedback (request_id TEXT PRIMARY KEY, sha256 TEXT)")
        self.db.commit()

    def add(self, request_id: str, seq: int, offset: int, length: int, ext: str, label: str,
            model_version: str, sha256: str, ignore_existing: bool = False) -> None:
        verb = "INSERT OR IGNORE" if ignore_existing else "INSERT OR REPLACE"
        self.db.execute(f"{verb} INTO requests ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                        (request_id, seq, offset, length, ext, label, model_version, sha256))

    def set_image_keys(self, pairs: list[tuple[str, str]]) -> None:
        self.db.executemany("UPDATE requests SET image_key = ? WHERE request_id = ?",
                            [(key, rid) for rid, key in pairs])
        self.db.commit()

    def max_segment(self) -> int:
        value = self.db.execute("SELECT MAX(segment) FROM requests").fetchone()[0]
        return -1 if value is None else int(value)

    def get(self, request_id: str) -> dict | None:
        cursor = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE request_id = ?", (request_id,))
        row = cursor.fetchone()
        return None if row is None else dict(zip(_COLUMNS, row, strict=True))

    def feedback_sha(self, request_id: str) -> str | None:
        """The image hash a feedback for this request already carried, if one was spooled here."""
        row = self.db.execute("SELECT sha256 FROM feedback WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def add_feedback(self, request_id: str, sha256: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO feedback VALUES (?, ?)", (request_id, sha256))

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        try:
            self.db.commit()
        finally:
            self.db.close()
