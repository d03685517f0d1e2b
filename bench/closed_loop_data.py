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
UNAVAILABLE = {"new_source": "no 64x64 photos of CIFAR-10 classes from another source are available offline "
                             "(the Tiny-ImageNet archives here hold only other classes)"}


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
    """The upload a user with this camera sends: a shifted 32x32 image, PNG (JPEG for jpeg10)."""
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
