"""Train one model on a dataset snapshot and track it in MLflow (params, input, curves, model, bundle.json)."""

from __future__ import annotations

import importlib.metadata
import logging
import math
import sys
import time
import warnings
from typing import Any

import keras
import mlflow
import mlflow.keras
import numpy as np
import tensorflow as tf

from ml import layout
from ml.config import Settings
from ml.hparams import HParams, get_profile
from ml.inference import Predictor
from ml.model import build_model, flops_per_image, init_whitening
from ml.storage import open_store

log = logging.getLogger(__name__)


def read_split(settings: Settings, version: str, split: str, names=("x", "y")) -> tuple[np.ndarray, ...]:
    """Arrays of one split of a snapshot, straight from the documented store layout."""
    store = open_store(settings)
    return tuple(store.get_array(layout.dataset_array(version, split, name)) for name in names)


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


def make_dataset(x: np.ndarray, y: np.ndarray, n_classes: int, hp: HParams, train: bool) -> tf.data.Dataset:
    """Batched (image float32, one-hot label) pairs; shuffled and augmented per batch when training."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        ds = ds.shuffle(len(x), seed=hp.seed, reshuffle_each_iteration=True)
    ds = ds.batch(hp.batch_size)

    def prepare(images, labels):
        if train:
            images = augment(images, hp.crop_pad, hp.flip)
        return tf.cast(images, tf.float32), tf.one_hot(labels, n_classes)

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def make_optimizer(hp: HParams) -> keras.optimizers.Optimizer:
    """Nesterov SGD (or Adam); the learning rate is driven by OneCycle, so it starts as a plain float."""
    common = dict(learning_rate=hp.learning_rate, use_ema=hp.ema, weight_decay=hp.weight_decay or None)
    if hp.optimizer == "adam":
        opt = keras.optimizers.Adam(**common)
    else:
        opt = keras.optimizers.SGD(momentum=hp.momentum, nesterov=True, **common)
    if hp.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


class OneCycle(keras.callbacks.Callback):
    """Linear warm-up then cosine decay to 0, over steps or the time budget, whichever runs out first.

    Progress is max(step / total_steps, elapsed / budget), so a slow machine still
    anneals the learning rate fully inside max_minutes instead of being cut off at
    a high rate; training stops when progress reaches 1.
    """

    def __init__(self, peak: float, warmup: float, total_steps: int, max_minutes: float = 0.0):
        super().__init__()
        self.peak, self.warmup, self.total = peak, warmup, max(1, total_steps)
        self.budget_s = max_minutes * 60
        self.step, self.start = 0, time.monotonic()

    def progress(self) -> float:
        by_time = (time.monotonic() - self.start) / self.budget_s if self.budget_s else 0.0
        return min(1.0, max(self.step / self.total, by_time))

    def rate(self, progress: float) -> float:
        if progress < self.warmup:
            return self.peak * progress / self.warmup
        return self.peak * 0.5 * (1 + math.cos(math.pi * (progress - self.warmup) / (1 - self.warmup)))

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = time.monotonic()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        progress = self.progress()
        self.model.optimizer.learning_rate.assign(self.rate(progress))
        self.step += 1
        if progress >= 1.0:
            if self.budget_s and self.step < self.total:
                log.warning("time budget of %.1f min used: stopping after %d steps", self.budget_s / 60, self.step)
            self.model.stop_training = True


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


class MlflowEpochs(keras.callbacks.Callback):
    """Per-epoch metrics to MLflow as epoch_<name> (the platform's progress display reads them too)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {f"epoch_{k}": float(v) for k, v in (logs or {}).items()}
        metrics["epoch_lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics(metrics, step=epoch)


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of the logged model (skips MLflow's slow inference of them)."""
    reqs = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "mlflow"):
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if any(r.startswith("tensorflow-cpu") for r in reqs):
        reqs = [r for r in reqs if not r.startswith("tensorflow==")]
    return reqs


def model_signature(n_classes: int):
    """uint8 images in, float32 probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes))]))


def fit(model: keras.Model, data: dict[str, tuple[np.ndarray, np.ndarray]], hp: HParams) -> dict[str, float]:
    """Compile and fit with early stopping on validation accuracy; returns timing numbers."""
    (x, y), (xv, yv) = data["train"], data["val"]
    n_classes = model.output.shape[-1]
    steps = hp.epochs * int(np.ceil(len(x) / hp.batch_size))
    model.compile(optimizer=make_optimizer(hp), jit_compile=False,  # XLA is 4x slower on this CPU
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    throughput = Throughput(hp.batch_size)
    callbacks = [OneCycle(hp.learning_rate, hp.warmup_fraction, steps, hp.max_minutes), MlflowEpochs(), throughput,
                 keras.callbacks.EarlyStopping("val_accuracy", patience=hp.early_stopping_patience,
                                               mode="max", restore_best_weights=True)]
    start = time.perf_counter()
    history = model.fit(make_dataset(x, y, n_classes, hp, train=True), epochs=hp.epochs, shuffle=False,
                        verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
                        validation_data=make_dataset(xv, yv, n_classes, hp, train=False), callbacks=callbacks)
    seconds = time.perf_counter() - start
    epochs_run = len(history.history.get("loss", []))
    return {"train_seconds": seconds, "epochs_run": epochs_run, "images_per_s": throughput.images_per_s}


def train_model(settings: Settings, dataset_version: str, profile: str | None = None,
                arch: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on a snapshot, log everything to MLflow (no registration); returns run id and val accuracy.

    overrides: HParams fields to change on top of the profile (the benchmark's time budget, say).
    """
    profile = profile or settings.profile
    hp = get_profile(profile, arch or settings.arch or None).with_(**(overrides or {}))
    store = open_store(settings)
    manifest = store.get_json(layout.dataset_manifest(dataset_version))
    classes = list(manifest.get("classes") or settings.classes)
    data = {split: read_split(settings, dataset_version, split) for split in ("train", "val")}
    if hp.max_train_images:  # a subsample, for quick benchmark checks
        data["train"] = tuple(a[:hp.max_train_images] for a in data["train"])
    keras.utils.set_random_seed(hp.seed)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name=f"{hp.arch}-{profile}-{dataset_version}") as run:
        mlflow.set_tags({"visionloop.stage": "train", "dataset_version": dataset_version})
        mlflow.log_params({**hp.to_params(), "profile": profile, "dataset_version": dataset_version,
                           "n_classes": len(classes), "n_train": len(data["train"][1])})
        log_dataset_input(store, dataset_version, manifest, data["train"])
        model = build_model(hp.arch, len(classes), width=hp.width, activation=hp.activation)
        if hp.whiten and hp.arch == "airnet":
            init_whitening(model, data["train"][0])
        mlflow.log_param("flops_per_image", flops_per_image(model))
        timing = fit(model, data, hp)
        predictor = Predictor(model)
        val_pred = predictor.predict_batched(data["val"][0])
        val_accuracy = float((val_pred.probs.argmax(1) == data["val"][1]).mean())
        mlflow.log_metrics({"val_accuracy": val_accuracy, **timing})
        mlflow.keras.log_model(model, name="model", signature=model_signature(len(classes)),
                               pip_requirements=pip_requirements())
        mlflow.log_dict({"classes": classes, "dataset_version": dataset_version, "arch": hp.arch,
                         "embedding_dim": predictor.embedding_dim, "image_size": 32}, "bundle/bundle.json")
        log.info("run %s: val_accuracy %.4f in %.0f s", run.info.run_id, val_accuracy, timing["train_seconds"])
    return {"run_id": run.info.run_id, "val_accuracy": val_accuracy, "arch": hp.arch, "profile": profile,
            "dataset_version": dataset_version, **timing}


def log_dataset_input(store, version: str, manifest: dict, train: tuple[np.ndarray, np.ndarray]) -> None:
    """The snapshot as the run's input (MLflow dataset) plus its manifest as an artifact."""
    x, y = train
    with warnings.catch_warnings():  # a file:// source matches two equivalent MLflow source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(x, targets=y, name=version,
                                         source=store.uri(layout.dataset_prefix(version)))
    mlflow.log_input(dataset, context="training")
    mlflow.log_dict(manifest, "manifest.json")


def newest_dataset(settings: Settings) -> str:
    """The newest snapshot in the store (for the CLI and hand-triggered DAG runs)."""
    from ml.data.snapshot import latest_version

    version = latest_version(open_store(settings))
    if version is None:
        raise ValueError("no dataset snapshot in the store yet: run `visionloop data build` first")
    return version
