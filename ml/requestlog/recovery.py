"""Startup: finish what a previous process left, whatever state its files are in; spool content never stops startup."""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

from ml.requestlog.errors import SpoolCorrupt
from ml.requestlog.index import SpoolIndex
from ml.requestlog.quarantine import Quarantine
from ml.requestlog.shipper import sealed_segment
from ml.requestlog.spool import check_envelopes

log = logging.getLogger(__name__)
_SEGMENT_NAME = re.compile(r"^(\d{12})\.(jsonl|bin)$")


def open_index(path: Path, quarantine: Quarantine) -> SpoolIndex:
    """The index, or a fresh one (rebuilt from the segments) when the file is not a database."""
    try:
        return SpoolIndex(path)
    except sqlite3.DatabaseError as exc:
        for suffix in ("", "-wal", "-shm"):
            quarantine.move(path.with_name(path.name + suffix), f"unreadable index: {exc}", count=not suffix)
        return SpoolIndex(path)


class Recovery:
    """Mixin for RequestLog."""

    def _recover(self) -> int:
        """Clean up shipped batches, set stray files aside, re-index and queue the rest; returns the top seq."""
        for tmp in self.sealed_dir.glob("*.tmp"):
            tmp.unlink()
        for done in self.sealed_dir.glob("*.done"):  # shipped; the crash came before the cleanup
            try:
                self.writer.forget(sealed_segment(done))
                done.unlink()
            except SpoolCorrupt as exc:
                self.quarantine.move(done, str(exc))
        sealed = set()
        for path in self.sealed_dir.iterdir():
            try:
                if path.suffix != ".json":
                    raise SpoolCorrupt(f"{path.name} does not belong in sealed/")
                sealed.add(sealed_segment(path))
            except SpoolCorrupt as exc:
                self.quarantine.move(path, str(exc))
        segments = self._segment_files(sealed)
        for seq in segments:
            self._adopt(seq, seq in sealed)
        self.index.commit()
        return max([*segments, *sealed, -1])

    def _segment_files(self, sealed: set[int]) -> list[int]:
        """Numbers of the segments with a .jsonl; anything else in segments/ goes to quarantine."""
        names: dict[int, set[str]] = {}
        for path in self.writer.dir.iterdir():
            match = _SEGMENT_NAME.match(path.name)
            if match is None:
                self.quarantine.move(path, "not a spool segment file")
            else:
                names.setdefault(int(match[1]), set()).add(match[2])
        for seq, kinds in names.items():
            if "jsonl" not in kinds and seq not in sealed:
                self.quarantine.move(self.writer.dir / f"{seq:012d}.bin", "image bytes without their records")
        return sorted(seq for seq, kinds in names.items() if "jsonl" in kinds)

    def _adopt(self, seq: int, sealed: bool) -> None:
        """Queue one segment and index its valid requests (the bad ones are quarantined when it is sealed)."""
        try:
            envelopes, _ = check_envelopes(self.writer.dir, seq)
        except OSError as exc:
            log.warning("spool segment %d is unreadable (%s); quarantined", seq, exc)
            self._quarantine_segment(seq, str(exc))
            return
        self.writer.adopt(seq, len(envelopes), sealed=sealed)
        for env in envelopes:
            if env["kind"] == "request":
                rec, (offset, length) = env["record"], env["blob"]
                self.index.add(rec["request_id"], seq, offset, length, env["ext"], rec["label"],
                               rec["model_version"], rec["image_sha256"], ignore_existing=True)
