"""The first-pipeline follower against a scripted Airflow, and the children's configuration."""

from __future__ import annotations

import httpx
import pytest

from ml.config import Settings
from ml.platform import components, first_run, mlflow_api
from ml.platform.airflow_api import error_line
from ml.platform.processes import PlatformError

T0, T1, T2 = "2026-11-25T10:00:00Z", "2026-11-25T10:05:00Z", "2026-11-25T10:06:00Z"


class ScriptedAirflow:
    """Answers like the Airflow REST API from `script[step]`; each champion poll is one step."""

    base_url = "http://127.0.0.1:1"

    def __init__(self, script: list[dict[str, list[dict]]], logs: list[dict] | None = None):
        self.script, self.step, self.logs, self.triggered = script, 0, logs or [], []

    def _now(self) -> dict[str, list[dict]]:
        return self.script[min(self.step, len(self.script) - 1)]

    def runs(self, dag_id: str, limit: int = 5) -> list[dict]:
        return [dict(r, dag_id=dag_id) for r in self._now().get(dag_id, [])][:limit]

    def run(self, dag_id: str, run_id: str) -> dict:
        return next(r for r in self.runs(dag_id) if r["dag_run_id"] == run_id)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        run = next(r for r in self.runs(dag_id) if r["dag_run_id"] == run_id)
        return run.get("tasks", [])

    def task_log(self, dag_id, run_id, task_id, try_number) -> list[dict]:
        return self.logs

    def trigger(self, dag_id: str) -> dict:
        self.triggered.append(dag_id)
        return {"dag_run_id": f"manual__{dag_id}"}


def run(run_id: str, state: str, end: str | None = None, queued: str = T0, tasks=()) -> dict:
    return {"dag_run_id": run_id, "state": state, "end_date": end, "queued_at": queued, "tasks": list(tasks)}


@pytest.fixture
def watch(monkeypatch, tmp_path):
    monkeypatch.setattr(first_run, "POLL_S", 0)
    monkeypatch.setattr(mlflow_api, "latest_run", lambda *a: None)
    lines: list[str] = []

    def make(client, champion_after: int | None = None) -> first_run.Watch:
        def champion(*_):  # once per poll: the clock of the script
            version = "1" if champion_after is not None and client.step >= champion_after else None
            client.step += 1
            return version

        monkeypatch.setattr(mlflow_api, "champion_version", champion)
        return first_run.Watch(client, Settings.from_env(home=tmp_path / "home"), "http://mlflow", lines.append)

    make.lines = lines
    return make


def test_follows_dataset_then_training_to_champion(watch):
    building = {"dataset_build": [run("d1", "running", tasks=[{"task_id": "build", "state": "running"}])]}
    client = ScriptedAirflow([
        building, building,
        {"dataset_build": [run("d1", "success", end=T1)],
         "training_pipeline": [run("t1", "running", queued=T2, tasks=[{"task_id": "train", "state": "running"}])]},
        {"dataset_build": [run("d1", "success", end=T1)], "training_pipeline": [run("t1", "success", queued=T2)]},
    ])
    version = first_run.follow(watch(client, champion_after=3), timeout_s=30)
    assert version == "1"
    assert any("dataset_build: running, task build" in line for line in watch.lines)
    assert any("training_pipeline: running, task train" in line for line in watch.lines)
    assert client.triggered == []


def test_download_failure_shows_the_error_and_the_offline_fix(watch):
    failed = run("d1", "failed", end=T1, tasks=[{"task_id": "build", "state": "failed", "try_number": 2}])
    logs = [{"event": "starting", "level": "info"},
            {"event": "Task failed with exception", "level": "error", "error_detail": [
                {"exc_type": "URLError", "exc_value": "<urlopen error [Errno -3] Temporary failure in name resolution>"}]}]
    client = ScriptedAirflow([{"dataset_build": [run("d1", "running")]}, {"dataset_build": [failed]}], logs)
    with pytest.raises(PlatformError) as err:
        first_run.follow(watch(client), timeout_s=30)
    message = str(err.value)
    assert "dataset_build failed in task build: URLError: <urlopen error" in message
    assert "VISIONLOOP_DATA_SOURCES=folder:" in message
    assert "task_id=build/attempt=2.log" in message


def test_training_failure_after_the_dataset_is_reported(watch):
    stale = run("t0", "failed", queued=T0)  # a timed run from before the dataset existed: not ours
    failed = run("t1", "failed", queued=T2, tasks=[{"task_id": "train", "state": "failed", "try_number": 1}])
    client = ScriptedAirflow([
        {"dataset_build": [run("d1", "success", end=T1)], "training_pipeline": [failed, stale]},
    ], logs=[{"event": "ValueError: dataset has no images", "level": "error"}])
    with pytest.raises(PlatformError, match="training_pipeline failed in task train: ValueError"):
        first_run.follow(watch(client), timeout_s=30)


def test_timeout_says_where_the_pipeline_goes_on(watch):
    client = ScriptedAirflow([{"dataset_build": [run("d1", "running")]}])
    with pytest.raises(PlatformError, match="no champion after 1 s"):
        first_run.follow(watch(client), timeout_s=1)


@pytest.mark.parametrize("log, expected", [
    ([{"event": "x", "error_detail": [{"exc_type": "KeyError", "exc_value": "'a'"}]}], "KeyError: 'a'"),
    ([{"event": "boom", "level": "error"}, {"event": "done", "level": "info"}], "boom"),
    ([{"event": "only line"}], "only line"),
    ([], "(empty log)"),
])
def test_error_line_picks_the_exception(log, expected):
    assert error_line(log) == expected


def test_airflow_env_binds_loopback_and_passes_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLOOP_PROFILE", "smoke")
    settings = Settings.from_env(home=tmp_path / "home", airflow_port=18080, mlflow_port=15000)
    env = components.airflow_env(settings)
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(components.REPO / "dags")
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4" and env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW_HOME"] == str((tmp_path / "home" / "airflow").resolve())
    assert env["VISIONLOOP_PROFILE"] == "smoke"  # tasks see the user's configuration
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"
    assert "AIRFLOW__CORE__UNIT_TEST_MODE" not in env
    mlflow = components.mlflow_component(settings)
    assert mlflow.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "--host" in mlflow.argv and mlflow.argv[mlflow.argv.index("--host") + 1] == "127.0.0.1"


def test_training_without_promotion_says_the_gate_refused(watch):
    client = ScriptedAirflow([{"dataset_build": [run("d1", "success", end=T1)],
                               "training_pipeline": [run("t1", "success", queued=T2)]}])
    with pytest.raises(PlatformError, match="gate did not promote"):
        first_run.follow(watch(client), timeout_s=30)


def test_epoch_progress_counts_logged_epochs(monkeypatch):
    history = {"metrics": [{"key": "epoch_val_accuracy", "value": v, "step": i} for i, v in enumerate((0.5, 0.7))]}
    monkeypatch.setattr(mlflow_api.httpx, "get", lambda *a, **k: httpx.Response(200, json=history))
    run_json = {"info": {"run_id": "r1"}, "data": {
        "metrics": [{"key": "epoch_loss", "value": 0.9}, {"key": "epoch_val_accuracy", "value": 0.7}],
        "params": [{"key": "epochs", "value": "20"}]}}
    assert mlflow_api.epoch_progress("http://mlflow", run_json) == "epoch 2/20, val_accuracy 0.700"
    assert mlflow_api.epoch_progress("http://mlflow", {"info": {"run_id": "r1"}, "data": {}}) == ""
