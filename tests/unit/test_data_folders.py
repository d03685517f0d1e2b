"""Folder and archive sources: any format, size and mode in, 32x32 RGB out; bad files reported, not fatal."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data import decode
from ml.data.base import DataError
from ml.data.folders import FolderSource

CLASSES = ("cat", "dog")
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _save(path: Path, img: Image.Image, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def exif_rotated_jpeg() -> bytes:
    """32x16 stored sideways (left red, right blue) with EXIF orientation 6: upright it is red on top."""
    img = Image.new("RGB", (32, 16), BLUE)
    img.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def make_tree(root: Path) -> Path:
    """`train/<class>/...` with mixed formats, sizes and modes, two bad files and an unknown class."""
    base = root / "train"
    rng = np.random.default_rng(0)
    _save(base / "cat/a.png", Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "PNG")
    _save(base / "cat/b.jpg", Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)), "JPEG")
    _save(base / "cat/c.gif", Image.new("RGB", (20, 20), (10, 200, 30)).convert("P"), "GIF")
    _save(base / "dog/d.png", Image.new("L", (40, 40), 90), "PNG")
    _save(base / "dog/e.png", Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG")
    _save(base / "dog/f.bmp", Image.new("RGB", (100, 50), (128, 128, 128)), "BMP")
    (base / "dog/g.jpg").write_bytes(exif_rotated_jpeg())
    (base / "dog/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (base / "dog/empty.png").write_bytes(b"")
    _save(base / "unicorn/u.png", Image.new("RGB", (32, 32), RED), "PNG")
    return root


def pack(tree: Path, dest: Path) -> Path:
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w") as archive:
            for file in sorted(tree.rglob("*")):
                archive.write(file, file.relative_to(tree).as_posix())
    else:
        with tarfile.open(dest, "w:gz" if dest.name.endswith(".gz") else "w") as archive:
            for file in sorted(p for p in tree.rglob("*") if p.is_file()):
                archive.add(file, file.relative_to(tree).as_posix())
    return dest


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "tree")


def by_name(tree: Path) -> dict[str, np.ndarray]:
    """Each good file's 32x32 output, keyed by file name (directory order is sorted)."""
    loaded = FolderSource(tree).load(CLASSES)
    names = ["a.png", "b.jpg", "c.gif", "d.png", "e.png", "f.bmp", "g.jpg"]
    assert len(loaded) == len(names)
    return dict(zip(names, loaded.x, strict=False))


def test_every_format_size_and_mode_becomes_32x32_rgb(tree):
    loaded = FolderSource(tree).load(CLASSES)
    assert loaded.x.shape == (7, 32, 32, 3) and loaded.x.dtype == np.uint8
    assert list(loaded.y) == [0, 0, 0, 1, 1, 1, 1]


def test_bad_files_and_unknown_classes_are_reported_not_fatal(tree):
    loaded = FolderSource(tree).load(CLASSES)
    skipped = {Path(path).name: why for path, why in loaded.skipped}
    assert set(skipped) == {"broken.jpg", "empty.png"}
    assert "empty" in skipped["empty.png"]
    assert dict(loaded.unknown_classes) == {"unicorn": 1}


def test_pixels_follow_the_documented_conversions(tree):
    images = by_name(tree)
    source = np.asarray(Image.open(tree / "train/cat/a.png"))
    np.testing.assert_array_equal(images["a.png"], source)  # 32x32 RGB passes through untouched
    assert (images["d.png"] == 90).all()  # greyscale -> equal RGB channels
    assert (images["e.png"] == 255).all()  # fully transparent -> white background
    assert np.abs(images["f.bmp"].astype(int) - 128).max() <= 1  # 100x50 -> centre crop + Lanczos


def test_exif_orientation_is_applied(tree):
    image = by_name(tree)["g.jpg"].astype(int)
    top, bottom = image[:12].mean(axis=(0, 1)), image[-12:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, "upright image is red on top"
    assert bottom[2] > 200 and bottom[0] < 60, "and blue at the bottom"


def test_non_square_images_are_centre_cropped_not_squashed(tmp_path):
    img = Image.new("RGB", (64, 32), (0, 255, 0))
    img.paste((128, 128, 128), (16, 0, 48, 32))  # only the centre square is grey
    _save(tmp_path / "cat/wide.png", img, "PNG")
    loaded = FolderSource(tmp_path).load(CLASSES)
    assert np.abs(loaded.x[0].astype(int) - 128).max() <= 2, "the green margins were cropped away"


@pytest.mark.parametrize("name", ["photos.tar", "photos.tar.gz", "photos.zip"])
def test_archives_give_the_same_images_as_the_directory(tree, tmp_path, name):
    expected = FolderSource(tree).load(CLASSES)
    got = FolderSource(pack(tree, tmp_path / name)).load(CLASSES)
    np.testing.assert_array_equal(got.x, expected.x)
    np.testing.assert_array_equal(got.y, expected.y)
    assert len(got.skipped) == 2 and dict(got.unknown_classes) == {"unicorn": 1}


def test_archive_without_wrapping_directory(tree, tmp_path):
    archive = pack(tree / "train", tmp_path / "flat.zip")
    assert len(FolderSource(archive).load(CLASSES)) == 7


def test_parallel_decode_keeps_order_and_pixels(tree, monkeypatch):
    monkeypatch.setattr(decode, "CHUNK", 2)  # several chunks in flight on two processes
    single = FolderSource(tree).load(CLASSES, workers=1)
    parallel = FolderSource(tree).load(CLASSES, workers=2)
    np.testing.assert_array_equal(parallel.x, single.x)
    np.testing.assert_array_equal(parallel.y, single.y)
    assert sorted(parallel.skipped) == sorted(single.skipped)


def test_checksum_changes_when_a_file_changes(tree):
    before = FolderSource(tree).checksum()
    assert FolderSource(tree).checksum() == before
    shutil.copy(tree / "train/cat/a.png", tree / "train/cat/a2.png")
    assert FolderSource(tree).checksum() != before


def test_missing_or_unsupported_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderSource(tmp_path / "nope").load(CLASSES)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a directory, .tar"):
        FolderSource(tmp_path / "notes.txt").load(CLASSES)
