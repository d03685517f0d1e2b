"""Monitoring against real servers: moto S3 for the request log, an MLflow server for packs and windows."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ml import layout
from ml.monitoring import synthetic
from ml.monitoring.reference import ARTIFACT_DIR, ReferencePack
from ml.stages import drift
from ml.storage import open_store
from tests.fixtures.data import write_tiny_snapshot
from tests.unit.test_monitoring_window import check_exactly_once

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def test_watermark_exactly_once_on_s3(s3_settings):
    check_exactly_once(open_store(s3_settings))


@pytest.fixture
def registered(s3_settings, mlflow_server, tmp_path):
    """A registered version whose training run holds a synthetic reference pack."""
    import mlflow

    settings = s3_settings.with_(mlflow_tracking_uri=mlflow_server, model_name=f"clf-{tmp_path.name}"[:60],
                                 monitoring_experiment=f"mon-{tmp_path.name}"[:60])
    client = mlflow.MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"train-{tmp_path.name}"[:60])
    run_id = client.create_run(experiment_id).info.run_id
    client.log_artifacts(run_id, str(synthetic.pack(list(settings.classes)).save(tmp_path / "ref")),
                         ARTIFACT_DIR)
    client.create_registered_model(settings.model_name)
    version = client.create_model_version(settings.model_name, f"runs:/{run_id}/bundle", run_id=run_id).version
    return settings, str(version)


def test_run_window_logs_and_advances(registered):
    import mlflow

    settings, version = registered
    store = open_store(settings)
    classes = list(settings.classes)
    synthetic.write_batches(store, synthetic.records(300, classes, seed=1, model_version=version), T0)
    clean = drift.run_window(settings, now=T0 + timedelta(hours=1))
    assert clean["verdict"] == "no drift" and clean["n_records"] == 300 and clean["model_version"] == version
    assert store.get_json(layout.monitoring_window(clean["window_id"]))["verdict"] == "no drift"
    assert store.get_json(layout.WATERMARK)["last_key"] == clean["watermark"]["last_key"]

    synthetic.write_batches(store, synthetic.records(300, classes, seed=2, shift=0.5, model_version=version),
                            T0 + timedelta(minutes=30))
    shifted = drift.run_window(settings, now=T0 + timedelta(hours=2))
    assert shifted["verdict"] == "drift" and shifted["n_records"] == 300  # the clean batches were not re-read

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(shifted["mlflow_run_id"])
    assert run.data.tags["verdict"] == "drift" and run.data.tags["model_version"] == version
    assert {"confidence_p_value", "window_size", "mean_confidence", "class/cat/share"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"report.html", "window.json", "plots/distributions.png", "plots/over_time.png"} <= artifacts
    html = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/report.html")
    assert "data:image/png;base64," in html and "drift" in html


def test_small_window_does_not_move_the_watermark(registered):
    settings, version = registered
    store = open_store(settings)
    synthetic.write_batches(store, synthetic.records(10, list(settings.classes), seed=3, model_version=version), T0)
    result = drift.run_window(settings, now=T0 + timedelta(hours=1))
    assert result["verdict"] == "insufficient data" and not result["watermark"]["advanced"]
    assert not store.exists(layout.WATERMARK)


def test_reference_stage_writes_the_pack(s3_settings, mlflow_server, monkeypatch, tmp_path):
    import sys

    import mlflow

    from ml.stages import reference

    settings = s3_settings.with_(mlflow_tracking_uri=mlflow_server)
    snapshot = write_tiny_snapshot(settings)
    client = mlflow.MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment(f"ref-{tmp_path.name}"[:60])).info.run_id
    client.log_param(run_id, "dataset_version", snapshot.version)
    rng = np.random.default_rng(0)

    class FakePredictor:  # the Predictor contract: .probs and .embeddings per image (no TensorFlow import)
        def __init__(self, model):
            assert model == "model of " + run_id

        def predict_batched(self, x):
            return types.SimpleNamespace(probs=rng.dirichlet(np.ones(13), size=len(x)),
                                         embeddings=rng.normal(size=(len(x), 48)), logits=None)

    monkeypatch.setitem(sys.modules, "ml.inference", types.SimpleNamespace(Predictor=FakePredictor))
    monkeypatch.setattr(reference.tracking, "load_run_model", lambda s, run: f"model of {run}")
    summary = reference.reference(settings, run_id)
    assert summary["n"] == len(snapshot.arrays["val"][1])
    assert summary["expected_ood_rate"] == pytest.approx(1 - settings.ood_target_tpr)  # what the detector rejects
    path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{ARTIFACT_DIR}", dst_path=str(tmp_path))
    pack = ReferencePack.load(path)
    assert pack.class_histograms.shape == (13, 32) and pack.meta["dataset_version"] == snapshot.version


def test_versions_without_a_pack_are_skipped_and_counted(registered):
    """A registered version trained without a pack, and a version the registry never had, do not fail windows."""
    import mlflow

    settings, version = registered
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    bare_run = client.create_run(client.get_run(client.get_model_version(settings.model_name, version).run_id)
                                 .info.experiment_id).info.run_id
    bare = str(client.create_model_version(settings.model_name, f"runs:/{bare_run}/bundle", run_id=bare_run).version)
    store, classes = open_store(settings), list(settings.classes)
    for seed, (ver, n) in enumerate([(version, 200), (bare, 70), ("99", 60)]):
        synthetic.write_batches(store, synthetic.records(n, classes, seed=10 + seed, model_version=ver),
                                T0 + timedelta(minutes=seed))
    result = drift.run_window(settings, now=T0 + timedelta(hours=1))
    assert result["model_version"] == version and result["verdict"] in ("drift", "no drift")
    assert result["skipped_versions"] == {bare: 70, "99": 60} and result["n_skipped"] == 130
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["skipped_records"] == 130
    assert "skipped 130 requests" in mlflow.artifacts.load_text(f"runs:/{result['mlflow_run_id']}/report.html")
