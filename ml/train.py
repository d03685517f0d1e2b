"""Fit one Keras model on arrays: augmentation, feedback oversampling, the optimiser and early stopping.

No MLflow and no snapshot reading here: `ml.stages.train` reads the snapshot and tracks the run.
"""

from __future__ import annotations

import logging
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from ml import outlier_exposure
from ml.hparams import HParams
from ml.inference import Predictor
from ml.optim import BiasScaledSGD, Lookahead, OneCycle

log = logging.getLogger(__name__)


def augment(images: tf.Tensor, pad: int, flip: bool) -> tf.Tensor:
    """Random translation (reflect pad + crop) and horizontal flip of a uint8 batch, vectorised."""
    n = tf.shape(images)[0]
    if pad > 0:
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        dy = tf.random.uniform([n], 0, 2 * pad + 1, dtype=tf.int32)
        dx = tf.random.uniform([n], 0, 2 * pad + 1, dtype=tf.int32)
        grid = tf.range(32)[None, :]
        images = tf.gather(padded, dy[:, None] + grid, axis=1, batch_dims=1)
        images = tf.gather(images, dx[:, None] + grid, axis=2, batch_dims=1)
    if flip:
        mirror = tf.random.uniform([n]) < 0.5
        images = tf.where(mirror[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def feedback_mask(manifest: dict, source: np.ndarray) -> np.ndarray:
    """True for images whose source (an index into manifest["sources"]) is of kind `feedback`."""
    kinds = np.array([s.get("kind", "") for s in manifest.get("sources", [])] + [""])  # "" for a bad index
    index = np.asarray(source, dtype=np.int64)
    return kinds[np.where((index >= 0) & (index < len(kinds) - 1), index, -1)] == "feedback"


def feedback_repeats(mask: np.ndarray, weight: int) -> np.ndarray:
    """Copies of each training image per epoch: `weight` for user corrections, 1 for the rest."""
    return np.where(mask, max(1, int(weight)), 1).astype(np.int64)


def epoch_indices(n: int, repeats: np.ndarray | None) -> np.ndarray:
    """Image indices of one epoch before shuffling: image i appears repeats[i] times."""
    return np.arange(n) if repeats is None else np.repeat(np.arange(n), repeats)


def make_dataset(x: np.ndarray, y: np.ndarray, n_classes: int, hp: HParams, train: bool,
                 repeats: np.ndarray | None = None, outliers: np.ndarray | None = None) -> tf.data.Dataset:
    """Batched (image float32, one-hot label) pairs; shuffled and augmented per batch when training.

    Batches are gathered from the whole arrays by shuffled indices: tf.data then
    handles one small tensor per batch instead of one element per image. With
    `repeats`, an image is drawn that many times per epoch (each copy augmented anew).
    With `outliers` (training only), each batch also carries outlier images with a uniform
    target and per-sample loss weights (ml.outlier_exposure).
    """
    images, labels = tf.constant(x), tf.constant(y)
    index = epoch_indices(len(x), repeats)
    ds = tf.data.Dataset.from_tensor_slices(index)
    if train:
        ds = ds.shuffle(len(index), seed=hp.seed, reshuffle_each_iteration=True)

    def gather(index):
        batch = tf.gather(images, index)
        if train:
            batch = augment(batch, hp.crop_pad, hp.flip)
        return tf.cast(batch, tf.float32), tf.one_hot(tf.gather(labels, index), n_classes)

    if train and outliers is not None:
        gather = outlier_exposure.batch_mixer(images, labels, outliers, n_classes, hp, augment)
    return ds.batch(hp.batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


class InDistributionAccuracy(keras.metrics.CategoricalAccuracy):
    """Categorical accuracy over rows with a one-hot target only: outlier rows (uniform target) have no class."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        known = keras.ops.cast(keras.ops.max(y_true, axis=-1) > 0.5, "float32")
        return super().update_state(y_true, y_pred, sample_weight=known)


def make_optimizer(hp: HParams) -> keras.optimizers.Optimizer:
    """Nesterov SGD with fast BN biases (or Adam); the LR is driven by OneCycle, so it starts as a float."""
    if hp.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=hp.learning_rate, weight_decay=hp.weight_decay or None)
        if hp.weight_decay:
            opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        return opt
    return BiasScaledSGD(learning_rate=hp.learning_rate, momentum=hp.momentum, nesterov=True,
                         bias_lr_scale=hp.bias_lr_scale, l2=hp.weight_decay)


class Throughput(keras.callbacks.Callback):
    """Training images per second over train steps only (no validation, no first-step tracing)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size, self.images, self.seconds, self.last = batch_size, 0, 0.0, None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.last = None if epoch == 0 else time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.images += self.batch_size
            self.seconds += now - self.last
        self.last = now

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def early_stopping(hp: HParams) -> keras.callbacks.EarlyStopping:
    """Stop on validation accuracy, but only once the one-cycle LR has decayed halfway.

    Near the peak rate validation accuracy swings widely (0.68 -> 0.21 -> 0.51 in one
    30-epoch run) while training still improves, so watching from the start stopped
    good runs early and restored a weak early epoch.
    """
    watch_from = int(hp.epochs * (hp.warmup_fraction + (1 - hp.warmup_fraction) / 2))
    return keras.callbacks.EarlyStopping("val_accuracy", patience=hp.early_stopping_patience, mode="max",
                                         restore_best_weights=True, start_from_epoch=watch_from)


def fit(model: keras.Model, data: dict[str, tuple[np.ndarray, np.ndarray]], hp: HParams,
        repeats: np.ndarray | None = None, callbacks: tuple | list = (),
        outliers: np.ndarray | None = None) -> dict[str, float]:
    """Compile and fit with early stopping on validation accuracy; returns timing numbers.

    callbacks: extra Keras callbacks, run after the internal ones (MLflow logging, say).
    outliers: (N,32,32,3) uint8 images of none of the classes, for the outlier-exposure term
    (used only when hp.outlier_exposure_weight > 0).
    """
    (x, y), (xv, yv) = data["train"], data["val"]
    n_classes = model.output.shape[-1]
    steps = hp.epochs * int(np.ceil(len(epoch_indices(len(x), repeats)) / hp.batch_size))
    outliers = outliers if outlier_exposure.active(hp, outliers) else None
    accuracy = (InDistributionAccuracy if outliers is not None else keras.metrics.CategoricalAccuracy)(name="accuracy")
    model.compile(optimizer=make_optimizer(hp), jit_compile=False,  # XLA is 4x slower on this CPU
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing),
                  metrics=[accuracy])
    throughput = Throughput(hp.batch_size)
    schedule = OneCycle(hp.learning_rate, hp.warmup_fraction, steps, hp.max_minutes, hp.lr_start, hp.lr_end)
    stopping = early_stopping(hp)
    # Lookahead after EarlyStopping: a run that finished its schedule ends on the averaged weights.
    callbacks = [schedule, throughput, stopping] + ([Lookahead(schedule, stopping)] if hp.lookahead else []) \
        + list(callbacks)
    start = time.perf_counter()
    history = model.fit(make_dataset(x, y, n_classes, hp, train=True, repeats=repeats, outliers=outliers),
                        epochs=hp.epochs,
                        shuffle=False, verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
                        validation_data=make_dataset(xv, yv, n_classes, hp, train=False), callbacks=callbacks)
    seconds = time.perf_counter() - start
    # The training optimizer is not saved with the model: any Keras loads the logged model.
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    epochs_run = len(history.history.get("loss", []))
    return {"train_seconds": seconds, "epochs_run": epochs_run, "images_per_s": throughput.images_per_s,
            "n_outliers_trained": 0 if outliers is None else len(outliers)}


def val_accuracy_of(predictor: Predictor, val: tuple[np.ndarray, np.ndarray]) -> float:
    """Accuracy on the validation split with the serving forward pass (flip TTA for airnet)."""
    probs = predictor.predict_batched(val[0]).probs
    return float((probs.argmax(1) == val[1]).mean())
