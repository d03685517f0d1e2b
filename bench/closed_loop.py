"""Benchmark: what user corrections buy, measured through the product's own HTTP API and pipeline calls.

    .venv/bin/python bench/closed_loop.py [--profile standard] [--shifts dark,blur,jpeg10,colour_cast]
                                          [--corrections 100,300,1000] [--headline-corrections 1500] [--quick]
                                          [--new-source DIR]

Once: split the shared CIFAR-10 + superclass archives into disjoint pools
(bench/closed_loop_data.py), build the snapshot, train and register a champion
(train -> evaluate -> OOD -> reference -> gate, the training_pipeline's calls).
Per (shift, correction count) row, in a store and registered model of its own:
serve the champion with `bentoml serve` on 127.0.0.1, measure it on the clean
test split and on held-out shifted photos through POST /classify, stream N
shifted photos and correct each through POST /feedback, then run what the DAGs
run (drift_monitoring: `run_window` + `decide_retrain`; dataset_build:
`build_dataset`; training_pipeline: the five calls above), wait until the
running service serves the new champion, and measure again. Held-out photos
are never corrected nor trained on. The last stdout line is one JSON object:
the headline row (dark camera, 1,500 corrections) at the top level and every
row under `rows`. The new_source shift needs `--new-source DIR` (photos of the
classes from elsewhere, DIR/<class>/<file>); without it that row is reported as
skipped. `recovery` = (shifted_after - shifted_before) / (clean_before - shifted_before).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
from closed_loop_data import (  # noqa: E402
    NEW_SOURCE_MISSING,
    SHIFTS,
    encode,
    shifted,
    source_pools,
    split_archives,
)

HEADLINE = ("dark", 1500)
STARTED = time.strftime("%Y%m%dT%H%M%S")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="standard", choices=("smoke", "standard", "full"))
    parser.add_argument("--shifts", default="dark,blur,jpeg10,colour_cast,new_source")
    parser.add_argument("--corrections", default="100,300,1000")
    parser.add_argument("--headline-corrections", type=int, default=HEADLINE[1],
                        help="corrections of the headline dark-camera row (0 = no headline row)")
    parser.add_argument("--new-source", type=Path, metavar="DIR",
                        help="new_source shift: photos of the model's classes from another camera or site, "
                             "as DIR/<class>/<file> (any size); half streamed and corrected, half held out")
    parser.add_argument("--heldout", type=int, default=3000, help="held-out shifted photos measured per row")
    parser.add_argument("--clean", type=int, default=0, help="clean test images measured (0 = the whole split)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="hyperparameter of the retraining (e.g. init=champion, feedback_weight=5)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE[,FIELD=VALUE]",
                        help="run every row once more per variant, its retraining with these hyperparameters "
                             "on top of --set (e.g. finetune:init=champion); one base champion for all")
    parser.add_argument("--quick", action="store_true",
                        help="self-check: smoke profile, tiny data, dark camera (the new source with --new-source), "
                             "100 corrections")
    parser.add_argument("--home", default=str(REPO / ".visionloop" / "bench-closed-loop"))
    parser.add_argument("--reuse-base", action="store_true",
                        help="keep --home's base snapshot and champion (base.json) from an earlier run of "
                             "the same --profile; only the rows run")
    args = parser.parse_args()
    if args.quick:
        shift = "new_source" if args.new_source else "dark"
        args.profile, args.shifts, args.corrections, args.headline_corrections = "smoke", shift, "100", 0
        args.heldout, args.clean = 150, 200
    return args


def prepare_env(home: Path) -> None:
    """Caches and telemetry inside the bench home, before TF/MLflow/BentoML are imported."""
    for name, sub in (("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "mpl"), ("XDG_CACHE_HOME", "xdg"),
                      ("BENTOML_HOME", "bentoml")):
        os.environ.setdefault(name, str(home / "cache" / sub))
    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true",
                       "TF_CPP_MIN_LOG_LEVEL": "2"})


QUICK_PER_CLASS = 300
# --quick only: smoke models are noise, so the gate would reject or promote by chance; relaxed, the
# self-check always walks the promote -> hot-swap path. Real runs keep the product's gate.
QUICK_GATE = {"gate_epsilon": 1.0, "gate_max_recall_drop": 1.0, "gate_min_corrections_gain": -1.0,
              "gate_max_ood_auroc_drop": 1.0}


def base_settings(home: Path, images: Path, quick: bool):
    from dataclasses import fields

    from ml.config import Settings

    known = {f.name for f in fields(Settings)}
    gate = {k: v for k, v in QUICK_GATE.items() if k in known} if quick else {}
    return Settings.from_env(
        home=home / "base", data_sources=(f"folder:{images}", "feedback"), experiment="closed-loop-train",
        monitoring_experiment="closed-loop-monitoring", mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        model_name="closed-loop-base", class_target=QUICK_PER_CLASS if quick else 5000, imagenet_enabled=False,
        gate_min_accuracy=0.0, drift_min_window=50, retrain_cooldown_hours=0.0, **gate)


def experiments(settings, home: Path) -> None:
    """Keep MLflow artifacts in the bench home (not ./mlruns)."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    for name in (settings.experiment, settings.monitoring_experiment):
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=(home / "artifacts" / name).as_uri())


