"""Outlier images from an archive or folder (flat or in sub-folders), preprocessed like any upload."""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ml.imaging import ImageDecodeError, decode_image, to_model_input

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _members(source: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every image file in a directory, tar(.gz) or zip."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file():
                yield path.relative_to(source).as_posix(), path.read_bytes()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in sorted(archive.namelist()):
                if not name.endswith("/"):
                    yield name, archive.read(name)
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            for member in archive:
                if member.isfile():
                    yield member.name, archive.extractfile(member).read()
    else:
        raise ValueError(f"{source} is neither a folder nor a tar/zip archive of images")


def group_names(paths: list[str]) -> list[str]:
    """Each image's group: its folder when images sit in several folders, else the file-name prefix.

    ImageNet-style names `<wnid>_<n>.JPEG` in one flat folder group by wnid, so a flat
    archive such as ood_dev still splits by class.
    """
    parents = {Path(p).parent.as_posix() for p in paths}
    if len(parents) > 1:
        return [Path(p).parent.name for p in paths]
    return [Path(p).stem.split("_")[0] for p in paths]


def load_outlier_images(source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and their (N,) group names; undecodable files are skipped."""
    images, names = [], []
    for name, data in _members(Path(source)):
        if Path(name).name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        try:
            images.append(to_model_input(decode_image(data)))
        except ImageDecodeError:
            log.warning("skipping undecodable outlier image %s", name)
            continue
        names.append(name)
    if not images:
        raise ValueError(f"no images in {source}")
    return np.stack(images), np.array(group_names(names))


def split_by_group(groups: np.ndarray, holdout_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (for_training, for_evaluation): whole groups go one way, so the 'other'
    class is evaluated on kinds of images it never saw."""
    names = np.unique(groups)
    rng = np.random.default_rng(seed)
    if len(names) >= 2:
        n_train = min(len(names) - 1, max(1, round(holdout_fraction * len(names))))
        chosen = rng.choice(names, n_train, replace=False)
        train = np.isin(groups, chosen)
    else:
        train = rng.random(len(groups)) < holdout_fraction
    return train, ~train
