"""Benchmark: seed_cnn against the default arch on the real 13-class snapshot, side by side.

Run from the repo root on a quiet machine (never in `make test`):

    .venv/bin/python bench/train.py [--profile standard] [--minutes 20] [--archs seed_cnn,airnet]
    .venv/bin/python bench/train.py --in-platform [--rounds 2] [--per-class 300]

`--in-platform` trains the profile on a `--per-class` snapshot alone and through the
platform's `training_pipeline` (bench/train_platform.py) and prints
{"standalone_images_per_s", "in_platform_images_per_s", "ratio", ...} last.

Builds (or reuses) the snapshot from ../shared/datasets with `ml.data.build`
in a bench home (.visionloop/bench), trains each arch through
`ml.stages.train.train` against a local SQLite MLflow store, and prints one JSON
line last: {"results": [{"arch", "profile", "val_accuracy", "train_seconds",
"images_per_s", "flops_per_image", "gflops_per_s", ...}], ...}. Training FLOPs
are counted as 3x the forward FLOPs (forward + two backward matmuls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
ARCHIVES = ("cifar10_train_jpg.tar.gz", "extra_superclasses_train.tar.gz")
PEAK_GFLOPS = 520.0  # two-core FP32 AVX-512 peak of the reference machine


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="standard", choices=("smoke", "standard", "full"))
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock cap per arch (0 = none)")
    parser.add_argument("--archs", default="seed_cnn,airnet")
    parser.add_argument("--epochs", type=int, default=0, help="override the profile's epochs (0 = keep)")
    parser.add_argument("--limit", type=int, default=0, help="use only N training images (quick checks)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a training hyperparameter (ml.hparams.HParams field), repeatable")
    parser.add_argument("--home", default=str(REPO / ".visionloop" / "bench"))
    parser.add_argument("--in-platform", action="store_true",
                        help="train alone and through the platform's Airflow task, side by side (bench/train_platform.py)")
    parser.add_argument("--rounds", type=int, default=2, help="--in-platform: rounds of (alone, platform), order alternating")
    parser.add_argument("--per-class", type=int, default=300, help="--in-platform: snapshot images per class")
    parser.add_argument("--modes", default="alone,platform", help="--in-platform: which sides to run (debugging)")
    parser.add_argument("--no-serving", action="store_true", help="--in-platform: do not start `bentoml serve`")
    return parser.parse_args()


def prepare_env(home: Path) -> None:
    """Caches and telemetry inside the bench home, before TF/MLflow/matplotlib are imported."""
    cache = home / "cache"
    for name, sub in (("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "mpl"), ("XDG_CACHE_HOME", "xdg")):
        os.environ.setdefault(name, str(cache / sub))
    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))


def snapshot_version(settings) -> str:
    """Build the 13-class snapshot from the shared archives, or reuse it when the inputs are unchanged."""
    from ml.stages.data import build as build_dataset

    started = time.perf_counter()
    result = build_dataset(settings)
    print(f"snapshot {result['version']} ({'reused' if result.get('reused') else 'built'}) "
          f"in {time.perf_counter() - started:.0f} s: {result.get('counts')}", flush=True)
    return result["version"]


def bench_arch(settings, version: str, arch: str, args: argparse.Namespace) -> dict:
    from ml.hparams import get_profile, parse_overrides
    from ml.stages.train import train

    try:
        overrides = {"max_minutes": args.minutes, "max_train_images": args.limit, **parse_overrides(args.set)}
    except ValueError as exc:
        sys.exit(str(exc))
    if args.epochs:
        overrides["epochs"] = args.epochs
    result = train(settings, version, profile=args.profile, arch=arch, overrides=overrides)
    flops = flops_of(arch, len(settings.classes), get_profile(args.profile, arch).with_(**overrides).width)
    gflops = 3 * flops * result["images_per_s"] / 1e9
    return {"arch": arch, "profile": args.profile, "val_accuracy": round(result["val_accuracy"], 4),
            "train_seconds": round(result["train_seconds"], 1), "epochs_run": result["epochs_run"],
            "images_per_s": round(result["images_per_s"], 1), "flops_per_image": flops,
            "gflops_per_s": round(gflops, 1), "peak_fraction": round(gflops / PEAK_GFLOPS, 3),
            "run_id": result["run_id"]}


def flops_of(arch: str, n_classes: int, width: int) -> int:
    from ml.model import build_model, flops_per_image

    return flops_per_image(build_model(arch, n_classes, width=width))


def bench_experiment(settings, home: Path) -> None:
    """Keep the bench's MLflow artifacts in the bench home (not ./mlruns)."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        mlflow.create_experiment(settings.experiment, artifact_location=(home / "artifacts").as_uri())


def in_platform(args: argparse.Namespace, home: Path) -> None:
    """Alone vs through `training_pipeline`'s train task, same snapshot and profile; ratio last."""
    sys.path.insert(0, str(REPO / "bench"))
    from train_platform import compare

    if args.epochs or args.limit or args.set or args.archs != "seed_cnn,airnet":
        sys.exit("--in-platform trains what the DAG trains: the profile only (no --epochs/--limit/--set/--archs)")
    result = compare(home / "in-platform", tuple(SHARED / a for a in ARCHIVES), args.per_class, args.profile, args.rounds,
                     serving=not args.no_serving, modes=tuple(args.modes.split(",")))
    print(json.dumps(result))


def main() -> None:
    args = parse_args()
    home = Path(args.home).absolute()
    prepare_env(home)
    missing = [a for a in ARCHIVES if not (SHARED / a).is_file()]
    if missing:
        sys.exit(f"missing {', '.join(missing)} under {SHARED}")
    if args.in_platform:
        in_platform(args, home)
        return
    from ml.config import Settings

    settings = Settings.from_env(
        home=home, data_sources=tuple(f"folder:{SHARED / a}" for a in ARCHIVES),
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", experiment="visionloop-bench")
    bench_experiment(settings, home)
    version = snapshot_version(settings)
    results = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        results.append(bench_arch(settings, version, arch, args))
        print(json.dumps(results[-1]), flush=True)
    import tensorflow as tf

    print(json.dumps({"results": results, "dataset_version": version, "minutes_cap": args.minutes,
                      "cpus": len(os.sched_getaffinity(0)), "tensorflow": tf.__version__,
                      "peak_gflops": PEAK_GFLOPS}))


if __name__ == "__main__":
    main()
