"""The first pipeline: trigger `dataset_build`, follow it and `training_pipeline` until a champion exists."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ml.config import Settings
from ml.platform import mlflow_api
from ml.platform.airflow_api import ACTIVE, TERMINAL, AirflowClient, error_line
from ml.platform.processes import PlatformError

DAGS = ("dataset_build", "training_pipeline", "drift_monitoring")
POLL_S = 5.0
# While a training task runs the follower asks 6x less often: each poll costs the API server and
# MLflow CPU that the training competes for (epochs take minutes, the progress line loses nothing).
TRAINING_POLL_FACTOR = 6
TRAINING_TASKS = ("train",)
# Words in a dataset_build error that mean "the CIFAR download failed".
NETWORK_WORDS = ("download", "urlopen", "url", "connection", "resolve", "network", "http", "cifar", "timed out")
OFFLINE_FIX = (
    "fix: without internet, point the data sources at local archives, e.g.\n"
    "  VISIONLOOP_DATA_SOURCES=folder:/path/to/cifar10_train_jpg.tar.gz,"
    "folder:/path/to/extra_superclasses_train.tar.gz,feedback make up\n"
    "  (or VISIONLOOP_CIFAR10_URL / VISIONLOOP_CIFAR100_URL for a mirror of the archives)"
)


@dataclass
class Watch:
    """What the progress loop knows; `shown` keeps the output to one line per change."""

    client: AirflowClient
    settings: Settings
    tracking_uri: str
    say: Callable[[str], None]
    shown: set[str] = field(default_factory=set)

    def show(self, line: str) -> None:
        if line not in self.shown:
            self.shown.add(line)
            self.say(f"  {time.strftime('%H:%M:%S')} {line}")


def start(client: AirflowClient, say: Callable[[str], None], dag_timeout_s: float = 180) -> None:
    """Wait for the DAGs to be parsed, unpause them and trigger `dataset_build` unless a run is active."""
    missing = client.wait_for_dags(DAGS, dag_timeout_s)
    if missing:
        errors = "".join(f"\n  {e.get('filename')}: {str(e.get('stack_trace', '')).strip().splitlines()[-1:]}"
                         for e in client.import_errors())
        raise PlatformError(f"Airflow has not loaded the DAG(s) {', '.join(missing)} after "
                            f"{dag_timeout_s:.0f} s; import errors:{errors or ' none reported'}")
    for dag_id in DAGS:
        client.unpause(dag_id)
    if _active(client, "training_pipeline") or _active(client, "dataset_build"):
        say("a pipeline run is already in progress; following it")
        return
    run = client.trigger("dataset_build")
    say(f"triggered dataset_build (run {run['dag_run_id']})")


def _active(client: AirflowClient, dag_id: str) -> dict | None:
    return next((r for r in client.runs(dag_id) if r.get("state") in ACTIVE), None)


def follow(watch: Watch, timeout_s: float) -> str:
    """Show progress until a champion exists; return its version or raise with the failing task's error."""
    deadline = time.monotonic() + timeout_s
    dataset_run = _active(watch.client, "dataset_build") or (watch.client.runs("dataset_build", 1) or [None])[0]
    training_wait_started: float | None = None
    while time.monotonic() < deadline:
        running: list[str] = []
        version = mlflow_api.champion_version(watch.tracking_uri, watch.settings.model_name)
        if version:
            return version
        if dataset_run and dataset_run["state"] not in TERMINAL:
            dataset_run = watch.client.run("dataset_build", dataset_run["dag_run_id"])
            running += _show_run(watch, dataset_run)
            if dataset_run["state"] == "failed":
                raise PlatformError(_diagnose(watch, dataset_run))
        training = _active(watch.client, "training_pipeline")
        if training:
            running += _show_run(watch, training)
        elif dataset_run is None or dataset_run["state"] == "success":
            training_wait_started = training_wait_started or time.monotonic()
            done = _finished_training(watch, dataset_run)
            if done and done["state"] == "failed":
                raise PlatformError(_diagnose(watch, done))
            if done and done["state"] == "success":
                # The gate sets the alias before the run ends: one more look closes the race.
                version = mlflow_api.champion_version(watch.tracking_uri, watch.settings.model_name)
                if version:
                    return version
                raise PlatformError("training_pipeline succeeded but the registry gate did not promote a "
                                    f"champion; see the run's version tags in MLflow ({watch.tracking_uri})")
            if not done and time.monotonic() - training_wait_started > 90:
                # The Asset should have scheduled it; start it by hand rather than wait forever.
                run = watch.client.trigger("training_pipeline")
                watch.show(f"triggered training_pipeline (run {run['dag_run_id']})")
                training_wait_started = float("inf")  # once
        time.sleep(poll_interval(running))
    raise PlatformError(f"no champion after {timeout_s:.0f} s; the pipeline goes on in Airflow "
                        f"({watch.client.base_url}); run `make up` again to start serving once it is done")


def poll_interval(running: list[str]) -> float:
    """Seconds to the next poll: longer while a training task runs."""
    return POLL_S * (TRAINING_POLL_FACTOR if any(t in TRAINING_TASKS for t in running) else 1)


def _finished_training(watch: Watch, dataset_run: dict | None) -> dict | None:
    """The newest training_pipeline run that ended after the dataset was built."""
    since = _when(dataset_run.get("end_date")) if dataset_run else None
    for run in watch.client.runs("training_pipeline"):
        queued = _when(run.get("queued_at") or run.get("start_date"))
        if run.get("state") in ("success", "failed") and (since is None or (queued and queued >= since)):
            return run
    return None


def _when(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def _show_run(watch: Watch, run: dict) -> list[str]:
    """One line: the DAG, its state, the running task and, while training, the epochs done; returns the running tasks."""
    dag_id = run["dag_id"]
    running = [t["task_id"] for t in watch.client.task_instances(dag_id, run["dag_run_id"])
               if t.get("state") == "running"]
    line = f"{dag_id}: {run['state']}" + (f", task {', '.join(running)}" if running else "")
    if dag_id == "training_pipeline":
        latest = mlflow_api.latest_run(watch.tracking_uri, watch.settings.experiment)
        progress = mlflow_api.epoch_progress(watch.tracking_uri, latest) if latest else ""
        line += f" ({progress})" if progress else ""
    watch.show(line)
    return running


def _diagnose(watch: Watch, run: dict) -> str:
    """The failed task's error line, where its log lies and, for a download failure, the fix."""
    dag_id, run_id = run["dag_id"], run["dag_run_id"]
    failed = [t for t in watch.client.task_instances(dag_id, run_id) if t.get("state") in ("failed", "upstream_failed")]
    first = next((t for t in failed if t.get("state") == "failed"), None)
    if first is None:
        return f"{dag_id} run {run_id} failed; see it in Airflow ({watch.client.base_url})"
    task_id, tries = first["task_id"], max(int(first.get("try_number") or 1), 1)
    try:
        error = error_line(watch.client.task_log(dag_id, run_id, task_id, tries))
    except RuntimeError as exc:
        error = f"(log unavailable: {exc})"
    log = (watch.settings.home.resolve() / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
           / f"task_id={task_id}" / f"attempt={tries}.log")
    message = f"{dag_id} failed in task {task_id}: {error}\n  log: {log}"
    if dag_id == "dataset_build" and any(word in error.lower() for word in NETWORK_WORDS):
        message += "\n" + OFFLINE_FIX
    return message
