"""Train one model on a dataset snapshot and track it in MLflow (params, input, curves, model, bundle.json)."""

from __future__ import annotations

import importlib.metadata
import logging
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
from ml.model import flops_per_image
from ml.optim import BiasScaledSGD, Lookahead, OneCycle
from ml.storage import open_store
from ml.warmstart import initial_model

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
                 repeats: np.ndarray | None = None) -> tf.data.Dataset:
    """Batched (image float32, one-hot label) pairs; shuffled and augmented per batch when training.

    Batches are gathered from the whole arrays by shuffled indices: tf.data then
    handles one small tensor per batch instead of one element per image. With
    `repeats`, an image is drawn that many times per epoch (each copy augmented anew).
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

    return ds.batch(hp.batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


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
        repeats: np.ndarray | None = None) -> dict[str, float]:
    """Compile and fit with early stopping on validation accuracy; returns timing numbers."""
    (x, y), (xv, yv) = data["train"], data["val"]
    n_classes = model.output.shape[-1]
    steps = hp.epochs * int(np.ceil(len(epoch_indices(len(x), repeats)) / hp.batch_size))
    model.compile(optimizer=make_optimizer(hp), jit_compile=False,  # XLA is 4x slower on this CPU
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    throughput = Throughput(hp.batch_size)
    schedule = OneCycle(hp.learning_rate, hp.warmup_fraction, steps, hp.max_minutes, hp.lr_start, hp.lr_end)
    stopping = early_stopping(hp)
    # Lookahead after EarlyStopping: a run that finished its schedule ends on the averaged weights.
    callbacks = [schedule, MlflowEpochs(), throughput, stopping] + ([Lookahead(schedule, stopping)]
                                                                    if hp.lookahead else [])
    start = time.perf_counter()
    history = model.fit(make_dataset(x, y, n_classes, hp, train=True, repeats=repeats), epochs=hp.epochs,
                        shuffle=False, verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
                        validation_data=make_dataset(xv, yv, n_classes, hp, train=False), callbacks=callbacks)
    seconds = time.perf_counter() - start
    # The training optimizer is not saved with the model: any Keras loads the logged model.
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    epochs_run = len(history.history.get("loss", []))
    return {"train_seconds": seconds, "epochs_run": epochs_run, "images_per_s": throughput.images_per_s}


def resolve_hparams(settings: Settings, profile: str, arch: str | None,
                    overrides: dict[str, Any] | None) -> HParams:
    """The profile, then VISIONLOOP_TRAIN_INIT / VISIONLOOP_FEEDBACK_WEIGHT when set, then explicit overrides."""
    from_settings = {k: v for k, v in (("init", settings.train_init), ("feedback_weight", settings.feedback_weight))
                     if v}
    return get_profile(profile, arch or settings.arch or None).with_(**{**from_settings, **(overrides or {})})


def train_model(settings: Settings, dataset_version: str, profile: str | None = None,
                arch: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on a snapshot, log everything to MLflow (no registration); returns run id and val accuracy.

    overrides: HParams fields to change on top of the profile (the benchmark's time budget, say).
    """
    profile = profile or settings.profile
    hp = resolve_hparams(settings, profile, arch, overrides)
    store = open_store(settings)
    manifest = store.get_json(layout.dataset_manifest(dataset_version))
    classes = list(manifest.get("classes") or settings.classes)
    x, y, source = read_split(settings, dataset_version, "train", ("x", "y", "source"))
    if hp.max_train_images:  # a subsample, for quick benchmark checks
        x, y, source = (a[:hp.max_train_images] for a in (x, y, source))
    data = {"train": (x, y), "val": read_split(settings, dataset_version, "val")}
    is_feedback = feedback_mask(manifest, source)
    keras.utils.set_random_seed(hp.seed)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name=f"{hp.arch}-{profile}-{dataset_version}") as run:
        mlflow.set_tags({"visionloop.stage": "train", "dataset_version": dataset_version})
        model, hp, init = initial_model(settings, hp, classes, x)
        mlflow.log_params({**hp.to_params(), **init, "profile": profile, "dataset_version": dataset_version,
                           "n_classes": len(classes), "n_train": len(y), "n_train_feedback": int(is_feedback.sum())})
        log_dataset_input(store, dataset_version, manifest, data["train"])
        mlflow.log_param("flops_per_image", flops_per_image(model))
        if init["init_used"] == "champion":  # where fine-tuning starts: the champion's own val accuracy
            mlflow.log_metric("init_val_accuracy", val_accuracy_of(Predictor(model), data["val"]))
        timing = fit(model, data, hp, feedback_repeats(is_feedback, hp.feedback_weight))
        predictor = Predictor(model)
        val_accuracy = val_accuracy_of(predictor, data["val"])
        mlflow.log_metrics({"val_accuracy": val_accuracy, **timing})
        mlflow.keras.log_model(model, name="model", signature=model_signature(len(classes)),
                               pip_requirements=pip_requirements())
        mlflow.log_dict({"classes": classes, "dataset_version": dataset_version, "arch": hp.arch,
                         "embedding_dim": predictor.embedding_dim, "image_size": 32}, "bundle/bundle.json")
        log_smoke_images(predictor, data["val"][0])
        log_openvino(predictor, data["val"])
        log.info("run %s: val_accuracy %.4f in %.0f s", run.info.run_id, val_accuracy, timing["train_seconds"])
    return {"run_id": run.info.run_id, "val_accuracy": val_accuracy, "arch": hp.arch, "profile": profile,
            "dataset_version": dataset_version, "init_used": init["init_used"], **timing}


def log_smoke_images(predictor: Predictor, images: np.ndarray, n: int = 16) -> None:
    """A few val images and their probabilities now, as `bundle/smoke.npz`: serving re-scores them before a swap."""
    import tempfile
    from pathlib import Path

    from ml.bundle import SMOKE_FILE

    images = np.ascontiguousarray(images[:n], dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="visionloop-smoke-") as tmp:
        path = Path(tmp) / SMOKE_FILE
        np.savez(path, images=images, probs=predictor.predict(images).probs.astype(np.float64))
        mlflow.log_artifact(str(path), "bundle")


def log_openvino(predictor: Predictor, val: tuple[np.ndarray, np.ndarray]) -> None:
    """Export the forward pass to OpenVINO IR as bundle/openvino/, precision chosen on val; never fails the run."""
    import tempfile

    from ml.runtime import export_openvino

    try:
        with tempfile.TemporaryDirectory(prefix="visionloop-openvino-") as tmp:
            meta = export_openvino(predictor, tmp, check=val)
            mlflow.log_artifacts(tmp, "bundle/openvino")
        mlflow.log_param("openvino_precision", meta["precision_hint"])
        mlflow.log_metrics({f"openvino_{p}_{k}": float(meta["checks"][p][k]) for p in ("f32", "bf16")
                            for k in ("label_agreement", "max_prob_diff", "accuracy")})
    except Exception as exc:  # noqa: BLE001  (an optional speed-up must never cost the trained model)
        log.warning("OpenVINO export skipped: %s", exc)


def val_accuracy_of(predictor: Predictor, val: tuple[np.ndarray, np.ndarray]) -> float:
    """Accuracy on the validation split with the serving forward pass (flip TTA for airnet)."""
    probs = predictor.predict_batched(val[0]).probs
    return float((probs.argmax(1) == val[1]).mean())


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
