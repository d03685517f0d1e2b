"""Images for bench/closed_loop.py: disjoint pools from the shared archives, and the camera shifts.

Every CIFAR-10 photo goes to exactly one pool, chosen by a hash of its name:
`train` (the folder source the snapshots are built from), `stream` (shifted,
sent to the service and corrected by the simulated user) or `heldout`
(shifted, only ever measured: never corrected, never trained on).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SHIFTS = ("dark", "blur", "jpeg10", "colour_cast", "new_source")
NEW_SOURCE_MISSING = ("needs --new-source DIR: photos of the classes from another source, as <class>/<file> "
                      "(none are available offline here: the Tiny-ImageNet archives hold only other classes)")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _bucket(name: str) -> float:
    """A stable number in [0, 1) per file name (the pool a photo belongs to)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 16**8


def split_archives(cifar: Path, extra: Path, out: Path, train_per_class: int, stream_share: float = 0.1,
                   heldout_share: float = 0.065) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """Write the train pool as `<out>/<class>/<file>`; return the stream and heldout pools as (bytes, class)."""
    pools: dict[str, list] = {"stream": [], "heldout": []}
    kept: dict[str, int] = defaultdict(int)
    for archive, is_cifar in ((cifar, True), (extra, False)):
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 3:
                    continue
                label, bucket = parts[-2], _bucket(member.name)
                if is_cifar and bucket < stream_share:
                    pools["stream"].append((_bucket(f"order:{member.name}"), tar.extractfile(member).read(), label))
                elif is_cifar and bucket < stream_share + heldout_share:
                    pools["heldout"].append((_bucket(f"order:{member.name}"), tar.extractfile(member).read(), label))
                elif kept[label] < train_per_class:
                    kept[label] += 1
                    target = out / label / parts[-1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    # The archive is ordered by class: a hash order makes every prefix of a pool a mix of all classes.
    stream, heldout = (sorted(pools[name], key=lambda item: item[0]) for name in ("stream", "heldout"))
    return [item[1:] for item in stream], [item[1:] for item in heldout]


def source_pools(folder: Path, classes: list[str], heldout_share: float = 0.5
                 ) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """A new photo source, `<folder>/<class>/<file>`: (stream, heldout) pools of (original bytes, class).

    The photos are sent as they are (any size: the service resizes them), so this row also
    exercises the upload path for images that are not 32x32. Each file's pool is chosen by a
    hash of its path, so the held-out half stays the same whatever else the folder gains.
    """
    if not folder.is_dir():
        raise ValueError(f"--new-source {folder}: not a folder")
    pools: dict[str, list] = {"stream": [], "heldout": []}
    unknown = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise ValueError(f"--new-source {folder}: folders {', '.join(unknown)} are not classes of the model "
                         f"({', '.join(classes)})")
    for path in sorted(folder.glob("*/*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        name = path.relative_to(folder).as_posix()
        pool = "heldout" if _bucket(name) < heldout_share else "stream"
        pools[pool].append((_bucket(f"order:{name}"), path.read_bytes(), path.parent.name))
    stream, heldout = (sorted(pools[name], key=lambda item: item[0]) for name in ("stream", "heldout"))
    if not stream or not heldout:
        raise ValueError(f"--new-source {folder}: no photos found as <class>/<file> ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [item[1:] for item in stream], [item[1:] for item in heldout]


def decode32(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.LANCZOS))


def encode(pixels: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def dark_camera(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cheap night camera: contrast halved, darker, Gaussian sensor noise, slight blur."""
    x = pixels.astype(np.float32)
    x = (x - x.mean()) * 0.5 + x.mean() * 0.6
    x = x + rng.normal(0, 8, x.shape)
    blurred = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(blurred)


def shifted(data: bytes, shift: str, seed: int) -> bytes:
    """The upload a user with this camera sends: a shifted 32x32 image, PNG (JPEG for jpeg10).

    new_source: the photo as the other source made it (its pools come from source_pools).
    """
    if shift == "new_source":
        return data
    pixels, rng = decode32(data), np.random.default_rng(seed)
    if shift == "dark":
        return encode(dark_camera(pixels, rng))
    if shift == "blur":
        return encode(np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.2))))
    if shift == "jpeg10":
        return encode(pixels, "JPEG", quality=10)
    if shift == "colour_cast":
        cast = pixels.astype(np.float32) * np.array([1.25, 1.0, 0.7]) + np.array([10, 0, 0])
        return encode(np.clip(cast, 0, 255).astype(np.uint8))
    raise ValueError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
