"""The answer to one classified image, shared by the service (serving/worker.py) and the registered pyfunc.

Pure helpers: no HTTP server, no metrics, no threads. `answer_body` is the model's part of
a `/classify` answer, so the pyfunc and the service answer alike for the same image.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ml import imaging

if TYPE_CHECKING:
    from ml.bundle import ServingBundle

log = logging.getLogger(__name__)

OOD_MESSAGE = "Sorry, your image label is not in our training set"
_MAGIC = ((b"\x89PNG", "PNG", "png"), (b"\xff\xd8", "JPEG", "jpg"), (b"GIF8", "GIF", "gif"),
          (b"BM", "BMP", "bmp"), (b"II*\x00", "TIFF", "tiff"), (b"MM\x00*", "TIFF", "tiff"))


def error_body(reason: str) -> bytes:
    """The JSON body of every error answer: {"error": reason}."""
    return json.dumps({"error": reason}).encode()


def sniff_format(data: bytes) -> tuple[str, str]:
    """(PIL format name, file extension) from the magic bytes; the spool stores the original bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", "webp"
    for magic, name, ext in _MAGIC:
        if data.startswith(magic):
            return name, ext
    return "UNKNOWN", "bin"


def decode_refusal(exc: Exception) -> tuple[int, str]:
    """The HTTP status and reason for an upload `imaging.prepare` could not turn into an input."""
    if isinstance(exc, imaging.ImageTooLarge):
        return 413, f"image has too many pixels: {exc}"
    if isinstance(exc, imaging.UnsupportedFormat):
        return 415, str(exc)
    if isinstance(exc, imaging.ImageDecodeError):
        return 422, str(exc)
    log.exception("could not decode an upload")
    return 422, f"not a readable image: {type(exc).__name__}"


def answer_body(bundle: ServingBundle, res: dict) -> dict:
    """The model's part of a `/classify` answer (the pyfunc returns exactly this)."""
    return {"label": res["label"], "confidence": res["confidence"],
            "probabilities": dict(zip(bundle.classes, res["probabilities"], strict=True)),
            "is_ood": res["is_ood"], "ood_score": round(res["ood_score"], 6),
            "ood_threshold": round(res["ood_threshold"], 6),
            "message": OOD_MESSAGE if res["is_ood"] else f"This looks like a {res['label']}.",
            "similar": res["similar"]}
