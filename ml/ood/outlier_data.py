"""Real outlier images for OOD work, split by class into fit, calibrate and evaluate groups.

`VISIONLOOP_OUTLIER_SOURCES` is a comma list of
- `folder:<directory or archive>`: images in `<class>/` folders, or flat ImageNet-style
  `<wnid>_<n>.JPEG` files (the class is the wnid);
- `cifar100-unchosen`: the CIFAR-100 test images of the superclasses not chosen as classes, when the
  `cifar100` data source is configured and its archive is already downloaded;
- `auto` (the default): `cifar100-unchosen` when `cifar100` is a data source, else nothing.
Images are decoded exactly like training images (ml.data.decode -> ml.imaging: EXIF, RGB, centre
crop, Lanczos to 32x32). Each class goes wholly to one group, fixed by a hash of its name, so a
detector is always evaluated on kinds of outliers it never saw while fitted or calibrated.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.config import Settings

log = logging.getLogger(__name__)
GROUPS = ("fit", "calibrate", "evaluate")
FRACTIONS = {"fit": 0.4, "calibrate": 0.2}  # the rest is evaluated
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# CIFAR-100 superclasses whose images are CIFAR-10 classes under another name (pickup truck, bus):
# calling them OOD would punish the model for being right.
CIFAR100_OVERLAPS = ("vehicles_1",)


@dataclass
class OutlierImages:
    """uint8 (N, 32, 32, 3) images of one source with each image's class name."""

    name: str
    images: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    def only(self, class_names: set[str] | list[str]) -> OutlierImages:
        keep = np.isin(self.classes, list(class_names))
        return OutlierImages(self.name, self.images[keep], self.classes[keep])


def configured_sources(settings: Settings) -> tuple[str, ...]:
    """The outlier sources in effect; `auto` is cifar100-unchosen when cifar100 is a data source (the
    superclasses not chosen as classes are the nearest outliers there are), and the older
    VISIONLOOP_OOD_EVAL_ARCHIVE counts as one folder."""
    sources = tuple(getattr(settings, "outlier_sources", ()) or ())
    auto = ("cifar100-unchosen",) if "cifar100" in settings.data_sources else ()
    sources = tuple(dict.fromkeys(s for spec in sources for s in (auto if spec == "auto" else (spec,))))
    if settings.ood_eval_archive:
        sources += (f"folder:{settings.ood_eval_archive}",)
    for spec in sources:
        if not (spec.startswith("folder:") and len(spec) > 7) and spec != "cifar100-unchosen":
            raise ValueError(f"VISIONLOOP_OUTLIER_SOURCES: {spec!r} is none of folder:<path>, cifar100-unchosen, "
                             "auto (or empty for none)")
    return sources


def named_sources(settings: Settings) -> tuple[str, ...]:
    """The sources the user named (configured_sources without what the `auto` default added)."""
    return configured_sources(settings.with_(outlier_sources=tuple(
        spec for spec in (getattr(settings, "outlier_sources", ()) or ()) if spec != "auto")))


def load_sources(settings: Settings, workers: int = 1) -> list[OutlierImages]:
    """Every configured source that yields images; a missing path is an error, not a silent skip."""
    out = []
    for spec in configured_sources(settings):
        if spec == "cifar100-unchosen":
            found = cifar100_unchosen(settings)
            if found is None:
                log.warning("OOD: cifar100-unchosen needs the cifar100 data source and its downloaded "
                            "archive in %s; skipping it", settings.downloads_dir)
                continue
            out.append(found)
        else:
            out.append(load_folder(spec[len("folder:"):], workers))
    return out


