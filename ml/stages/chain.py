"""The training stages in DAG order, for the CLI, the Makefile and benchmarks: what `training_pipeline` runs.

train -> evaluate -> fit_ood -> build_bundle -> reference -> gate, each stage reading what
the one before logged to the MLflow run; `register=False` stops before the gate.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ml.config import Settings

log = logging.getLogger(__name__)


def run_training(settings: Settings, dataset_version: str | None = None, profile: str | None = None,
                 overrides: dict[str, Any] | None = None, register: bool = True,
                 arch: str | None = None) -> dict[str, Any]:
    """Train on a snapshot (default: the newest) and run every later stage on the run; a summary dict.

    Returns run_id, dataset_version, val_accuracy, test_accuracy, the OOD default detector and
    held-out AUROC, and `gate` (the gate's decision, or None with register=False).
    """
    from ml.stages import build_bundle, evaluate, fit_ood, gate, reference, train

    version = dataset_version or train.newest_dataset(settings)
    log.info("stage train: dataset %s, profile %s", version, profile or settings.profile)
    trained = train.train(settings, version, profile=profile, arch=arch, overrides=overrides)
    run_id = trained["run_id"]
    results: dict[str, Any] = {}
    for name, stage in (("evaluate", evaluate.evaluate), ("fit_ood", fit_ood.fit_ood),
                        ("build_bundle", build_bundle.build_bundle), ("reference", reference.reference)):
        start = time.perf_counter()
        log.info("stage %s: run %s", name, run_id)
        results[name] = stage(settings, run_id)
        log.info("stage %s done in %.1f s", name, time.perf_counter() - start)
    decision = None
    if register:
        log.info("stage gate: run %s", run_id)
        decision = gate.gate(settings, run_id)
    else:
        log.info("stage gate skipped (register=False): run %s is not registered", run_id)
    return {"run_id": run_id, "dataset_version": version, "arch": trained["arch"], "profile": trained["profile"],
            "val_accuracy": trained["val_accuracy"], "train_seconds": trained["train_seconds"],
            "init_used": trained["init_used"], "test_accuracy": results["evaluate"]["test_accuracy"],
            "ood_default_detector": results["fit_ood"]["default_detector"],
            "ood_heldout_auroc": results["fit_ood"]["heldout_auroc"], "gate": decision}
