"""Smoke training and evaluation on tiny data against a real MLflow server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.fixtures.training import smoke_run  # noqa: F401  (fixture; tests/conftest.py will register it)


@pytest.fixture(scope="module")
def run(smoke_run):  # noqa: F811
    return MlflowClient(smoke_run.settings.mlflow_tracking_uri).get_run(smoke_run.run_id)


def test_run_logs_params_dataset_and_curves(smoke_run, run):  # noqa: F811
    params = run.data.params
    assert params["arch"] == "airnet" and params["profile"] == "smoke"
    assert params["dataset_version"] == smoke_run.snapshot.version
    for name in ("epochs", "batch_size", "learning_rate", "label_smoothing", "seed"):
        assert name in params
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [smoke_run.snapshot.version]
    history = MlflowClient().get_metric_history(smoke_run.run_id, "epoch_val_accuracy")
    assert len(history) == smoke_run.result["epochs_run"] >= 1


def test_smoke_model_learns_the_tiny_data(smoke_run, run):  # noqa: F811
    chance = 1 / 13
    assert run.data.metrics["val_accuracy"] == pytest.approx(smoke_run.result["val_accuracy"])
    assert smoke_run.result["val_accuracy"] > 2 * chance


def test_model_and_bundle_are_logged(smoke_run, tmp_path):  # noqa: F811
    import mlflow

    from ml.inference import Predictor
    from ml.stages.tracking import load_run_model

    path = mlflow.artifacts.download_artifacts(f"runs:/{smoke_run.run_id}/bundle/bundle.json", dst_path=tmp_path)
    bundle = json.loads(open(path).read())
    assert bundle["classes"] == list(smoke_run.settings.classes)
    assert bundle["dataset_version"] == smoke_run.snapshot.version
    assert bundle["arch"] == "airnet" and bundle["image_size"] == 32
    x, y = smoke_run.snapshot.arrays["val"]
    predictor = Predictor(load_run_model(smoke_run.settings, smoke_run.run_id))
    assert predictor.tta, "the logged airnet keeps its name, so serving gets flip TTA"
    pred = predictor.predict(x)
    assert pred.embeddings.shape == (len(x), bundle["embedding_dim"])
    assert np.mean(pred.probs.argmax(1) == y) == pytest.approx(smoke_run.result["val_accuracy"], abs=1e-6)


def test_loading_a_logged_model_leaves_no_copy_in_the_temp_folder(smoke_run, tmp_path, monkeypatch):  # noqa: F811
    import tempfile

    from ml.stages.tracking import load_run_model

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    model = load_run_model(smoke_run.settings, smoke_run.run_id)
    assert model.output_shape is not None, "the model is usable after its download folder is gone"
    assert list(scratch.iterdir()) == [], "every load used to leave a model copy behind in the temp folder"


def test_evaluate_logs_test_metrics_and_figures(smoke_run):  # noqa: F811
    from ml.stages.evaluate import evaluate

    result = evaluate(smoke_run.settings, smoke_run.run_id)
    classes = smoke_run.settings.classes
    assert set(result["test_recall"]) == set(classes)
    x, y = smoke_run.snapshot.arrays["test"]
    assert result["test_accuracy"] > 2 / 13
    client = MlflowClient()
    metrics = client.get_run(smoke_run.run_id).data.metrics
    assert metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert all(f"test_recall_{c}" in metrics for c in classes)
    logged = {f.path for d in ("plots", "reports") for f in client.list_artifacts(smoke_run.run_id, d)}
    assert {"plots/confusion_matrix.png", "plots/training_curves.png", "plots/tsne_embeddings.png",
            "plots/first_layer_filters.png", "reports/classification_report.txt",
            "reports/classification_report.json"} <= logged


def test_stages_after_training_use_the_forward_pass_serving_runs(smoke_run, tmp_path):  # noqa: F811
    """f32 export: TensorFlow (identical to 1e-6); an export that chose bf16: that export, so detectors,
    similarity index and drift reference see the features serving computes."""
    from mlflow import MlflowClient

    from ml.runtime import OpenVINOPredictor
    from ml.stages.tracking import download, load_dict, served_forward

    settings = smoke_run.settings
    meta = load_dict(settings, smoke_run.run_id, "bundle/openvino/openvino.json")
    assert meta["precision_hint"] == "f32"  # the tiny snapshot has no held-out outlier classes to check bf16 on
    assert meta["precision_reason"] and served_forward(settings, smoke_run.run_id, str(tmp_path))[1] == "tensorflow"
    exported = download(settings, smoke_run.run_id, "bundle/openvino", tmp_path / "export")
    (exported / "openvino.json").write_text(json.dumps(meta | {"precision_hint": "bf16"}))
    client = MlflowClient(settings.mlflow_tracking_uri)
    other = client.create_run(client.get_run(smoke_run.run_id).info.experiment_id).info.run_id
    client.log_artifacts(other, str(exported), "bundle/openvino")
    if OpenVINOPredictor.load(exported, precision="bf16").effective_precision != "bf16":
        pytest.skip("this CPU has no bf16 support: serving runs the export as f32")
    predictor, name = served_forward(settings, other, str(tmp_path / "work"))
    assert (name, predictor.effective_precision) == ("openvino-bf16", "bf16")
    x, _ = smoke_run.snapshot.arrays["val"]
    assert predictor.predict(x).probs.shape == (len(x), 13)
