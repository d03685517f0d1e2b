"""OOD benchmark: every detector on outlier classes it never saw, at the thresholds serving uses.

    python bench/ood.py --run-id RUN            # a trained run (its model and dataset snapshot)
    python bench/ood.py                         # the registered champion
    python bench/ood.py --train-profile smoke   # self-check: a smoke-sized model trained here (weak!)
    python bench/ood.py --train-profile standard --compare-oe 0,0.5 --per-class 1000 --set max_minutes=6
        # outlier exposure on/off: the same model trained once per weight by ml.train.fit, same seed
    python bench/ood.py --pipeline standard --compare-oe 0,0.5
        # the product's own stages (dataset build with the outlier source, train -> ... -> fit_ood) on the
        # shared archives, once per outlier-exposure weight; the weight's run is then scored as above

Outliers: ../shared/datasets/ood_dev and ood_dev2, split by class (ml.ood.outlier_data) into fit,
calibrate and evaluate groups; only the evaluate classes are scored ("heldout*" sets). scikit-learn's
bundled digits, decoded through the training path, are the far-OOD set. Per detector and set: AUROC,
FPR@95TPR, catch rate and ID reject at the served thresholds. The last line is one JSON object; its
`default` block has heldout_auroc, heldout_catch_at_5pct, id_reject and digits_auroc.
Targets (a `standard` model with outlier exposure): heldout AUROC >= 0.85, >= 50 % of held-out
outliers flagged at <= 5 % ID reject, digits AUROC >= 0.95.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ml.config import Settings  # noqa: E402
from ml.ood import OODFeatures, fitting  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
OUTLIERS = ("ood_dev.tar.gz", "ood_dev2.tar.gz")
ID_ARCHIVES = ("cifar10_train_jpg.tar.gz", "extra_superclasses_train.tar.gz")
TARGETS = {"heldout_auroc": 0.85, "heldout_catch_at_5pct": 0.5, "id_reject": 0.05, "digits_auroc": 0.95}
log = logging.getLogger("bench.ood")


def champion_run(settings: Settings) -> str | None:
    """Run id of the champion alias, or None when MLflow or the alias is not there."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(settings.mlflow_tracking_uri).get_model_version_by_alias(
            settings.model_name, "champion").run_id
    except Exception as exc:  # server down, model or alias missing: all mean "no trained model"
        log.warning("no champion at %s (%s)", settings.mlflow_tracking_uri, type(exc).__name__)
        return None


def digits_images() -> np.ndarray:
    """sklearn's 1,797 8x8 digits as PNGs decoded and Lanczos-resampled exactly like uploads."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from ml.data.decode import decode_chunk

    pngs = []
    for digit in load_digits().images:
        buffer = io.BytesIO()
        Image.fromarray((digit * 255.0 / 16.0).astype(np.uint8), "L").save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    return decode_chunk(pngs)[0]


def photo_patches(n: int = 500, seed: int = 0) -> np.ndarray:
    """Crops of scikit-learn's two bundled sample photos (a temple, a flower), Lanczos to 32x32: non-object
    images. The pixel guard's design (statistics, mixture size) was checked on these and on noise, never
    on digits, so digits stays a check set."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng, crops = np.random.default_rng(seed), []
    photos = load_sample_images().images
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(48, 160))
        top, left = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((32, 32), Image.LANCZOS)
        crops.append(np.asarray(crop))
    return np.stack(crops)


def data_from_run(settings: Settings, run_id: str):
    """The pipeline's own data: the run's model on its snapshot, with the configured outlier groups."""
    from ml.inference import Predictor
    from ml.stages import tracking
    from ml.stages.fit_ood import build_data

    version = tracking.dataset_version_of_run(settings, run_id)
    predictor = Predictor(tracking.load_run_model(settings, run_id))
    return build_data(settings, version, predictor), predictor, f"run {run_id} (dataset {version})"


