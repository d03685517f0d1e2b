"""The official CIFAR-10 and CIFAR-100 python archives (pickled batches, read without extracting)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from ml.config import CIFAR10_CLASSES
from ml.data.base import Loaded, Source, class_index, empty_images
from ml.data.download import cached_archive

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# Both train and test batches are used: VisionLoop makes its own stratified splits.
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_BATCHES = ("train", "test")


def read_pickles(path: Path, wanted: tuple[str, ...]) -> dict[str, dict]:
    """Unpickle the members whose base names are in wanted (md5 was checked, so the file is trusted)."""
    found: dict[str, dict] = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in wanted:
                found[base] = pickle.load(archive.extractfile(member), encoding="bytes")
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"{path} is not a CIFAR python archive: it lacks {', '.join(missing)}")
    return found


def rows_to_images(rows: bytes | np.ndarray) -> np.ndarray:
    """CIFAR rows are 3072 bytes, channel-major (R plane, G plane, B plane), to (N,32,32,3)."""
    return np.asarray(rows, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


class _CifarSource(Source):
    default_url = ""
    default_md5 = ""

    def __init__(self, cache_dir: Path, url: str | None = None, md5: str | None = None):
        self.cache_dir = Path(cache_dir)
        self.url = url or self.default_url
        self.md5 = md5 or self.default_md5

    @property
    def name(self) -> str:
        return self.kind

    def checksum(self) -> str:
        # The archive is verified against this md5 before use, so it identifies the content.
        return f"md5:{self.md5}"

    def archive(self) -> Path:
        return cached_archive(self.url, self.md5, self.cache_dir)


class Cifar10Source(_CifarSource):
    """All 60,000 CIFAR-10 images (train and test batches)."""

    kind = "cifar10"
    default_url, default_md5 = CIFAR10_URL, CIFAR10_MD5

    def load(self, classes: tuple[str, ...], workers: int = 1) -> Loaded:
        batches = read_pickles(self.archive(), CIFAR10_BATCHES + ("batches.meta",))
        names = [n.decode() for n in batches["batches.meta"][b"label_names"]]
        index = class_index(classes)
        remap = np.array([index.get(n, -1) for n in names], dtype=np.int64)
        out = Loaded()
        xs, ys = [], []
        for batch in CIFAR10_BATCHES:
            labels = remap[np.asarray(batches[batch][b"labels"], dtype=np.int64)]
            keep = labels >= 0
            xs.append(rows_to_images(batches[batch][b"data"])[keep])
            ys.append(labels[keep])
        out.x, out.y = np.concatenate(xs), np.concatenate(ys)
        return out


class Cifar100Source(_CifarSource):
    """CIFAR-100 images whose coarse label (superclass) is one of the configured classes."""

    kind = "cifar100"
    default_url, default_md5 = CIFAR100_URL, CIFAR100_MD5

    def load(self, classes: tuple[str, ...], workers: int = 1) -> Loaded:
        batches = read_pickles(self.archive(), CIFAR100_BATCHES + ("meta",))
        coarse = [n.decode() for n in batches["meta"][b"coarse_label_names"]]
        index = class_index(classes)
        remap = np.array([index.get(n, -1) for n in coarse], dtype=np.int64)
        out = Loaded()
        xs, ys = [empty_images()], [np.zeros(0, dtype=np.int64)]
        for batch in CIFAR100_BATCHES:
            labels = remap[np.asarray(batches[batch][b"coarse_labels"], dtype=np.int64)]
            keep = labels >= 0
            xs.append(rows_to_images(batches[batch][b"data"])[keep])
            ys.append(labels[keep])
        out.x, out.y = np.concatenate(xs), np.concatenate(ys)
        wanted = [c for c in classes if c not in coarse and c not in CIFAR10_CLASSES]
        if wanted:
            out.notes.append(f"cifar100 has no superclass {', '.join(wanted)}; other sources must provide it")
        return out


