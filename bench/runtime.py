"""CPU runtime benchmark: TensorFlow vs OpenVINO f32 vs OpenVINO bf16, in one run.

    python bench/runtime.py --run-id RUN   # a trained run's model, its val split, the shared outliers
    python bench/runtime.py --smoke        # self-check: a smoke-sized airnet trained here (weak!)

Per runtime: ms/image at batch 1, 16, 32, 64 (median and best call over interleaved rounds;
TensorFlow's `Predictor` is the baseline), parity against TensorFlow (label agreement, max
probability difference) on the val and outlier images, val accuracy and the max-softmax OOD AUROC (val vs ../shared ood_dev*).
The acceptance rule: f32 gives the same labels on >= 99.9 % of images with max |prob diff| <= 2e-3;
reduced precision (bf16) is judged by its cost instead: val accuracy and OOD AUROC within 0.2 points of
float32 (needs a `standard` model: run with --run-id); its parity numbers are reported. `--smoke` also times an UNTRAINED standard-width airnet for
speed only. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ml.config import Settings  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
BATCHES = (1, 16, 32, 64)
# (label, precision, performance hint); None = the TensorFlow baseline
RUNTIMES = (("tensorflow", None, None), ("openvino_f32", "f32", "LATENCY"), ("openvino_bf16", "bf16", "LATENCY"),
            ("openvino_f32_throughput", "f32", "THROUGHPUT"), ("openvino_bf16_throughput", "bf16", "THROUGHPUT"))
log = logging.getLogger("bench.runtime")


def call_seconds(predictor, x: np.ndarray, calls: int) -> list[float]:
    """Wall time of each of `calls` predict calls on `x`."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor.predict(x)
        times.append(time.perf_counter() - start)
    return times