def train_pipeline(settings, version: str, profile: str, overrides: dict) -> dict:
    """training_pipeline's stages: train -> evaluate -> fit_ood -> build_bundle -> reference -> gate."""
    from ml.stages.chain import run_training

    result = run_training(settings, version, profile=profile, overrides=overrides)
    return {**result["gate"], "train": result}


class Service:
    """`bentoml serve` of one row's champion, and the user's side of its HTTP API."""

    def __init__(self, settings, log: Path):
        from tests.fixtures.serving import start_service

        env = {"VISIONLOOP_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
               "VISIONLOOP_MODEL_NAME": settings.model_name, "VISIONLOOP_ALIAS_POLL_SECONDS": "2",
               "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.5", "VISIONLOOP_IMAGENET_ENABLED": "false",
               "VISIONLOOP_FEEDBACK_RATE_PER_S": "10000", "VISIONLOOP_FEEDBACK_BURST": "100000",
               "VISIONLOOP_LOCAL_STORE": str(settings.store_dir)}
        self.server, self.url = start_service(env, log, timeout_s=600)
        import httpx

        self.http = httpx.Client(base_url=self.url, timeout=120)

    def classify(self, images: list[bytes]) -> list[dict]:
        def one(data: bytes) -> dict:
            answer = self.http.post("/classify", files={"image": ("photo.png", data, "application/octet-stream")})
            answer.raise_for_status()
            return answer.json()

        with ThreadPoolExecutor(4) as pool:  # a few users at once: the service batches them
            return list(pool.map(one, images))

    def accuracy(self, images: list[bytes], labels: list[str]) -> float:
        answers = self.classify(images)
        return sum(a["label"] == y for a, y in zip(answers, labels, strict=True)) / max(len(labels), 1)

    def correct(self, answers: list[dict], labels: list[str]) -> int:
        """POST /feedback with the true label for every answer; returns how many were wrong."""
        for answer, label in zip(answers, labels, strict=True):
            self.http.post("/feedback", json={"request_id": answer["request_id"], "label": label}).raise_for_status()
        return sum(a["label"] != y for a, y in zip(answers, labels, strict=True))

    def version(self) -> str:
        return str(self.http.get("/model_info").json()["model_version"])

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Poll until predicate() is true; returns the time it became true (time.time())."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def row_settings(base, home: Path, shift: str, n: int, variant: str):
    """A store and registered model of the row's own, starting from the base snapshot and champion."""
    name = f"{shift}-{n}-{variant}"
    # The MLflow database outlives rows/ under --reuse-base: a model name of this invocation's own.
    settings = base.with_(home=home / "rows" / name, model_name=f"closed-loop-{name}-{STARTED}", local_store=None)
    shutil.rmtree(settings.home, ignore_errors=True)
    shutil.copytree(base.store_dir / "datasets", settings.store_dir / "datasets")
    return settings


