"""Outlier exposure (Hendrycks et al. 2019) for `ml.train.fit`.

Outlier images join every training batch with a uniform target, so the model's own categorical
cross-entropy adds `weight * CE(uniform, softmax)` on them: the model learns to be unsure on things
that are none of its classes, which is what the MSP and energy detectors read. Why this form and
not an energy margin (Liu et al. 2020): it is the existing loss on a soft target, so Keras computes
it with no custom loss or training step, it has one knob (the weight) instead of two margins, and
label smoothing leaves a uniform target unchanged ((1 - s) / C + s / C = 1 / C).

Only the outlier classes of the snapshot's OOD *fit* group are trained on (plus users' "none of
these", which always sit in that group): the calibrate and evaluate classes stay unseen, so the
held-out AUROC the gate compares is still measured on kinds of outliers the model never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ml.hparams import HParams
from ml.ood.outlier_data import OutlierImages, split_by_class

log = logging.getLogger(__name__)


def fit_group_images(sources: dict | list[OutlierImages] | None) -> np.ndarray | None:
    """uint8 (N,32,32,3) outliers training may see: fit-group classes of the configured sources plus
    users' "none of these"; None when there are none.

    sources: what `ml.ood.pipeline.snapshot_outliers` returns, `{"configured": [...], "user": [...]}`
    of `ml.ood.outlier_data.OutlierImages` (None for a snapshot without outliers); a plain list is
    the configured sources alone.
    """
    if not sources:
        return None
    if not isinstance(sources, dict):
        sources = {"configured": list(sources), "user": []}
    groups = split_by_class(list(sources.get("configured") or []))
    parts = [p.images for p in [*groups["fit"], *(sources.get("user") or [])] if len(p)]
    return np.concatenate(parts).astype(np.uint8, copy=False) if parts else None


def active(hp: HParams, outliers: np.ndarray | None) -> bool:
    """Whether training adds the OE term: a positive weight and at least one outlier image."""
    if hp.outlier_exposure_weight < 0 or hp.outlier_batch_ratio <= 0:
        raise ValueError(f"outlier exposure needs outlier_exposure_weight >= 0 and outlier_batch_ratio > 0, got "
                         f"{hp.outlier_exposure_weight} and {hp.outlier_batch_ratio}")
    if hp.outlier_exposure_weight > 0 and (outliers is None or not len(outliers)):
        log.info("outlier_exposure_weight=%s but no outlier images (no outlier source in the snapshot): "
                    "training without outlier exposure", hp.outlier_exposure_weight)
    return hp.outlier_exposure_weight > 0 and outliers is not None and len(outliers) > 0


def outlier_batch_size(hp: HParams) -> int:
    """Outlier images appended to each batch."""
    return max(1, int(round(hp.batch_size * hp.outlier_batch_ratio)))


def loss_weights(n_in: Any, n_out: Any, weight: float) -> tuple[Any, Any]:
    """Per-sample weights that turn Keras' sum / batch-size loss into mean_in + weight * mean_out.

    The mixed batch has n_in + n_out rows, so without them the in-distribution term would shrink by
    n_in / (n_in + n_out) and the learning rate would mean something else with OE on.
    """
    total = n_in + n_out
    return total / n_in, weight * total / n_out


def batch_mixer(images, labels, outliers: np.ndarray, n_classes: int, hp: HParams,
                augment: Callable) -> Callable:
    """A tf.data map function: a batch of image indices -> (images, targets, sample weights) with
    `outlier_batch_size(hp)` random outliers appended, augmented like the rest, targets uniform."""
    import tensorflow as tf

    pool, k = tf.cast(tf.constant(outliers), images.dtype), outlier_batch_size(hp)
    uniform = tf.fill([k, n_classes], 1.0 / n_classes)

    def mix(index):
        picks = tf.random.uniform([k], 0, len(outliers), dtype=tf.int32)
        batch = augment(tf.concat([tf.gather(images, index), tf.gather(pool, picks)], 0), hp.crop_pad, hp.flip)
        targets = tf.concat([tf.one_hot(tf.gather(labels, index), n_classes), uniform], 0)
        w_in, w_out = loss_weights(tf.cast(tf.shape(index)[0], tf.float32), float(k), hp.outlier_exposure_weight)
        weights = tf.concat([tf.fill(tf.shape(index), w_in), tf.fill([k], w_out)], 0)
        return tf.cast(batch, tf.float32), targets, weights

    return mix
