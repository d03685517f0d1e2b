"""ImageNetLabeler: Keras ResNet50 on the user's original image, its top classes mapped onto ours.

Weights come from Keras' cache (KERAS_HOME) or its download; offline and
uncached, `try_load` returns None and logs why, and the rest of VisionLoop
carries on without the second opinion.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml.imagenet.mapping import CLASSES_PATH, MAPPING_PATH, load_imagenet_classes, load_mapping
from ml.imaging import to_model_input

log = logging.getLogger(__name__)
INPUT_SIZE = 224
RETRY_AFTER_S = 3600.0  # after a failed load (offline), don't pay the download timeout on every model swap

# One ResNet50 per process and weights: it does not change when the champion does,
# and building it costs seconds and ~100 MB.
_networks: dict[str | None, Any] = {}
_failed_at: dict[str | None, float] = {}
_lock = threading.Lock()


def _resnet50(weights: str | None) -> Any:
    with _lock:
        if weights in _networks:
            return _networks[weights]
        failed = _failed_at.get(weights)
        if failed is not None and time.monotonic() - failed < RETRY_AFTER_S:
            raise RuntimeError(f"loading failed {time.monotonic() - failed:.0f} s ago; retrying after "
                               f"{RETRY_AFTER_S:.0f} s")
        import keras

        try:
            _networks[weights] = keras.applications.ResNet50(weights=weights)
        except Exception:
            _failed_at[weights] = time.monotonic()
            raise
        return _networks[weights]


class ImageNetLabeler:
    """Suggests one of our classes (or none) from ResNet50's ImageNet-1k prediction."""

    def __init__(self, weights: str | None = "imagenet", mapping_path: str | Path = MAPPING_PATH,
                 classes_path: str | Path = CLASSES_PATH, top_k: int = 5, min_mass: float = 0.3):
        self.weights, self.mapping_path, self.classes_path = weights, mapping_path, classes_path
        # A class is suggested when the ImageNet classes mapped to it hold at least min_mass
        # of the top-k probability; below that ResNet50 itself is unsure or sees something else.
        self.top_k, self.min_mass = top_k, min_mass

    def load(self) -> ImageNetLabeler:
        """Build ResNet50 (downloads weights into KERAS_HOME on first use) and read the mapping."""
        self.mapping_ = load_mapping(self.mapping_path, self.classes_path)
        self.classes_ = load_imagenet_classes(self.classes_path)
        self.model_ = _resnet50(self.weights)
        return self

    @classmethod
    def try_load(cls, mapping_path: str | Path = MAPPING_PATH, **params: Any) -> ImageNetLabeler | None:
        """A loaded labeler, or None with one log line saying why it is unavailable."""
        try:
            return cls(mapping_path=mapping_path, **params).load()
        except Exception as exc:  # offline, no cache, corrupt file: all mean "no second opinion"
            log.warning("ImageNet labeler unavailable: ResNet50 weights could not be loaded from the Keras "
                        "cache (KERAS_HOME) or downloaded (%s: %s)", type(exc).__name__, exc)
            return None

    def predict(self, image: Image.Image) -> np.ndarray:
        """ImageNet-1k probabilities (1000,) for one PIL image, centre-cropped and resized to 224."""
        from keras.applications.resnet50 import preprocess_input

        pixels = to_model_input(image, INPUT_SIZE).astype(np.float32)
        batch = preprocess_input(pixels[None])
        return np.asarray(self.model_(batch, training=False))[0]

    def suggest_from_probs(self, probs: np.ndarray) -> dict:
        """The suggestion for given ImageNet probabilities (split out so tests need no network)."""
        top = np.argsort(-probs)[: self.top_k]
        mass: dict[str, float] = {}
        for index in top:
            ours = self.mapping_.get(int(index))
            if ours is not None:
                mass[ours] = mass.get(ours, 0.0) + float(probs[index])
        label = max(mass, key=mass.get) if mass else None
        if label is not None and mass[label] < self.min_mass:
            label = None
        wnid, names = self.classes_[int(top[0])]
        return {"label": label, "label_confidence": mass.get(label, 0.0) if label else 0.0,
                "imagenet_label": names.split(",")[0], "wnid": wnid, "confidence": float(probs[top[0]])}

    def suggest(self, image: Image.Image) -> dict | None:
        """{"label": our class or None, "imagenet_label", "wnid", "confidence"}; None if the image fails."""
        try:
            return self.suggest_from_probs(self.predict(image))
        except Exception:  # a second opinion must never break a prediction
            log.exception("ImageNet labeler failed on an image")
            return None