def class_groups(class_names) -> dict[str, str]:
    """class name -> fit / calibrate / evaluate, by the rank of sha256(name): deterministic, and
    with three or more classes no group is empty (one class goes to evaluate first)."""
    names = sorted(set(map(str, class_names)), key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    n_fit = int(round(FRACTIONS["fit"] * len(names)))
    n_cal = int(round(FRACTIONS["calibrate"] * len(names)))
    n_fit, n_cal = min(n_fit, max(len(names) - 1, 0)), min(n_cal, max(len(names) - 1 - n_fit, 0))
    groups = {}
    for rank, name in enumerate(names):
        groups[name] = "fit" if rank < n_fit else "calibrate" if rank < n_fit + n_cal else "evaluate"
    return groups


def split_by_class(sources: list[OutlierImages]) -> dict[str, list[OutlierImages]]:
    """{group: [the part of each source in it]}; groups over the union of all sources' classes."""
    groups = class_groups(np.concatenate([s.classes for s in sources]) if sources else [])
    out: dict[str, list[OutlierImages]] = {g: [] for g in GROUPS}
    for source in sources:
        for group in GROUPS:
            part = source.only({c for c, g in groups.items() if g == group})
            if len(part):
                out[group].append(part)
    return out


def group_names(paths: list[str]) -> list[str]:
    """Each image's class: its folder when images sit in several folders, else the file-name prefix
    (`<wnid>_<n>.JPEG` in one flat folder groups by wnid)."""
    parents = {Path(p).parent.as_posix() for p in paths}
    if len(parents) > 1:
        return [Path(p).parent.name for p in paths]
    return [Path(p).stem.split("_")[0] for p in paths]


def load_folder(source: str | Path, workers: int = 1) -> OutlierImages:
    """Decode a directory, tar(.gz) or zip of images; undecodable files are logged and skipped."""
    from ml.data.decode import decode_items

    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"outlier source {source} does not exist")
    paths = [p for p, _ in _members(source, read=False)]
    classes = group_names(paths)
    index = {name: i for i, name in enumerate(sorted(set(classes)))}
    labels = {p: index[c] for p, c in zip(paths, classes, strict=True)}
    loaded = decode_items(((p, labels[p], data) for p, data in _members(source)), workers, len(paths),
                          desc=f"outliers {source.name}")
    for path, reason in loaded.skipped[:5]:
        log.warning("OOD: skipping outlier image %s (%s)", path, reason)
    if not len(loaded):
        raise ValueError(f"no images in {source}")
    names = np.array(sorted(index))
    # The name ends up in MLflow metric names (ood_auroc_<detector>_heldout_<name>): keep it plain.
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", source.name.split(".")[0]) or "outliers"
    return OutlierImages(name, loaded.x, names[loaded.y])


def _members(source: Path, read: bool = True) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes or b'') of every image file in a directory, tar(.gz) or zip."""
    def wanted(name: str) -> bool:
        return not any(p.startswith(".") or p == "__MACOSX" for p in name.split("/")) \
            and name.lower().endswith(IMAGE_SUFFIXES)

    if source.is_dir():
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and wanted(rel):
                yield rel, path.read_bytes() if read else b""
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in sorted(archive.namelist()):
                if wanted(name):
                    yield name, archive.read(name) if read else b""
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            for member in archive:
                if member.isfile() and wanted(member.name):
                    yield member.name, archive.extractfile(member).read() if read else b""
    else:
        raise ValueError(f"{source} is neither a folder nor a tar/zip archive of images")


def cifar100_unchosen(settings: Settings) -> OutlierImages | None:
    """CIFAR-100 test images of the superclasses not among the classes, if the archive is cached."""
    path = settings.downloads_dir / "cifar-100-python.tar.gz"
    if "cifar100" not in settings.data_sources or not path.is_file():
        return None
    from ml.data.cifar import read_pickles, rows_to_images

    batches = read_pickles(path, ("test", "meta"))
    coarse = np.array([n.decode() for n in batches["meta"][b"coarse_label_names"]])
    classes = coarse[np.asarray(batches["test"][b"coarse_labels"])]
    keep = ~np.isin(classes, list(settings.classes) + list(CIFAR100_OVERLAPS))
    return OutlierImages("cifar100_unchosen", rows_to_images(batches["test"][b"data"])[keep], classes[keep])
