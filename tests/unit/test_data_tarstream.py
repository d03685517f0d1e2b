"""The fast tar reader yields exactly what tarfile yields, and hands over to tarfile when it must."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.base import DataError
from ml.data.folders import FolderSource
from ml.data.tarstream import iter_tar

LONG = "train/cat/" + "x" * 150 + ".png"  # GNU: a long-name member; pax: a path record
LONG_USTAR = "train/" + "p" * 90 + "/" + "x" * 90 + ".png"  # ustar: split into prefix + name


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def add(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "train/cat/0.png"
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make(path: Path, fmt: int, long_name: str = LONG) -> Path:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode, format=fmt) as archive:
        add(archive, "train", kind=tarfile.DIRTYPE)
        add(archive, "train/cat/0.png", png(0))
        add(archive, "train/cat/link.png", kind=tarfile.SYMTYPE)
        add(archive, long_name, png(1))
        add(archive, "train/dog/empty.png", b"")
        add(archive, "train/dog/1.png", png(2))
    return path


def tarfile_view(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r|*") as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz"])
def test_same_members_as_tarfile(tmp_path, fmt, name):
    path = make(tmp_path / name, fmt, LONG_USTAR if fmt == tarfile.USTAR_FORMAT else LONG)
    members = list(iter_tar(path))
    assert members == tarfile_view(path)
    assert len(members) == 4 and members[1][0] in (LONG, LONG_USTAR)


def test_unknown_member_type_falls_back_to_tarfile_without_repeats(tmp_path):
    path = make(tmp_path / "odd.tar", tarfile.GNU_FORMAT)
    raw = bytearray(path.read_bytes())
    block = raw.index(b"train/dog/empty.png")  # give this header a type only tarfile knows
    raw[block + 156:block + 157] = b"V"  # a GNU volume label: not a regular file
    raw[block + 148:block + 156] = b" " * 8
    raw[block + 148:block + 155] = f"{sum(raw[block:block + 512]):06o}\0".encode()
    path.write_bytes(bytes(raw))
    loaded = FolderSource(path).load(("cat", "dog"))
    assert list(loaded.y) == [0, 0, 1]  # 0.png, the long one, dog/1.png: each once, in order
    assert loaded.skipped == []  # the volume label is no file; the fast reader's files are not re-read


def test_truncated_archive_is_a_clear_error(tmp_path):
    path = make(tmp_path / "cut.tar.gz", tarfile.GNU_FORMAT)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="cannot read the archive"):
        FolderSource(path).load(("cat", "dog"))
