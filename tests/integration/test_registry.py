"""The registry gate against a real MLflow server: first, better, worse, recall drop, rollback.

Candidates are extra runs that carry a copy of the smoke model and chosen test
metrics, so each case costs a registration, not a training run.
"""

from __future__ import annotations

import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ml import registry
from tests.fixtures.training import smoke_run  # noqa: F401  (fixture; tests/conftest.py will register it)


@pytest.fixture(scope="module")
def model_dir(smoke_run, tmp_path_factory):  # noqa: F811
    return mlflow.artifacts.download_artifacts(f"runs:/{smoke_run.run_id}/model",
                                               dst_path=str(tmp_path_factory.mktemp("model")))


@pytest.fixture
def settings(smoke_run):  # noqa: F811
    """A registered model of its own per test, so aliases start empty."""
    return smoke_run.settings.with_(model_name=f"gate-{uuid.uuid4().hex[:8]}", gate_min_accuracy=0.5)


def candidate(settings, model_dir: str, accuracy: float, recall: float = 0.8, low: dict | None = None,
              dataset_version: str = "tiny0001") -> str:
    """A run holding the smoke model and the given test metrics; returns its run id."""
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run() as run:
        mlflow.log_param("dataset_version", dataset_version)
        mlflow.log_metric("test_accuracy", accuracy)
        recalls = {c: (low or {}).get(c, recall) for c in settings.classes}
        mlflow.log_metrics({f"test_recall_{c}": r for c, r in recalls.items()})
        mlflow.log_artifacts(model_dir, "model")
    return run.info.run_id


def tags(settings, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(settings.model_name, version).tags


def test_first_model_becomes_champion(settings, model_dir):
    decision = registry.register_and_gate(settings, candidate(settings, model_dir, 0.80))
    assert decision["promoted"] and decision["champion_version"] is None
    assert registry.champion_version(settings) == decision["version"]
    assert registry.alias_version(settings, "challenger") == decision["version"]
    assert tags(settings, decision["version"])["gate.promoted"] == "True"


def test_better_model_replaces_champion_and_worse_one_is_rejected(settings, model_dir):
    first = registry.register_and_gate(settings, candidate(settings, model_dir, 0.80))["version"]
    better = registry.register_and_gate(settings, candidate(settings, model_dir, 0.85))
    assert better["promoted"] and registry.champion_version(settings) == better["version"]
    assert registry.alias_version(settings, "previous_champion") == first
    worse = registry.register_and_gate(settings, candidate(settings, model_dir, 0.70))
    assert not worse["promoted"]
    assert registry.champion_version(settings) == better["version"]
    assert registry.alias_version(settings, "challenger") == worse["version"]
    version_tags = tags(settings, worse["version"])
    assert version_tags["gate.promoted"] == "False" and "champion 0.8500" in version_tags["gate.reasons"]
    assert version_tags["gate.champion_accuracy"] == "0.8500"


def test_below_floor_and_recall_drop_are_rejected(settings, model_dir):
    floor = registry.register_and_gate(settings, candidate(settings, model_dir, 0.40))
    assert not floor["promoted"] and "floor" in floor["reasons"][0]
    champion = registry.register_and_gate(settings, candidate(settings, model_dir, 0.80))["version"]
    # Same accuracy, but cats are recognised far less often: users would notice.
    dropped = registry.register_and_gate(settings, candidate(settings, model_dir, 0.81, low={"cat": 0.5}))
    assert not dropped["promoted"] and registry.champion_version(settings) == champion
    assert dropped["worst_recall_class"] == "cat"
    assert "recall of cat drops 0.3000" in tags(settings, dropped["version"])["gate.reasons"]


def test_champion_from_another_snapshot_is_re_evaluated_on_the_candidates_test_split(settings, model_dir,
                                                                                     smoke_run):  # noqa: F811
    from ml.evaluate import score_on_test
    from ml.model import load_run_model

    registry.register_and_gate(settings, candidate(settings, model_dir, 0.99, dataset_version="older"))
    real = score_on_test(load_run_model(smoke_run.run_id), settings, "tiny0001")["accuracy"]
    decision = registry.register_and_gate(settings, candidate(settings, model_dir, real, recall=1.0))
    assert decision["champion_accuracy"] == pytest.approx(real)
    assert decision["promoted"], decision["reasons"]


def test_rollback_restores_the_previous_champion_and_can_be_undone(settings, model_dir):
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback(settings)
    first = registry.register_and_gate(settings, candidate(settings, model_dir, 0.80))["version"]
    second = registry.register_and_gate(settings, candidate(settings, model_dir, 0.90))["version"]
    assert registry.rollback(settings) == {"champion": first, "previous_champion": second}
    assert registry.champion_version(settings) == first
    registry.rollback(settings)
    assert registry.champion_version(settings) == second
    listed = {row["version"]: row["aliases"] for row in registry.list_versions(settings)}
    assert listed == {second: ["challenger", "champion"], first: ["previous_champion"]}


def test_model_commands_list_promote_and_roll_back(settings, model_dir, monkeypatch):
    from typer.testing import CliRunner

    from ml.cli import app

    first = registry.register_and_gate(settings, candidate(settings, model_dir, 0.80))["version"]
    second = registry.register_and_gate(settings, candidate(settings, model_dir, 0.70))["version"]
    monkeypatch.setenv("VISIONLOOP_MODEL_NAME", settings.model_name)
    runner = CliRunner()
    listed = runner.invoke(app, ["model", "list"])
    assert listed.exit_code == 0 and "rejected" in listed.output and "champion" in listed.output
    promoted = runner.invoke(app, ["model", "promote", second])
    assert promoted.exit_code == 0 and registry.champion_version(settings) == second
    rolled = runner.invoke(app, ["model", "rollback"])
    assert rolled.exit_code == 0 and f"champion is v{first}" in rolled.output
    missing = runner.invoke(app, ["model", "promote", "999"])
    assert missing.exit_code == 2 and "no version" in missing.output