def ms_per_image(runtimes: dict, images: np.ndarray, batch: int, rounds: int) -> dict:
    """ms/image per runtime at one batch size: rounds interleave runtimes so shared-CPU noise hits all alike."""
    x = images[:batch]
    calls = max(2, 32 // batch)
    for p in runtimes.values():
        call_seconds(p, x, 2)  # warm-up (first-call compilation and allocation)
    times: dict[str, list[float]] = {label: [] for label in runtimes}
    for _ in range(rounds):
        for label, p in runtimes.items():
            times[label] += call_seconds(p, x, calls)
    return {label: {"median": round(1000 * float(np.median(t)) / batch, 3),
                    "best": round(1000 * float(np.min(t)) / batch, 3)} for label, t in times.items()}


def read_images(path: Path, limit: int | None = None) -> np.ndarray:
    """Every image file in an archive (or its first `limit`), decoded like uploads to 32x32 uint8."""
    import tarfile

    from ml.data.decode import decode_chunk

    payloads = []
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and not member.name.endswith((".txt", ".md", ".json")):
                payloads.append(tar.extractfile(member).read())
                if limit and len(payloads) >= limit:
                    break
    return decode_chunk(payloads)[0]


def run_data(settings: Settings, run_id: str):
    """The run's Keras model and its snapshot's val split."""
    from ml.stages import snapshots, tracking

    version = tracking.dataset_version_of_run(settings, run_id)
    x_val, y_val = snapshots.split(settings, version, "val")
    return tracking.load_run_model(settings, run_id), x_val, y_val, f"run {run_id} (dataset {version})"


def smoke_data(settings: Settings, per_class: int):
    """A smoke-profile airnet trained here on the shared archives, and its held-out eighth as val."""
    import keras

    sys.path.insert(0, str(REPO / "bench"))
    from ood import shared_splits  # bench/ood.py: the shared archives, shuffled into val/test/train

    from ml.hparams import get_profile
    from ml.model import build_model

    hp = get_profile("smoke")
    splits = shared_splits(settings, per_class)
    x_val, y_val = splits["val"]
    x_tr = np.concatenate([splits["test"][0], splits["train"][0]])  # no test set here: train on it too
    y_tr = np.concatenate([splits["test"][1], splits["train"][1]])
    keras.utils.set_random_seed(settings.seed)
    model = build_model("airnet", len(settings.classes), width=hp.width)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(np.concatenate([x_tr, x_tr[:, :, ::-1]]), np.concatenate([y_tr, y_tr]), batch_size=128,
              epochs=hp.epochs, verbose=0)
    return model, x_val, y_val, (f"SMOKE-SIZED model trained here (width {hp.width}, {hp.epochs} epochs, "
                                         f"{len(y_tr)} train images): not a standard model")


def load_runtimes(predictor, directory: Path) -> dict:
    """The TensorFlow Predictor and each OpenVINO configuration compiled from one export."""
    from ml.runtime import OpenVINOPredictor

    out = {}
    for label, precision, hint in RUNTIMES:
        out[label] = predictor if precision is None else OpenVINOPredictor.load(directory, precision, hint=hint)
    return out


def speed(runtimes: dict, images: np.ndarray, rounds: int) -> dict:
    """ms/image (median and best call) per runtime and batch size, and speed-ups over TensorFlow (medians)."""
    by_batch = {b: ms_per_image(runtimes, images, b, rounds) for b in BATCHES}
    table = {label: {str(b): by_batch[b][label] for b in BATCHES} for label in runtimes}
    base = table["tensorflow"]
    speedup = {label: {b: round(base[b]["median"] / ms["median"], 2) for b, ms in row.items()}
               for label, row in table.items() if label != "tensorflow"}
    return {"ms_per_image": table, "speedup_vs_tensorflow": speedup}


def quality(runtimes: dict, x_val: np.ndarray, y_val: np.ndarray, x_ood: np.ndarray) -> dict:
    """Val accuracy, max-softmax OOD AUROC and parity with TensorFlow, per runtime (precisions only)."""
    from sklearn.metrics import roc_auc_score

    from ml.runtime import meets_parity, parity

    tf_pred = runtimes["tensorflow"]
    out = {}
    for label in ("tensorflow", "openvino_f32", "openvino_bf16"):
        p = runtimes[label]
        val, ood = p.predict_batched(x_val, 256).probs, p.predict_batched(x_ood, 256).probs
        scores = np.concatenate([val.max(1), ood.max(1)])  # higher = more in-distribution
        row = {"val_accuracy": round(float((val.argmax(1) == y_val).mean()), 5),
               "ood_msp_auroc": round(float(roc_auc_score(np.r_[np.ones(len(val)), np.zeros(len(ood))], scores)), 5)}
        if label != "tensorflow":
            both = parity(tf_pred, p, np.concatenate([x_val, x_ood]))
            row |= {"parity": both, "meets_parity": meets_parity(both)}
        out[label] = row
    bf16, f32 = out["openvino_bf16"], out["openvino_f32"]
    bf16["accuracy_points_vs_f32"] = round(100 * (bf16["val_accuracy"] - f32["val_accuracy"]), 3)
    bf16["auroc_points_vs_f32"] = round(100 * (bf16["ood_msp_auroc"] - f32["ood_msp_auroc"]), 3)
    bf16["effective_precision"] = runtimes["openvino_bf16"].effective_precision
    out["recommended_precision"] = recommend(bf16, f32)
    return out


def recommend(bf16: dict, f32: dict) -> str:
    """The product's rule (ml.runtime.choose_precision) on this bench's numbers: bf16 only with val accuracy
    and OOD AUROC (here max-softmax on the shared outliers) within 0.2 points of f32; parity is reported."""
    from ml.runtime import choose_precision

    checks = {"f32": {"accuracy": f32["val_accuracy"], "ood_auroc": f32["ood_msp_auroc"]},
              "bf16": {"accuracy": bf16["val_accuracy"], "ood_auroc": bf16["ood_msp_auroc"],
                       "effective_precision": bf16["effective_precision"]}}
    return choose_precision(checks)[0]


def bench_model(model, x_val, y_val, x_ood, rounds: int, with_quality: bool = True) -> dict:
    """Export once (timed), then speed and (optionally) quality for every runtime."""
    from ml.inference import Predictor
    from ml.runtime import export_openvino

    predictor = Predictor(model)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        meta = export_openvino(predictor, tmp)
        export_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        runtimes = load_runtimes(predictor, Path(tmp))
        result = {"export_seconds": round(export_s, 2), "export_bytes": size, "tta": meta["tta"],
                  "params": int(model.count_params())}
        result |= speed(runtimes, np.concatenate([x_val, x_ood])[:max(BATCHES)], rounds)
        if with_quality:
            result["quality"] = quality(runtimes, x_val, y_val, x_ood)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help="an MLflow run whose logged model to measure")
    source.add_argument("--smoke", action="store_true", help="train a smoke-sized airnet here first")
    parser.add_argument("--per-class", type=int, default=150, help="--smoke: train+val images per class")
    parser.add_argument("--ood-limit", type=int, default=1000, help="outlier images per ood_dev archive")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per batch size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    x_ood = np.concatenate([read_images(DATASETS / name, args.ood_limit) for name in ("ood_dev.tar.gz",
                                                                                    "ood_dev2.tar.gz")])
    model, x_val, y_val, label = (run_data(settings, args.run_id) if args.run_id
                                  else smoke_data(settings, args.per_class))
    log.info("model: %s; %d val and %d outlier images", label, len(y_val), len(x_ood))
    report = {"bench": "runtime", "model": label, "n_val": int(len(y_val)), "n_ood": int(len(x_ood)),
              "cpu_threads": _cpu_count(), "result": bench_model(model, x_val, y_val, x_ood, args.rounds)}
    if args.smoke:
        from ml.hparams import get_profile
        from ml.model import build_model

        untrained = build_model("airnet", len(settings.classes), width=get_profile("standard").width)
        report["untrained_standard_width_speed_only"] = bench_model(untrained, x_val, y_val, x_ood, args.rounds,
                                                                    with_quality=False)
    print(json.dumps(report))


def _cpu_count() -> int:
    """CPUs this process may run on."""
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
