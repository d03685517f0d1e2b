"""Image folders and archives laid out `<class>/<image>`, optionally inside one wrapping directory.

Accepts a directory, `.tar`, `.tar.gz`/`.tgz` or `.zip`. Any PIL-readable
format and size; greyscale, palette and RGBA become RGB; EXIF orientation is
applied (ml.imaging). Folders whose name is not a configured class are
reported and skipped. Archives are read as a stream, member by member.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from ml.data.base import DataError, Loaded, Source, class_index
from ml.data.decode import Item, decode_items
from ml.data.tarstream import UnsupportedTar, iter_tar

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
IGNORED_PARTS = ("__MACOSX",)  # resource forks macOS puts into zips


def is_hidden(path: str) -> bool:
    """Dot files and macOS resource forks: never user images, so skipped without a report."""
    return any((p.startswith(".") and p != ".") or p in IGNORED_PARTS for p in path.split("/"))


def class_of(path: str) -> str | None:
    """The class folder of `<class>/<img>` or `<wrapper>/<class>/<img>`; None for other layouts."""
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    return parts[-2] if len(parts) in (2, 3) else None


class FolderSource(Source):
    """`folder:<path>`: user pictures from a directory or an archive."""

    kind = "folder"

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self._checksum: str | None = None

    @property
    def name(self) -> str:
        return f"folder:{self.path}"

    def _is_tar(self) -> bool:
        return self.path.name.lower().endswith(TAR_SUFFIXES)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file())

    def checksum(self) -> str:
        if self._checksum is None:
            if not self.path.exists():
                raise DataError(f"data source {self.name}: {self.path} does not exist")
            digest = hashlib.sha256()
            if self.path.is_dir():
                for file in self._files():  # names and bytes: a rename or an edit is a new dataset
                    digest.update(file.relative_to(self.path).as_posix().encode() + b"\0")
                    digest.update(hashlib.sha256(file.read_bytes()).digest())
            else:
                with open(self.path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
            self._checksum = f"sha256:{digest.hexdigest()}"
        return self._checksum

    def load(self, classes: tuple[str, ...], workers: int = 1) -> Loaded:
        self.checksum()  # fails with a clear message if the path is missing
        index, unknown, skipped = class_index(classes), Counter(), []

        def items() -> Iterator[Item]:
            for path, read in self._members():
                label = class_of(path)
                if is_hidden(path):
                    continue
                if label is None:
                    skipped.append((path, "not in a <class>/ folder"))
                    continue
                if label not in index:
                    unknown[label] += 1
                    continue
                try:
                    data = read()
                except (OSError, EOFError, tarfile.TarError) as exc:  # unreadable: report, go on
                    skipped.append((path, f"cannot read: {exc.strerror or exc}"))
                    continue
                yield path, index[label], data

        out = decode_items(items(), workers, desc=self.path.name)
        out.unknown_classes.update(unknown)
        out.skipped.extend(skipped)
        return out

    def _tar_members(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
        """Members of a tar archive, streamed: the fast reader, or tarfile where it gives up."""
        done = 0
        try:
            try:
                for path, data in iter_tar(self.path):
                    done += 1
                    yield path, lambda data=data: data
                return
            except UnsupportedTar as exc:
                log.info("%s: %s; reading it with tarfile", self.path, exc)
            # "r|*" streams: one member in memory at a time, and no seeking back in a .gz.
            with tarfile.open(self.path, "r|*") as archive:
                members = (m for m in archive if m.isfile())
                for member in islice(members, done, None):  # skip what the fast reader yielded
                    yield member.name, lambda member=member: archive.extractfile(member).read()
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise DataError(f"data source {self.name}: cannot read the archive ({exc})") from None

    def _members(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
        """(path inside the source, a function that reads its bytes), in a stable order."""
        if self.path.is_dir():
            for file in self._files():
                yield file.relative_to(self.path).as_posix(), file.read_bytes
        elif self._is_tar():
            yield from self._tar_members()
        elif zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        yield info.filename, lambda info=info: archive.read(info)
        else:
            raise DataError(f"data source {self.name}: not a directory, .tar, .tar.gz or .zip archive")
