"""Stage `train`: fit one model on a dataset snapshot and track it in MLflow (params, input, curves, model, bundle.json).

The training itself (`ml.train.fit`) and where it starts (`ml.warmstart`) take arrays; this
module reads the snapshot, looks up the champion for a warm start, and logs the run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.keras
import numpy as np

from ml import layout
from ml.config import Settings
from ml.hparams import HParams, get_profile
from ml.inference import Predictor
from ml.model import flops_per_image
from ml.stages import snapshots, tracking
from ml.storage import open_store
from ml.train import feedback_mask, feedback_repeats, fit, val_accuracy_of
from ml.warmstart import initial_model

log = logging.getLogger(__name__)


class MlflowEpochs(keras.callbacks.Callback):
    """Per-epoch metrics to MLflow as epoch_<name> (the platform's progress display reads them too)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {f"epoch_{k}": float(v) for k, v in (logs or {}).items()}
        metrics["epoch_lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics(metrics, step=epoch)


def resolve_hparams(settings: Settings, profile: str, arch: str | None,
                    overrides: dict[str, Any] | None) -> HParams:
    """The profile, then VISIONLOOP_TRAIN_INIT / VISIONLOOP_FEEDBACK_WEIGHT when set, then explicit overrides."""
    from_settings = {k: v for k, v in (("init", settings.train_init), ("feedback_weight", settings.feedback_weight))
                     if v}
    return get_profile(profile, arch or settings.arch or None).with_(**{**from_settings, **(overrides or {})})


def newest_dataset(settings: Settings) -> str:
    """The newest snapshot in the store (for the CLI and hand-triggered runs)."""
    version = snapshots.latest_version(settings)
    if version is None:
        raise ValueError("no dataset snapshot in the store yet: run `visionloop data build` first")
    return version


def champion_start(settings: Settings, classes: list[str]) -> tuple[Any, dict[str, str]]:
    """(the champion's Keras model, info) when its class list equals `classes`, else (None, reason)."""
    version = tracking.champion_version(settings)
    if version is None:
        return None, {"init_used": "scratch", "init_reason": "no champion yet"}
    run_id = tracking.run_id_of_version(settings, version)
    info = tracking.load_dict(settings, run_id, "bundle/bundle.json")
    if list(info.get("classes", [])) != list(classes):
        return None, {"init_used": "scratch", "init_reason": f"champion v{version} has other classes"}
    # Runs from before generations were counted have no param: they count as a scratch start.
    generation = int(tracking.client(settings).get_run(run_id).data.params.get("finetune_generation", 0))
    limit = settings.finetune_max_generations
    if limit and generation >= limit:
        return None, {"init_used": "scratch", "init_reason": f"champion v{version} is fine-tune generation "
                      f"{generation}; after {limit} in a row a retraining starts from scratch "
                      "(VISIONLOOP_FINETUNE_MAX_GENERATIONS)"}
    return tracking.load_run_model(settings, run_id), {"init_used": "champion", "init_version": str(version),
                                                       "init_run_id": run_id, "arch": str(info.get("arch", "")),
                                                       "finetune_generation": str(generation + 1)}


def outlier_images(settings: Settings, dataset_version: str, hp: HParams) -> np.ndarray | None:
    """The snapshot's fit-group outlier images for outlier exposure, or None when its weight is 0 or it has none."""
    if hp.outlier_exposure_weight <= 0:
        return None
    from ml.outlier_exposure import fit_group_images

    # Fit-group classes only (and users' "none of these"): the held-out classes the gate scores stay unseen.
    return fit_group_images(snapshots.outliers(settings, dataset_version))


def train(settings: Settings, dataset_version: str, profile: str | None = None,
          arch: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on a snapshot, log everything to MLflow (no registration); returns run id and val accuracy.

    overrides: HParams fields to change on top of the profile (the benchmark's time budget, say).
    """
    profile = profile or settings.profile
    hp = resolve_hparams(settings, profile, arch, overrides)
    manifest = snapshots.manifest(settings, dataset_version)
    classes = list(manifest.get("classes") or settings.classes)
    x, y, source = snapshots.split(settings, dataset_version, "train", ("x", "y", "source"))
    if hp.max_train_images:  # a subsample, for quick benchmark checks
        x, y, source = (a[:hp.max_train_images] for a in (x, y, source))
    data = {"train": (x, y), "val": snapshots.split(settings, dataset_version, "val")}
    is_feedback = feedback_mask(manifest, source)
    keras.utils.set_random_seed(hp.seed)
    tracking.client(settings)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name=f"{hp.arch}-{profile}-{dataset_version}") as run:
        mlflow.set_tags({"visionloop.stage": "train", "dataset_version": dataset_version})
        champion = champion_start(settings, classes) if hp.init == "champion" else None
        model, hp, init = initial_model(hp, classes, x, champion)
        mlflow.log_params({**hp.to_params(), **init, "profile": profile, "dataset_version": dataset_version,
                           "n_classes": len(classes), "n_train": len(y), "n_train_feedback": int(is_feedback.sum())})
        log_dataset_input(settings, dataset_version, manifest, data["train"])
        mlflow.log_param("flops_per_image", flops_per_image(model))
        if init["init_used"] == "champion":  # where fine-tuning starts: the champion's own val accuracy
            mlflow.log_metric("init_val_accuracy", val_accuracy_of(Predictor(model), data["val"]))
        timing = fit(model, data, hp, feedback_repeats(is_feedback, hp.feedback_weight), callbacks=[MlflowEpochs()],
                     outliers=outlier_images(settings, dataset_version, hp))
        val_accuracy = log_trained(model, hp, classes, dataset_version, data["val"], timing,
                                   heldout_outliers(settings, dataset_version))
        log.info("run %s: val_accuracy %.4f in %.0f s", run.info.run_id, val_accuracy, timing["train_seconds"])
    return {"run_id": run.info.run_id, "val_accuracy": val_accuracy, "arch": hp.arch, "profile": profile,
            "dataset_version": dataset_version, "init_used": init["init_used"], **timing}


def log_trained(model: keras.Model, hp: HParams, classes: list[str], dataset_version: str,
                val: tuple[np.ndarray, np.ndarray], timing: dict[str, float],
                outliers: np.ndarray | None = None) -> float:
    """Into the open run: val accuracy and timing, the model, bundle.json, smoke images, OpenVINO; the val accuracy."""
    predictor = Predictor(model)
    val_accuracy = val_accuracy_of(predictor, val)
    mlflow.log_metrics({"val_accuracy": val_accuracy, **timing})
    mlflow.keras.log_model(model, name="model", signature=model_signature(len(classes)),
                           pip_requirements=pip_requirements())
    mlflow.log_dict({"classes": classes, "dataset_version": dataset_version, "arch": hp.arch,
                     "embedding_dim": predictor.embedding_dim, "image_size": 32}, "bundle/bundle.json")
    log_smoke_images(predictor, val[0])
    log_openvino(predictor, val, outliers)
    return val_accuracy


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


def log_smoke_images(predictor: Predictor, images: np.ndarray, n: int = 16) -> None:
    """A few val images and their probabilities now, as `bundle/smoke.npz`: serving re-scores them before a swap."""
    from ml.bundle import SMOKE_FILE

    images = np.ascontiguousarray(images[:n], dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="visionloop-smoke-") as tmp:
        path = Path(tmp) / SMOKE_FILE
        np.savez(path, images=images, probs=predictor.predict(images).probs.astype(np.float64))
        mlflow.log_artifact(str(path), "bundle")


def log_openvino(predictor: Predictor, val: tuple[np.ndarray, np.ndarray], outliers: np.ndarray | None) -> None:
    """Export the forward pass to OpenVINO IR as bundle/openvino/, precision chosen on val and held-out
    outliers; never fails the run."""
    from ml.runtime import export_openvino

    try:
        with tempfile.TemporaryDirectory(prefix="visionloop-openvino-") as tmp:
            meta = export_openvino(predictor, tmp, check=val, outliers=outliers)
            mlflow.log_artifacts(tmp, "bundle/openvino")
        mlflow.log_params({"openvino_precision": meta["precision_hint"],
                           "openvino_precision_reason": meta["precision_reason"][:500]})
        mlflow.log_metrics({f"openvino_{p}_{k}": float(check[k]) for p, check in meta["checks"].items()
                            for k in ("label_agreement", "max_prob_diff", "accuracy", "ood_auroc") if k in check})
        log.info("OpenVINO export: %s (%s)", meta["precision_hint"], meta["precision_reason"])
    except Exception as exc:  # noqa: BLE001  (an optional speed-up must never cost the trained model)
        log.warning("OpenVINO export skipped: %s", exc)


def heldout_outliers(settings: Settings, dataset_version: str, limit: int = 2000) -> np.ndarray | None:
    """Up to `limit` images of the snapshot's evaluate-group outlier classes (never trained on), or None."""
    from ml.ood.outlier_data import split_by_class

    sources = snapshots.outliers(settings, dataset_version)
    parts = split_by_class(list(sources["configured"]))["evaluate"] if sources else []
    if not parts:
        return None
    images = np.concatenate([part.images for part in parts])
    return images[np.random.default_rng(0).permutation(len(images))[:limit]]


def log_dataset_input(settings: Settings, version: str, manifest: dict,
                      train: tuple[np.ndarray, np.ndarray]) -> None:
    """The snapshot as the run's input (MLflow dataset) plus its manifest as an artifact."""
    x, y = train
    with warnings.catch_warnings():  # a file:// source matches two equivalent MLflow source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(x, targets=y, name=version,
                                         source=open_store(settings).uri(layout.dataset_prefix(version)))
    mlflow.log_input(dataset, context="training")
    mlflow.log_dict(manifest, "manifest.json")


def main(argv: list[str] | None = None) -> None:
    """`python -m ml.stages.train --dataset V [--profile P] --result-file F`: the stage on Settings from the env."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Train one model on a snapshot (the training_pipeline's train task).")
    parser.add_argument("--dataset", required=True, help="snapshot version")
    parser.add_argument("--profile", default=None, help="training profile (default: VISIONLOOP_PROFILE)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="HParams override on top of the profile (repeatable), e.g. outlier_exposure_weight=0")
    parser.add_argument("--result-file", required=True, help="where to write the stage's result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ml.hparams import parse_overrides

    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    result = train(Settings.from_env(), args.dataset, profile=args.profile, overrides=overrides or None)
    Path(args.result_file).write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