def read_archive(path: Path, per_class: int, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first per_class images of each class folder in a train/<class>/... archive, as 32x32 uint8."""
    import tarfile

    from ml.data.decode import decode_chunk

    payloads: dict[str, list[bytes]] = {c: [] for c in classes}
    with tarfile.open(path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-2] in payloads and len(payloads[parts[-2]]) < per_class:
                payloads[parts[-2]].append(tar.extractfile(member).read())
    found = [(decode_chunk(p)[0], classes.index(c)) for c, p in payloads.items() if p]
    return np.concatenate([x for x, _ in found]), np.concatenate([np.full(len(x), c) for x, c in found])


def shared_splits(settings: Settings, per_class: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The first per_class shared images of each class, shuffled into train (3/4), val and test (1/8 each)."""
    parts = [read_archive(DATASETS / name, per_class, settings.classes)
             for name in ("cifar10_train_jpg.tar.gz", "extra_superclasses_train.tar.gz")]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.random.default_rng(settings.seed).permutation(len(y))
    x, y = x[order], y[order]
    n_val = len(y) // 8
    return {"val": (x[:n_val], y[:n_val]), "test": (x[n_val:2 * n_val], y[n_val:2 * n_val]),
            "train": (x[2 * n_val:], y[2 * n_val:])}


def quick_model(settings: Settings, profile: str, per_class: int):
    """Train an airnet with the profile's width and epochs on the shared images (CPU) and build the data."""
    import keras

    from ml.hparams import get_profile
    from ml.inference import Predictor
    from ml.model import build_model
    from ml.ood.pipeline import features, outlier_features, synthetic_ood

    hp = get_profile(profile)
    classes = settings.classes
    splits = shared_splits(settings, per_class)
    (x_tr, y_tr), (x_val, y_val), (x_test, _) = splits["train"], splits["val"], splits["test"]
    keras.utils.set_random_seed(settings.seed)
    model = build_model("airnet", len(classes), width=hp.width)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(np.concatenate([x_tr, x_tr[:, :, ::-1]]), np.concatenate([y_tr, y_tr]), batch_size=128,
              epochs=hp.epochs, verbose=2)
    predictor = Predictor(model)
    val = features(predictor, x_val)
    accuracy = float((val.predicted == y_val).mean())
    data = fitting.OODData(features(predictor, x_tr), y_tr, val, features(predictor, x_test),
                           sanity_sets={"synthetic_noise": features(predictor, synthetic_ood(x_val, settings.seed))},
                           **outlier_features(settings, predictor))
    return data, predictor, (f"SMOKE-SIZED quick model ({profile} profile width {hp.width}, {hp.epochs} epochs, "
                             f"{len(y_tr)} train images, Adam): val accuracy {accuracy:.3f}")


def add_digits(detectors: dict, summary: dict, data: fitting.OODData, predictor, digits: np.ndarray) -> None:
    """Score the far-OOD sets (digits; photo patches) with every fitted detector into summary's rows, after
    the default was chosen: evaluation only, never sanity sets (the selector vetoes on sanity sets)."""
    from ml.ood.evaluate import evaluate_detector

    patches = photo_patches()
    far = {name: OODFeatures.from_prediction(predictor.predict_batched(x), x)
           for name, x in (("digits", digits), ("photo_patches", patches))}
    for name, detector in detectors.items():
        summary["detectors"][name]["sets"].update(evaluate_detector(detector, data.val, far, data.test)["sets"])


def default_block(detector, data: fitting.OODData, summary: dict) -> dict:
    """The headline numbers of the default detector at its served thresholds."""
    row = summary["detectors"][summary["default_detector"]]
    id_scores = detector.score(data.test).scores
    heldout = detector.score(data.ood_sets["heldout"]).scores if "heldout" in data.ood_sets else np.zeros(0)
    cut = np.quantile(id_scores, 0.95)  # the served-score level that rejects 5 % of unseen ID images
    return {"detector": summary["default_detector"], "threshold_mode": row["threshold_mode"],
            "heldout_auroc": row["sets"].get("heldout", {}).get("auroc"),
            "heldout_catch_served": row["sets"].get("heldout", {}).get("ood_reject_rate"),
            "heldout_catch_at_5pct": float(np.mean(heldout > cut)) if len(heldout) else None,
            "id_reject": row["id_reject_rate"], "digits_auroc": row["sets"]["digits"]["auroc"],
            "photo_patches_auroc": row["sets"]["photo_patches"]["auroc"]}


def report(summary: dict, block: dict, model: str, seconds: float) -> dict:
    """Print the table; return the JSON line's content."""
    from ml.ood.evaluate import markdown_table

    print(markdown_table(summary["detectors"], summary["default_detector"]))
    rows = {name: {"threshold_mode": r["threshold_mode"], "id_reject": round(r["id_reject_rate"], 4),
                   "fit_s": r["fit_seconds"],
                   "sets": {s: {"auroc": round(m["auroc"], 4), "fpr95": round(m["fpr_at_95_tpr"], 4),
                                "catch": round(m["ood_reject_rate"], 4)} for s, m in r["sets"].items()}}
            for name, r in summary["detectors"].items()}
    meets = all(block.get(k) is not None and (block[k] <= v if k == "id_reject" else block[k] >= v)
                for k, v in TARGETS.items())
    return {"bench": "ood", "model": model, "heldout_classes": summary["heldout_classes"],
            "default": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in block.items()},
            "targets": TARGETS, "meets_targets": meets, "detectors": rows, "seconds": round(seconds, 1)}


