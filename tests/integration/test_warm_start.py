"""Warm start against a real MLflow registry: fine-tuning starts from the champion's weights, or says why not."""

from __future__ import annotations

import pytest

from ml import layout
from tests.fixtures.data import write_tiny_snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
def champion(smoke_run, tmp_path):
    """The session's smoke run registered as `champion` of a model name of its own."""
    import mlflow

    settings = smoke_run.settings.with_(model_name=f"warm-{tmp_path.name}"[:60])
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    version = str(mlflow.register_model(f"runs:/{smoke_run.run_id}/model", settings.model_name).version)
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", version)
    return settings, version


def test_fine_tuning_starts_from_the_champions_weights(champion, smoke_run):
    import mlflow

    from ml.stages.train import train

    settings, version = champion
    result = train(settings, smoke_run.snapshot.version, profile="smoke", overrides={"init": "champion"})
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result["run_id"])
    assert result["init_used"] == "champion" and run.data.params["init_version"] == version
    # Before the first step the model scores exactly what the champion scored on the same images.
    assert run.data.metrics["init_val_accuracy"] == pytest.approx(smoke_run.result["val_accuracy"], abs=1e-9)
    assert int(run.data.params["epochs"]) >= 2 and float(run.data.params["learning_rate"]) < 0.05  # fine-tune
    assert run.data.params["finetune_generation"] == "1"  # the champion was trained from scratch


def test_after_the_generation_limit_a_retraining_starts_from_scratch(champion):
    """A champion that is itself the 4th fine-tune in a row is not fine-tuned again (limit 4)."""
    import mlflow

    from ml.stages import tracking
    from ml.stages.train import champion_start

    settings, version = champion
    bundle = tracking.load_dict(settings, tracking.run_id_of_version(settings, version), "bundle/bundle.json")
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run() as run:  # only what champion_start reads: the generation and the class list
        mlflow.log_param("finetune_generation", "4")
        mlflow.log_dict(bundle, "bundle/bundle.json")
    fourth = client.create_model_version(settings.model_name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(settings.model_name, "champion", fourth.version)
    model, info = champion_start(settings.with_(finetune_max_generations=4), bundle["classes"])
    assert model is None and info["init_used"] == "scratch"
    assert "fine-tune generation 4" in info["init_reason"] and "VISIONLOOP_FINETUNE_MAX_GENERATIONS" in info["init_reason"]


def test_a_changed_class_list_trains_from_scratch_and_says_why(champion, tmp_path):
    import mlflow

    from ml.stages.train import train

    settings, _ = champion
    snapshot = write_tiny_snapshot(settings, version="renamed01")
    manifest = snapshot.store.get_json(layout.dataset_manifest(snapshot.version))
    manifest["classes"] = [*manifest["classes"][:-1], "reptiles"]
    snapshot.store.put_json(layout.dataset_manifest(snapshot.version), manifest)
    result = train(settings, snapshot.version, profile="smoke", overrides={"init": "champion"})
    params = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result["run_id"]).data.params
    assert (params["init"], params["init_used"]) == ("champion", "scratch")
    assert "other classes" in params["init_reason"]
