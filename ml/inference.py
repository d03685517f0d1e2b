"""Predictor: every forward pass goes through one `tf.function` returning probs, logits and embeddings.

For archs in `ml.model.TTA_ARCHS` (the default `airnet`) the function averages
the logits and embeddings of each image and its mirror image (flip test-time
augmentation), so evaluation, OOD fitting and serving all get it for free; the
probabilities are the softmax of the averaged logits. `model.predict` is never
used: it adds ~30 ms per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from ml.model import TTA_ARCHS


@dataclass(frozen=True)
class Prediction:
    """Outputs for N images: probabilities and logits (N, C), embeddings (N, D), all float32."""

    probs: np.ndarray
    logits: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)


class Predictor:
    """Wraps a built or loaded model (either arch) in one uint8 -> (probs, logits, embeddings) function."""

    def __init__(self, model: keras.Model, tta: bool | None = None):
        self.model = model
        self.tta = model.name in TTA_ARCHS if tta is None else tta
        heads = keras.Model(model.input, [model.get_layer("logits").output,
                                           model.get_layer("embedding").output])
        self.n_classes = int(heads.outputs[0].shape[-1])
        self.embedding_dim = int(heads.outputs[1].shape[-1])
        tta = self.tta

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8)], reduce_retracing=True)
        def forward(images):
            x = tf.cast(images, tf.float32)
            if not tta:
                logits, emb = heads(x, training=False)
            else:
                # One batch of 2N keeps the matmuls large; mirror = reverse the width axis.
                both = tf.concat([x, tf.reverse(x, axis=[2])], axis=0)
                logits2, emb2 = heads(both, training=False)
                logits = tf.reduce_mean(tf.stack(tf.split(logits2, 2)), axis=0)
                emb = tf.reduce_mean(tf.stack(tf.split(emb2, 2)), axis=0)
            emb = tf.reshape(emb, [tf.shape(emb)[0], -1])
            return tf.nn.softmax(logits), logits, emb

        self._forward = forward

    def predict(self, images: np.ndarray) -> Prediction:
        """One batch of uint8 images (N, 32, 32, 3) -> Prediction."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        probs, logits, emb = self._forward(tf.constant(images))
        return Prediction(probs.numpy(), logits.numpy(), emb.numpy())

    def predict_batched(self, images: np.ndarray, batch_size: int = 512, progress: bool = False) -> Prediction:
        """Large arrays in fixed-size batches (bounded memory), with an optional tqdm bar."""
        return predict_in_batches(self, images, batch_size, progress)


def predict_in_batches(predictor, images: np.ndarray, batch_size: int = 512, progress: bool = False) -> Prediction:
    """`predictor.predict` over fixed-size batches, concatenated (any runtime with Predictor's interface)."""
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, unit="batch", desc="predict")
    parts = [predictor.predict(images[i:i + batch_size]) for i in starts]
    if not parts:
        return empty_prediction(predictor.n_classes, predictor.embedding_dim)
    return Prediction(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("probs", "logits", "embeddings")))


def empty_prediction(n_classes: int, embedding_dim: int) -> Prediction:
    """A Prediction for zero images."""
    return Prediction(np.zeros((0, n_classes), np.float32), np.zeros((0, n_classes), np.float32),
                      np.zeros((0, embedding_dim), np.float32))