def clean_set(settings, version: str, limit: int) -> tuple[list[bytes], list[str]]:
    """The snapshot's clean test split as PNG uploads, with true labels."""
    from ml import layout
    from ml.storage import open_store

    store = open_store(settings)
    x = store.get_array(layout.dataset_array(version, "test", "x"))
    y = store.get_array(layout.dataset_array(version, "test", "y"))
    keep = np.random.default_rng(0).permutation(len(y))[:limit or None]  # a sample of every class
    return [encode(x[i]) for i in keep], [settings.classes[int(y[i])] for i in keep]


def run_row(base, home: Path, run_id: str, version: str, row: tuple[str, int, str, dict], pools: dict,
            args) -> dict:
    """One closed loop: serve v1, measure, correct n, monitor, rebuild, retrain, gate, wait for the swap, measure."""
    from ml import layout
    from ml.stages.data import build as build_dataset
    from ml.stages.drift import decide_retrain, run_window
    from ml.stages.gate import gate
    from ml.storage import open_store

    shift, n, variant, overrides = row
    settings = row_settings(base, home, shift, n, variant)
    gate(settings, run_id)  # the base run is this row's first champion
    photos = pools.get(shift, pools["cifar"])  # the new source has its own photos; the shifts alter CIFAR's
    stream = [(shifted(data, shift, seed=i), label) for i, (data, label) in enumerate(photos["stream"][:n])]
    heldout = ([shifted(data, shift, seed=10**6 + i) for i, (data, _) in enumerate(photos["heldout"])],
               [label for _, label in photos["heldout"]])
    clean = clean_set(settings, version, args.clean)
    service = Service(settings, settings.home / "serve.log")
    try:
        v1 = service.version()
        before = {"clean": service.accuracy(*clean), "shifted": service.accuracy(*heldout)}
        answers = service.classify([data for data, _ in stream])
        wrong = service.correct(answers, [label for _, label in stream])
        store = open_store(settings)
        wait_for(lambda: sum(layout.is_feedback_record(k) for k in store.list(layout.FEEDBACK)) >= n, 120,
                 "the corrections in the object store")
        triggered = time.time()
        window = run_window(settings)
        decision = decide_retrain(settings, window)
        dataset = build_dataset(settings)
        gate = train_pipeline(settings, dataset["version"], args.profile, overrides)
        served = wait_for(lambda: service.version() == str(gate["version"]), 300,
                          f"serving v{gate['version']}") if gate["promoted"] else None
        after = {"clean": service.accuracy(*clean), "shifted": service.accuracy(*heldout)}
    finally:
        service.stop()
    gap = before["clean"] - before["shifted"]
    return {"shift": shift, "corrections": n, "variant": variant, "retrain_overrides": overrides,
            "corrections_wrong": wrong, "profile": args.profile,
            "clean_before": round(before["clean"], 4), "shifted_before": round(before["shifted"], 4),
            "shifted_after": round(after["shifted"], 4), "clean_after": round(after["clean"], 4),
            "recovery": round((after["shifted"] - before["shifted"]) / gap, 4) if gap > 0 else None,
            "promoted": bool(gate["promoted"]), "gate_reasons": gate.get("reasons"),
            "minutes_trigger_to_serving": round((served - triggered) / 60, 2) if served else None,
            "champion_before": v1, "candidate": str(gate["version"]), "init_used": gate["train"]["init_used"],
            "drift_verdict": window["verdict"], "retrain_decided": decision["retrain"],
            "retrain_reason": decision["reason"], "dataset_version": dataset["version"],
            "n_heldout": len(heldout[1]), "n_clean": len(clean[1])}


def parse_variants(args) -> list[tuple[str, dict]]:
    """(name, retraining overrides): `default` (--set alone) unless --variant names others."""
    from ml.hparams import parse_overrides

    common = parse_overrides(args.set)
    variants = []
    for spec in args.variant or ["default:"]:
        name, sep, pairs = spec.partition(":")
        if not sep or not name:
            sys.exit(f"--variant {spec}: expected NAME:FIELD=VALUE[,FIELD=VALUE]")
        variants.append((name, {**common, **parse_overrides([p for p in pairs.split(",") if p])}))
    return variants


