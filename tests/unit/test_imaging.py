"""Preprocessing gives the same 32x32 pixels for any input format, size or mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ml.imaging import (
    ImageDecodeError,
    ImageTooLarge,
    class_mean_histograms,
    decode_image,
    histogram_distance,
    intensity_histograms,
    pixel_entropy,
    to_model_input,
)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "LA", "1"])
def test_every_mode_becomes_rgb_32x32(mode):
    img = Image.new("RGB", (70, 50), (200, 30, 30)).convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = to_model_input(decode_image(encode(img, fmt)))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    out = to_model_input(decode_image(encode(img, "PNG")))
    assert out.min() == 255


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_image(encode(img, "JPEG", exif=exif))
    assert decoded.size == (20, 40)
    top = np.asarray(decoded)[:10].mean()
    assert top > 200  # the white half is now on top


def test_non_square_is_centre_cropped_not_squashed():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red centre square, blue sides
    out = to_model_input(img)
    assert out[..., 0].mean() > 250 and out[..., 2].mean() < 5


def test_32x32_input_is_untouched():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_input(Image.fromarray(pixels)), pixels)


@pytest.mark.parametrize("data", [b"", b"not an image at all", encode(Image.new("RGB", (64, 64)), "PNG")[:60]])
def test_bad_bytes_raise_a_decode_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge):
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"))


def test_histograms_and_entropy():
    flat = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert intensity_histograms(flat).sum() == pytest.approx(1.0)
    assert pixel_entropy(flat)[0] == pytest.approx(0.0)
    assert pixel_entropy(noise)[0] > 5


def test_histogram_distance_is_zero_to_own_mean_and_grows_with_difference():
    dark = np.full((4, 32, 32, 3), 20, dtype=np.uint8)
    bright = np.full((4, 32, 32, 3), 230, dtype=np.uint8)
    means = class_mean_histograms(np.concatenate([dark, bright]), np.array([0] * 4 + [1] * 4), 2)
    same = histogram_distance(intensity_histograms(dark), means, np.zeros(4, dtype=int))
    other = histogram_distance(intensity_histograms(dark), means, np.ones(4, dtype=int))
    assert np.allclose(same, 0.0) and np.all(other > 0.9)


def test_large_jpeg_decodes_at_reduced_scale_but_keeps_content():
    img = Image.new("RGB", (1200, 900), (10, 200, 30))
    decoded = decode_image(encode(img, "JPEG", quality=95))
    assert min(decoded.size) >= 224 and decoded.size[0] < 1200
    assert decoded.size[0] / decoded.size[1] == pytest.approx(1200 / 900, rel=0.01)
    out = to_model_input(decoded)
    assert abs(int(out[..., 1].mean()) - 200) < 6


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_large_jpeg_of_any_mode_decodes(mode):
    img = Image.new("RGB", (800, 800), (120, 60, 200)).convert(mode)
    assert to_model_input(decode_image(encode(img, "JPEG"))).shape == (32, 32, 3)


@pytest.mark.parametrize("fmt,name", [("TIFF", "TIFF"), ("PPM", "PPM")])
def test_formats_outside_the_allow_list_are_refused_by_name(fmt, name):
    from ml.imaging import SERVING_FORMATS, UnsupportedFormat, prepare

    data = encode(Image.new("RGB", (20, 20), (1, 2, 3)), fmt)
    with pytest.raises(UnsupportedFormat, match=f"{name} images are not accepted.*PNG, JPEG"):
        prepare(data, SERVING_FORMATS)
    assert decode_image(data).size == (20, 20)  # data import (formats=None) still reads it


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_every_allowed_format_prepares(fmt):
    from ml.imaging import prepare

    prepared = prepare(encode(Image.new("RGB", (300, 250), (200, 30, 30)), fmt))
    assert prepared.pixels.shape == (32, 32, 3) and (prepared.width, prepared.height) == (300, 250)
    assert prepared.format == fmt and min(prepared.preview.size) == 224


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # 12000 x 12000 declared, a few bytes of data: decoding it would need 0.4 GB and fail late
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match="12000x12000 pixels; the limit is 40000000"):
        decode_image(png, max_pixels=40_000_000)


def test_pixel_limit_counts_a_large_jpeg_at_its_reduced_decode_size():
    data = encode(Image.new("RGB", (2400, 1800), (10, 200, 30)), "JPEG")
    assert decode_image(data, max_pixels=1_000_000).size[0] < 2400  # 1/8 scale fits under 1 Mpx
    with pytest.raises(ImageTooLarge):
        decode_image(encode(Image.new("RGB", (2400, 1800)), "PNG"), max_pixels=1_000_000)
