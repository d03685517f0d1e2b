"""Image preprocessing and per-image statistics shared by data, serving and monitoring.

Pure PIL + numpy: no TensorFlow here, so every caller gets the same pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

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


# Formats the service accepts (`Image.open(formats=...)`): every other Pillow plugin (TIFF,
# PSD, PPM, TGA, ICO, ...) stays unreachable from an upload. Data import reads any format.
SERVING_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
# Magic bytes of common formats outside the allow-list, so the refusal can name them.
_OTHER_MAGIC = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"),
                (b"P1", "PBM"), (b"P2", "PGM"), (b"P3", "PPM"), (b"P4", "PBM"), (b"P5", "PGM"), (b"P6", "PPM"),
                (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "SVG/XML"))


class ImageDecodeError(ValueError):
    """The bytes are not an image PIL can read (or are truncated)."""


class UnsupportedFormat(ImageDecodeError):
    """The bytes are an image format outside the allow-list."""


class ImageTooLarge(ValueError):
    """The image declares more pixels than the limit (checked from its header, before decoding)."""


@dataclass
class Prepared:
    """One upload reduced to what serving keeps: the 32x32 input and a small preview, never the full image."""

    pixels: np.ndarray  # (32, 32, 3) uint8 model input
    preview: Image.Image | None  # short side <= DECODE_MIN_SIDE, for the ImageNet labeler
    width: int  # as declared by the file
    height: int
    format: str  # PIL format name


def decode_image(data: bytes, formats: tuple[str, ...] | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode bytes to an RGB image with EXIF orientation applied.

    `formats` limits the Pillow plugins tried (None: all); `max_pixels` refuses an image whose
    decoded size (the header's, or for JPEG the DCT-scaled one) exceeds it before any decoding.
    """
    return _decode(data, formats, max_pixels)[0]


def prepare(data: bytes, formats: tuple[str, ...] | None = SERVING_FORMATS, max_pixels: int | None = None,
            preview: bool = True) -> Prepared:
    """Decode, reduce to the 32x32 model input (and an optional preview), drop the full-size image."""
    img, (width, height), fmt = _decode(data, formats, max_pixels)
    pixels = to_model_input(img)
    small = None
    if preview:
        small = img.copy() if min(img.size) <= DECODE_MIN_SIDE else _shrink(img, DECODE_MIN_SIDE)
    img.close()
    return Prepared(pixels=pixels, preview=small, width=width, height=height, format=fmt)


def _shrink(img: Image.Image, min_side: int) -> Image.Image:
    scale = min_side / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _decode(data: bytes, formats: tuple[str, ...] | None,
            max_pixels: int | None) -> tuple[Image.Image, tuple[int, int], str]:
    """(RGB image, declared size, format name); raises ImageDecodeError or ImageTooLarge."""
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            declared, fmt = img.size, str(img.format)
            if img.format == "JPEG":
                img.draft(None, (DECODE_MIN_SIDE, DECODE_MIN_SIDE))  # DCT scaling: decode fewer pixels
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{declared[0]}x{declared[1]} pixels; the limit is {max_pixels} pixels")
            img.load()  # forces full decode: catches truncated files here, not later
            ImageOps.exif_transpose(img, in_place=True)  # no copy: ~18% faster decoding
            return to_rgb(img), declared, fmt
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except UnidentifiedImageError:
        raise _unidentified(data, formats) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, (ImageTooLarge, ImageDecodeError)):
            raise
        raise ImageDecodeError(f"not a readable image: {exc}") from None


def _unidentified(data: bytes, formats: tuple[str, ...] | None) -> ImageDecodeError:
    """The error for bytes no allowed plugin recognised, naming the format when the magic tells it."""
    accepted = f"; accepted formats: {', '.join(formats)}" if formats else ""
    for magic, name in _OTHER_MAGIC:
        if formats and data.startswith(magic) and name not in formats:
            return UnsupportedFormat(f"{name} images are not accepted{accepted}")
    return ImageDecodeError(f"not a readable image{accepted}")


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