def product_model(settings: Settings, hp, splits: dict, outliers: np.ndarray | None):
    """Train as the train stage does (ml.warmstart's scratch model, ml.train.fit); the predictor and its numbers."""
    import keras

    from ml.inference import Predictor
    from ml.train import fit, val_accuracy_of
    from ml.warmstart import initial_model

    keras.utils.set_random_seed(hp.seed)
    model, hp, _ = initial_model(hp, list(settings.classes), splits["train"][0])
    timing = fit(model, {"train": splits["train"], "val": splits["val"]}, hp, outliers=outliers)
    predictor = Predictor(model)
    return predictor, {"val_accuracy": val_accuracy_of(predictor, splits["val"]), **timing}


def _rounded(numbers: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in numbers.items()}


def oe_run(settings: Settings, hp, splits: dict, sources: list, digits: np.ndarray) -> dict:
    """One model trained with hp's outlier-exposure weight, then every detector fitted and evaluated on it."""
    from ml.ood.pipeline import ood_data
    from ml.outlier_exposure import fit_group_images

    stored = {"configured": sources, "user": []}  # the snapshot's form: OE trains on the fit group only
    predictor, numbers = product_model(settings, hp, splits, fit_group_images(stored))
    data = ood_data(settings, predictor, splits["train"], splits["val"][0], splits["test"][0], stored)
    detectors, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
    add_digits(detectors, summary, data, predictor, digits)
    block = default_block(detectors[summary["default_detector"]], data, summary)
    by_detector = {name: {s: round(m["auroc"], 4) for s, m in row["sets"].items()}
                   for name, row in summary["detectors"].items()}
    run = {"outlier_exposure_weight": hp.outlier_exposure_weight, **_rounded(numbers),
           "default": _rounded(block), "sanity_vetoed": summary.get("sanity_vetoed"),
           "auroc_by_detector": by_detector, "heldout_classes": summary["heldout_classes"]}
    log.info("OE run: %s", json.dumps(run))  # each run as it ends: a slow comparison still shows its first arm
    return run


def compare_oe(settings: Settings, profile: str, overrides: dict, weights: list[float], per_class: int) -> dict:
    """The same model trained once per outlier-exposure weight (same seed, data and outliers): accuracy vs OOD."""
    from ml.hparams import get_profile
    from ml.ood.outlier_data import load_sources

    hp = get_profile(profile).with_(**overrides)
    splits = shared_splits(settings, per_class)
    sources, digits = load_sources(settings), digits_images()
    runs = [oe_run(settings, hp.with_(outlier_exposure_weight=w), splits, sources, digits) for w in weights]
    for run in runs[1:]:
        run["minus_first"] = {k: round(run[k] - runs[0][k], 4) for k in ("val_accuracy",)}
        run["minus_first"].update({k: round(run["default"][k] - runs[0]["default"][k], 4)
                                   for k in ("heldout_auroc", "heldout_catch_at_5pct", "digits_auroc", "id_reject")
                                   if run["default"][k] is not None and runs[0]["default"][k] is not None})
    n = {split: len(xy[1]) for split, xy in splits.items()}
    return {"bench": "ood", "mode": "compare_oe",
            "model": (f"{profile} profile with overrides {overrides}, trained here by ml.train.fit (the train stage's "
                      f"fit, not the full pipeline) on {per_class} shared images per class: {n}"),
            "profile": profile, "overrides": overrides, "outlier_batch_ratio": hp.outlier_batch_ratio,
            "n_images": n, "runs": runs}


def pipeline_env(home: Path, class_target: int) -> dict[str, str]:
    """The product's default settings plus the outlier source, with a store and MLflow database of its own
    (as environment variables: the train stage runs in a fresh interpreter, as the DAG runs it)."""
    return {"VISIONLOOP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "VISIONLOOP_DATA_SOURCES": ",".join(f"folder:{DATASETS / n}" for n in ID_ARCHIVES),
            "VISIONLOOP_OUTLIER_SOURCES": ",".join(f"folder:{DATASETS / n}" for n in OUTLIERS),
            "VISIONLOOP_OOD_EVAL_ARCHIVE": "", "VISIONLOOP_EXPERIMENT": "bench-ood", "VISIONLOOP_MODEL_NAME": "bench-ood",
            "VISIONLOOP_CLASS_TARGET": str(class_target), "VISIONLOOP_IMAGENET_ENABLED": "false"}


