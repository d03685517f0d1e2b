"""The whole loop on tiny data, with real parts: MLflow server, Airflow dag.test(), the service in-process.

serve the champion -> log requests -> users correct labels -> drift_monitoring asks for a
retraining -> dataset_build takes the corrections in (half held out as the `corrections`
split) -> training_pipeline registers a candidate that is better on the held-out
corrections and not worse on clean -> promoted, and the running service swaps to it
without a restart. Then a worse candidate is rejected and the champion keeps serving.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml import layout
from ml.config import Settings
from ml.storage import open_store
from tests.fixtures.airflow import load_dag
from tests.fixtures.data import class_images
from tests.fixtures.pipeline import run_pipeline
from tests.fixtures.serving import forget_service_metrics, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CORRECTIONS = 30  # noise images the champion misreads; about half are held out for the gate


def write_image_folder(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    """A `<class>/<image>.png` folder source of the same learnable patterns as the tiny snapshot."""
    rng = np.random.default_rng(7)
    for class_id, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, pixels in enumerate(class_images(class_id, per_class, rng, len(classes))):
            Image.fromarray(pixels).resize((48, 40)).save(root / name / f"{i}.png")
    return root


def task_states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture
def loop_settings(mlflow_server, airflow_db, tmp_path, monkeypatch) -> Settings:
    """Every component (DAG tasks, service) reads the same environment, as on a real deployment."""
    folder = write_image_folder(tmp_path / "images", Settings.from_env(env={}).classes, per_class=40)
    env = {
        "VISIONLOOP_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": mlflow_server,
        "VISIONLOOP_MODEL_NAME": "loop-model", "VISIONLOOP_EXPERIMENT": "loop-training",
        "VISIONLOOP_MONITORING_EXPERIMENT": "loop-monitoring", "VISIONLOOP_PROFILE": "smoke",
        "VISIONLOOP_DATA_SOURCES": f"folder:{folder},feedback", "VISIONLOOP_CLASS_TARGET": "40",
        "VISIONLOOP_CORRECTIONS_HOLDOUT": "0.5",
        # ~52 clean test images and 3-epoch width-8 smoke models: two trainings on the same data
        # were seen 0.84 and 0.41 apart, and 4 test images per class make recall noise too. The
        # corrections rule decides here; clean only has to stop a model that learned nothing.
        "VISIONLOOP_GATE_MIN_ACCURACY": "0", "VISIONLOOP_GATE_EPSILON": "0.5",
        "VISIONLOOP_GATE_MAX_RECALL_DROP": "1", "VISIONLOOP_RETRAIN_MIN_FEEDBACK": str(CORRECTIONS),
        # The corrections here are noise images all given one label: seen 3x per epoch (the default)
        # they pull a 3-epoch smoke model's clean accuracy down by 0.3 in some runs. Once is enough
        # for the corrections rule to see them learned.
        "VISIONLOOP_FEEDBACK_WEIGHT": "1",
        # The product fine-tunes the champion by default (chosen on the standard profile); a smoke
        # model fine-tuned for 2 epochs at a fifth of the rate learns none of the 30 noise corrections
        # (seen 0/17 on the held-out ones), so this plumbing test retrains from scratch, as it was sized for.
        "VISIONLOOP_TRAIN_INIT": "scratch",
        "VISIONLOOP_DRIFT_MIN_WINDOW": "10", "VISIONLOOP_ALIAS_POLL_SECONDS": "1",
        "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.2", "VISIONLOOP_IMAGENET_ENABLED": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_corrections_retrain_and_the_service_swaps_to_the_new_champion(loop_settings):
    from starlette.testclient import TestClient

    from ml.stages.data import build as build_dataset
    from ml.stages.tracking import champion_version

    settings, store = loop_settings, open_store(loop_settings)
    first = build_dataset(settings)["version"]
    run_pipeline(settings, first)
    v1 = champion_version(settings)
    assert v1 is not None

    from serving.service import VisionLoop

    try:
        with TestClient(VisionLoop.to_asgi(), raise_server_exceptions=False) as client:
            serve_correct_retrain_and_swap(client, settings, store, first, v1)
    finally:
        forget_service_metrics()


def correct(client, settings: Settings) -> str:
    """Users send noise images and label every one with a class the champion never answered."""
    answers = [client.post("/classify", files={"image": (f"{i}.png", png_bytes((64, 64), seed=i), "image/png")})
               for i in range(CORRECTIONS + 4)]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    said = {a.json()["label"] for a in answers}
    label = next((c for c in settings.classes if c not in said), None)
    assert label is not None, f"the champion used every class for noise: {said}"
    for answer in answers[:CORRECTIONS]:
        feedback = {"request_id": answer.json()["request_id"], "label": label}
        assert client.post("/feedback", json=feedback).status_code == 201
    return label


def serve_correct_retrain_and_swap(client, settings: Settings, store, first: str, v1: str) -> None:
    """Requests and corrections through the service, then the three DAGs, then the hot swap."""
    from ml.stages.tracking import champion_version

    assert client.get("/model_info").json()["model_version"] == str(v1)
    correct(client, settings)
    # The request log and the corrections reach the object store on their own.
    wait_for(lambda: sum(1 for k in store.list(layout.FEEDBACK) if layout.is_feedback_record(k)) == CORRECTIONS,
             30, "the corrections in feedback/")
    wait_for(lambda: any(layout.is_request_batch(k) for k in store.list(layout.REQUESTS)), 30, "request batches")

    monitoring = load_dag("drift_monitoring").test()
    assert task_states(monitoring)["request_retrain"] == "success", task_states(monitoring)
    assert f"{CORRECTIONS} corrected images" in store.get_json(layout.RETRAIN_STATE)["reason"]

    build = load_dag("dataset_build").test()
    assert set(task_states(build).values()) == {"success"}, task_states(build)
    second = [row["version"] for row in store.get_json(layout.dataset_index())][-1]
    assert second != first, "the corrections must make a new snapshot version"
    manifest = store.get_json(layout.dataset_manifest(second))
    assert any(source["kind"] == "feedback" for source in manifest["sources"])
    held_out = sum(manifest["counts"]["corrections"].values())
    assert 0 < held_out < CORRECTIONS and sum(manifest["counts"]["test"].values()) > 0

    training = load_dag("training_pipeline").test(run_conf={"dataset_version": second})
    assert task_states(training)["publish_champion"] == "success", task_states(training)
    v2 = champion_version(settings)
    assert v2 != v1
    gate = version_tags(settings, v2)
    assert gate["gate.corrections_n"] == str(held_out) and gate["gate.champion_version"] == str(v1)
    assert float(gate["gate.corrections_accuracy"]) > float(gate["gate.champion_corrections_accuracy"])

    # The running service polls the alias and swaps to the new champion.
    wait_for(lambda: client.get("/model_info").json()["model_version"] == str(v2), 60, f"serving v{v2}")
    answer = client.post("/classify", files={"image": ("again.png", png_bytes(seed=99), "image/png")})
    assert answer.status_code == 200 and answer.json()["model_version"] == str(v2)
    reject_a_worse_candidate(client, settings, second, v2)


def reject_a_worse_candidate(client, settings: Settings, dataset_version: str, champion: str) -> None:
    """A model that never learned (learning rate 0) is registered, rejected, and never served."""
    from ml.stages.tracking import champion_version

    _, decision = run_pipeline(settings, dataset_version, overrides={"learning_rate": 0.0})
    assert not decision["promoted"] and champion_version(settings) == champion
    assert champion_version(settings, "challenger") == decision["version"]
    # It learned nothing: worse than the champion on the held-out corrections, and usually on clean too.
    assert any("corrections" in r or "clean test accuracy" in r for r in decision["reasons"]), decision["reasons"]
    time.sleep(3 * settings.alias_poll_seconds)  # a few alias polls of the running service
    assert client.get("/model_info").json()["model_version"] == str(champion)


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.mlflow_tracking_uri).get_model_version(settings.model_name, version).tags