def train_base(base, home: Path, profile: str) -> dict:
    """The base snapshot and its champion, recorded in <home>/base.json for --reuse-base."""
    from ml.stages.data import build as build_dataset

    experiments(base, home)
    version = build_dataset(base)["version"]
    result = train_pipeline(base, version, profile, {})
    first = {"champion_run": result["run_id"], "dataset_version": version, "profile": profile,
             "val_accuracy": result["train"]["val_accuracy"]}
    (home / "base.json").write_text(json.dumps(first))
    print(json.dumps(first), flush=True)
    return first


def plan_rows(args) -> list[tuple[str, int, str, dict]]:
    shifts = [s.strip() for s in args.shifts.split(",") if s.strip()]
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        sys.exit(f"unknown shift(s) {', '.join(unknown)}; choose from {', '.join(SHIFTS)}")
    rows = [(s, int(n)) for s in shifts for n in args.corrections.split(",") if n.strip()]
    if args.headline_corrections and HEADLINE[0] in shifts:
        rows.insert(0, (HEADLINE[0], args.headline_corrections))
    return [(s, n, name, overrides) for s, n in rows for name, overrides in parse_variants(args)]


def main() -> None:
    args = parse_args()
    home = Path(args.home).absolute()
    started = time.time()
    reuse = args.reuse_base and (home / "base.json").is_file()
    if args.reuse_base and not reuse:
        sys.exit(f"--reuse-base: no {home / 'base.json'}; run once without it")
    shutil.rmtree(home / "rows" if reuse else home, ignore_errors=True)
    prepare_env(home)
    rows_wanted = plan_rows(args)
    unavailable = {} if args.new_source else {"new_source": NEW_SOURCE_MISSING}
    stream, heldout = split_archives(SHARED / "cifar10_train_jpg.tar.gz", SHARED / "extra_superclasses_train.tar.gz",
                                     home / "images", train_per_class=QUICK_PER_CLASS if args.quick else 10**9)
    base = base_settings(home, home / "images", args.quick)
    pools = {"cifar": {"stream": stream, "heldout": heldout[:args.heldout]}}
    if args.new_source:
        try:
            stream, heldout = source_pools(args.new_source, list(base.classes))
        except ValueError as error:
            sys.exit(str(error))
        pools["new_source"] = {"stream": stream, "heldout": heldout[:args.heldout]}
    for shift, n, _, _ in rows_wanted:
        have = len(pools.get(shift, pools["cifar"])["stream"])
        if shift not in unavailable and have < n:
            sys.exit(f"{shift}: only {have} stream photos for {n} corrections")
    first = json.loads((home / "base.json").read_text()) if reuse else train_base(base, home, args.profile)
    if first["profile"] != args.profile:
        sys.exit(f"--reuse-base: the base champion was trained with --profile {first['profile']}")
    version = first["dataset_version"]
    rows = []
    for row in rows_wanted:
        shift, n, variant, _ = row
        if shift in unavailable:
            rows.append({"shift": shift, "corrections": n, "variant": variant, "skipped": unavailable[shift]})
        else:
            rows.append(run_row(base, home, first["champion_run"], version, row, pools, args))
        print(json.dumps(rows[-1]), flush=True)
    headline = next((r for r in rows if "skipped" not in r), {})
    keys = ("recovery", "clean_before", "shifted_before", "shifted_after", "clean_after", "promoted",
            "minutes_trigger_to_serving", "shift", "corrections", "variant", "retrain_overrides", "profile")
    print(json.dumps({**{k: headline.get(k) for k in keys}, "quick": args.quick,
                      "gate": "relaxed for --quick (smoke models are noise)" if args.quick else "the product's",
                      "champion_val_accuracy": round(first["val_accuracy"], 4), "base_reused": reuse,
                      "bench_minutes": round((time.time() - started) / 60, 1), "cpus": len(os.sched_getaffinity(0)),
                      "rows": rows}))


if __name__ == "__main__":
    main()
