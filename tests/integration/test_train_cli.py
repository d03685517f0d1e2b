"""`visionloop train run` chains the training stages like the training_pipeline DAG, against a real MLflow server."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.data import write_tiny_snapshot

pytestmark = pytest.mark.integration
BUNDLE_FILES = ("bundle/bundle.json", "bundle/ood/summary.json", "bundle/similarity/index.npz",
                "bundle/imagenet/mapping.txt", "bundle/reference/reference.json", "ood_evaluation/ood_table.json")


@pytest.fixture
def cli_settings(mlflow_server, tmp_path, monkeypatch):
    """The environment a user's shell would have: smoke profile, a local store, a model name of its own."""
    from ml.config import Settings

    for name, value in {"HOME": str(tmp_path / "home"), "PROFILE": "smoke", "MODEL_NAME": "cli-train",
                        "EXPERIMENT": "cli-train", "GATE_MIN_ACCURACY": "0.0"}.items():
        monkeypatch.setenv(f"VISIONLOOP_{name}", value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    settings = Settings.from_env()
    write_tiny_snapshot(settings, version="clitiny1")
    return settings


def train_run(*args: str) -> tuple[str, str]:
    """Invoke `visionloop train run ARGS`; (its output, the run id it reports)."""
    from typer.testing import CliRunner

    from ml.cli import app

    result = CliRunner().invoke(app, ["train", "run", *args])
    assert result.exit_code == 0, result.output
    found = re.search(r"run (\w+) on dataset clitiny1:", result.output)
    assert found, result.output
    return result.output, found.group(1)


def artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    """Every file under a run's artifact path, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, path or None):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_no_register_stops_before_the_gate_and_a_plain_run_registers_with_gate_tags(cli_settings):
    from ml.stages import tracking

    client = tracking.client(cli_settings)
    output, run_id = train_run("--no-register")
    assert "not registered (--no-register)" in output
    run = client.get_run(run_id)
    assert run.data.params["dataset_version"] == "clitiny1" and "test_accuracy" in run.data.metrics
    assert run.data.tags["ood_default_detector"] and "ood_id_reject_" + run.data.tags["ood_default_detector"] \
        in run.data.metrics
    assert set(BUNDLE_FILES) <= artifact_paths(client, run_id)
    assert tracking.aliases(cli_settings) == {}
    assert not client.search_model_versions(f"name='{cli_settings.model_name}'")

    output, second = train_run()
    assert second != run_id and "v1 promoted to champion" in output
    assert tracking.champion_version(cli_settings) == "1"
    version = client.get_model_version(cli_settings.model_name, "1")
    assert version.run_id == second and version.tags["gate.promoted"] == "True"
    assert version.tags["gate.dataset_version"] == "clitiny1" and version.tags["gate.bundle_sha256"]
    assert set(BUNDLE_FILES) <= artifact_paths(client, second)
