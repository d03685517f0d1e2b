"""OOD benchmark: every detector's AUROC, FPR@95TPR and ID reject rate, validation images vs ood_dev.

    python bench/ood.py [--run-id RUN] [--archive ../shared/datasets/ood_dev.tar.gz]
    python bench/ood.py --quick-train   # no trained model yet: train a small CPU model on the shared images

Without --run-id the registered champion is used. 30 % of the archive's classes (whole wnids) train
the 'other' class and are kept out of its evaluation. The JSON summary is the last line.
Target: AUROC >= 0.92 with ID reject rate <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ml.config import Settings  # noqa: E402
from ml.ood import fitting  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
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


def data_from_run(settings: Settings, run_id: str) -> tuple[fitting.OODData, str]:
    """The pipeline's own features: the run's model on its snapshot, plus the archive's OOD images."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml.inference import Predictor
    from ml.model import load_run_model
    from ml.ood.pipeline import build_data
    from ml.storage import open_store

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    version = MlflowClient(settings.mlflow_tracking_uri).get_run(run_id).data.params["dataset_version"]
    data, _ = build_data(settings, open_store(settings), version, Predictor(load_run_model(run_id)))
    return data, f"run {run_id} (dataset {version})"


def read_archive(path: Path, per_class: int, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first per_class images of each class folder in a train/<class>/... archive, as 32x32 uint8."""
    import tarfile

    from ml.imaging import decode_image, to_model_input

    counts: dict[str, int] = {}
    xs, ys = [], []
    with tarfile.open(path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-2] not in classes:
                continue
            if counts.get(parts[-2], 0) >= per_class:
                continue
            counts[parts[-2]] = counts.get(parts[-2], 0) + 1
            xs.append(to_model_input(decode_image(tar.extractfile(member).read())))
            ys.append(classes.index(parts[-2]))
    return np.stack(xs), np.array(ys)


def quick_model(settings: Settings, per_class: int, epochs: int) -> tuple[fitting.OODData, str]:
    """Train a small airnet on the shared images (CPU, minutes) and build the OOD data from it."""
    import keras

    from ml.inference import Predictor
    from ml.model import build_model
    from ml.ood.pipeline import _features, outlier_sets, synthetic_ood

    classes = settings.classes
    parts = [read_archive(DATASETS / name, per_class, classes)
             for name in ("cifar10_train_jpg.tar.gz", "extra_superclasses_train.tar.gz")]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.random.default_rng(settings.seed).permutation(len(y))
    x, y = x[order], y[order]
    n_val = len(y) // 8
    x_val, y_val, x_test = x[:n_val], y[:n_val], x[n_val:2 * n_val]
    x_tr, y_tr = x[2 * n_val:], y[2 * n_val:]
    model = build_model("airnet", len(classes), width=32)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    flipped = np.concatenate([x_tr, x_tr[:, :, ::-1]])  # mirror augmentation, computed once
    model.fit(flipped, np.concatenate([y_tr, y_tr]), batch_size=128, epochs=epochs, verbose=2,
              validation_data=(x_val, y_val))
    predictor = Predictor(model)
    val = _features(predictor, x_val)
    accuracy = float((val.predicted == y_val).mean())
    sets, outlier_train = outlier_sets(settings, predictor)
    sets["synthetic_noise"] = _features(predictor, synthetic_ood(x_val, settings.seed))
    data = fitting.OODData(_features(predictor, x_tr), y_tr, val, _features(predictor, x_test), sets, outlier_train)
    return data, f"quick CPU airnet width 32, {len(y_tr)} train images, {epochs} epochs, val accuracy {accuracy:.3f}"


def save_data(data: fitting.OODData, model: str, path: Path) -> None:
    """Every feature array in one npz, so detectors can be re-evaluated without the model."""
    arrays = {"model": np.array(model), "train_labels": data.train_labels}
    parts = {"train": data.train, "val": data.val, "test": data.test, "outlier_train": data.outlier_train}
    parts.update({f"set_{name}": feats for name, feats in data.ood_sets.items()})
    for key, feats in parts.items():
        if feats is not None:
            for field in ("embeddings", "logits", "probs", "pixels"):
                arrays[f"{key}.{field}"] = getattr(feats, field)
    np.savez(path, **arrays)


def load_data(path: Path) -> tuple[fitting.OODData, str]:
    from ml.ood import OODFeatures

    with np.load(path) as stored:
        def part(key: str):
            if f"{key}.embeddings" not in stored:
                return None
            return OODFeatures(*(stored[f"{key}.{f}"] for f in ("embeddings", "logits", "probs", "pixels")))

        names = sorted({k.split(".")[0][4:] for k in stored.files if k.startswith("set_")},
                       key=lambda n: (n == "synthetic_noise", n))
        data = fitting.OODData(part("train"), stored["train_labels"], part("val"), part("test"),
                               {n: part(f"set_{n}") for n in names}, part("outlier_train"))
        return data, str(stored["model"])


def report(summary: dict, model: str, archive: str, seconds: float) -> dict:
    """Print the table and return the JSON summary line's content."""
    from ml.ood.evaluate import markdown_table

    print(markdown_table(summary["detectors"], summary["default_detector"]))
    rows = {name: {"auroc": round(r["auroc"], 4), "fpr95": round(r["fpr_at_95_tpr"], 4),
                   "id_reject": round(r["id_reject_rate"], 4), "fit_s": r["fit_seconds"],
                   "sets": {s: round(m["auroc"], 4) for s, m in r["sets"].items()}}
            for name, r in summary["detectors"].items()}
    best = rows[summary["default_detector"]]
    return {"bench": "ood", "model": model, "archive": archive, "primary_set": summary["primary_ood_set"],
            "default_detector": summary["default_detector"], "detectors": rows,
            "target": {"auroc": 0.92, "id_reject": 0.05},
            "meets_target": best["auroc"] >= 0.92 and best["id_reject"] <= 0.05, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-id", default="")
    parser.add_argument("--archive", default=str(DATASETS / "ood_dev.tar.gz"))
    parser.add_argument("--quick-train", action="store_true", help="train a small model here when none exists")
    parser.add_argument("--per-class", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--features", type=Path, help="cache: reuse this npz of features, or write it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(ood_eval_archive=args.archive)
    start = time.perf_counter()
    run_id = args.run_id or (None if args.quick_train or args.features else champion_run(settings))
    if args.features and args.features.is_file():
        data, model = load_data(args.features)
    elif run_id:
        data, model = data_from_run(settings, run_id)
    elif args.quick_train:
        data, model = quick_model(settings, args.per_class, args.epochs)
    else:
        print(json.dumps({"bench": "ood", "status": "no trained model: pass --run-id, register a champion, "
                          "or use --quick-train"}))
        return
    if args.features and not args.features.is_file():
        save_data(data, model, args.features)
    _, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
    print(json.dumps(report(summary, model, args.archive, time.perf_counter() - start)))


if __name__ == "__main__":
    main()