def pipeline_runs(profile: str, weights: list[float], overrides: list[str], home: Path, class_target: int) -> dict:
    """One dataset snapshot, then the DAG's train task (a fresh interpreter) and evaluate stage once per OE
    weight; every run's detectors fitted by fit_ood's code (ml.ood.fitting.run) and scored here, digits included."""
    import os

    import mlflow

    from ml.stages.data import build as build_dataset
    from ml.stages.evaluate import evaluate
    from ml.stages.fresh_process import run_stage

    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(pipeline_env(home, class_target))
    settings = Settings.from_env()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        mlflow.create_experiment(settings.experiment, artifact_location=(home / "artifacts").as_uri())
    version = build_dataset(settings)["version"]
    digits, runs = digits_images(), []
    for weight in weights:
        sets = [arg for o in [*overrides, f"outlier_exposure_weight={weight}"] for arg in ("--set", o)]
        trained = run_stage("ml.stages.train", ["--dataset", version, "--profile", profile, *sets])
        tested = evaluate(settings, trained["run_id"])
        data, predictor, _ = data_from_run(settings, trained["run_id"])
        detectors, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
        add_digits(detectors, summary, data, predictor, digits)
        block = default_block(detectors[summary["default_detector"]], data, summary)
        run = {"outlier_exposure_weight": weight, "run_id": trained["run_id"],
               "val_accuracy": trained["val_accuracy"], "test_accuracy": tested["test_accuracy"],
               "train_seconds": trained["train_seconds"], "epochs_run": trained.get("epochs_run"),
               "default": _rounded(block), "sanity_vetoed": summary.get("sanity_vetoed"),
               "auroc_by_detector": {name: {s: round(m["auroc"], 4) for s, m in row["sets"].items()}
                                     for name, row in summary["detectors"].items()},
               "heldout_classes": summary["heldout_classes"]}
        log.info("pipeline run: %s", json.dumps(run))
        runs.append(run)
    return {"bench": "ood", "mode": "pipeline", "profile": profile, "overrides": overrides, "dataset_version": version,
            "model": f"{profile} profile: the DAG's train task (fresh interpreter) on snapshot {version} of the shared "
                     "archives with the outlier source; detectors fitted by the fit_ood stage's code",
            "default": runs[-1]["default"], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-id", default="")
    parser.add_argument("--train-profile", choices=("smoke", "standard"), default="",
                        help="no trained model: train one of this profile's size here (CPU)")
    parser.add_argument("--per-class", type=int, default=400, help="training images per class with --train-profile")
    parser.add_argument("--compare-oe", default="", metavar="W1,W2",
                        help="train the --train-profile model once per outlier-exposure weight (e.g. 0,0.5) and compare")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="HParams override for --compare-oe (e.g. max_minutes=4), repeatable")
    parser.add_argument("--pipeline", choices=("smoke", "standard"), default="",
                        help="train through the product's stages on the shared archives (with --compare-oe: "
                             "once per weight; default weight: the profile's)")
    parser.add_argument("--home", default=str(REPO / ".visionloop" / "bench-ood"), help="store and MLflow of --pipeline")
    parser.add_argument("--class-target", type=int, default=5000, help="images per class in --pipeline's snapshot")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(outlier_sources=tuple(f"folder:{DATASETS / n}" for n in OUTLIERS), ood_eval_archive="")
    start = time.perf_counter()
    if args.pipeline:
        from ml.hparams import get_profile, parse_overrides

        weights = [float(w) for w in args.compare_oe.split(",")] if args.compare_oe else [
            get_profile(args.pipeline).outlier_exposure_weight]
        parse_overrides(args.set)  # a typo fails here, not after the dataset build
        result = pipeline_runs(args.pipeline, weights, args.set, Path(args.home).absolute(), args.class_target)
        print(json.dumps({**result, "seconds": round(time.perf_counter() - start, 1)}))
        return
    if args.compare_oe:
        from ml.hparams import parse_overrides

        result = compare_oe(settings, args.train_profile or "smoke", parse_overrides(args.set),
                            [float(w) for w in args.compare_oe.split(",")], args.per_class)
        print(json.dumps({**result, "seconds": round(time.perf_counter() - start, 1)}))
        return
    run_id = args.run_id or (None if args.train_profile else champion_run(settings))
    if run_id:
        data, predictor, model = data_from_run(settings, run_id)
    elif args.train_profile:
        data, predictor, model = quick_model(settings, args.train_profile, args.per_class)
    else:
        print(json.dumps({"bench": "ood", "status": "no trained model: pass --run-id, register a champion, "
                          "or use --train-profile smoke"}))
        return
    detectors, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
    add_digits(detectors, summary, data, predictor, digits_images())
    block = default_block(detectors[summary["default_detector"]], data, summary)
    print(json.dumps(report(summary, block, model, time.perf_counter() - start)))


if __name__ == "__main__":
    main()
