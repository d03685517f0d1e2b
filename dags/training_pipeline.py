"""
### training_pipeline

Train a classifier on a dataset snapshot, evaluate it, fit its OOD detectors
and monitoring reference pack, then let the registry gate decide whether it
becomes `champion`:

resolve_dataset -> train -> evaluate -> fit_ood -> reference -> gate -> publish_champion

Runs when `dataset_build` announces a snapshot (Asset `visionloop_dataset`) or
on `VISIONLOOP_TRAIN_SCHEDULE` (weekly by default; `none` switches the time
part off), whichever comes first; or by hand with the params `profile`
(`smoke`, `standard`, `full`; empty = `VISIONLOOP_PROFILE`) and
`dataset_version` (empty = the triggering snapshot, else the newest one).
Tasks pass the dataset version and the MLflow run id only. The Asset
`visionloop_champion` (extra `{"version"}`) is updated only when the gate
promotes the new model; otherwise `publish_champion` is skipped.

The gate scores champion and candidate on images neither trained on (clean
test split and held-out corrections) and fails closed: if MLflow or the store
cannot be read the task fails and Airflow retries it; a retry reuses the
version already registered for the run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from visionloop_assets import CHAMPION, DATASET

from ml.config import Settings  # stdlib only: cheap to import on every scheduler parse

TRAIN_SCHEDULE = Settings.from_env().train_schedule.strip()


def _schedule():
    """The dataset Asset, or the Asset OR the time schedule when one is configured."""
    if TRAIN_SCHEDULE.lower() in ("", "none"):
        return [DATASET]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(TRAIN_SCHEDULE, timezone="UTC"),
                               assets=[DATASET])


def _settings() -> Settings:
    return Settings.from_env()


@dag(
    dag_id="training_pipeline",
    schedule=_schedule(),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # two trainings at once would halve each one's CPU
    doc_md=__doc__,
    tags=["visionloop", "training"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "profile": Param("", type="string", enum=["", "smoke", "standard", "full"],
                         description="Training profile; empty = VISIONLOOP_PROFILE."),
        "dataset_version": Param("", type="string",
                                 description="Snapshot to train on; empty = triggering or newest."),
    },
)
def training_pipeline():
    @task
    def resolve_dataset(params=None, triggering_asset_events=None) -> str:
        """The snapshot version: the triggering Asset event's, else the param, else the newest one."""
        for events in (triggering_asset_events or {}).values():
            versions = [e.extra.get("version") for e in events if (e.extra or {}).get("version")]
            if versions:
                return versions[-1]
        if (params or {}).get("dataset_version"):
            return params["dataset_version"]
        from airflow.exceptions import AirflowSkipException

        from ml.data.snapshot import latest_version
        from ml.storage import open_store

        version = latest_version(open_store(_settings()))
        if version is None:
            # A weekly tick before the first dataset_build has nothing to train on: not an error.
            raise AirflowSkipException("no dataset snapshot in the store yet; dataset_build makes one")
        return version

    @task
    def train(dataset_version: str, params=None) -> str:
        from ml.train import train_model

        return train_model(_settings(), dataset_version, profile=(params or {}).get("profile") or None)["run_id"]

    @task
    def evaluate(mlflow_run_id: str) -> str:
        from ml.evaluate import evaluate_run

        evaluate_run(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def fit_ood(mlflow_run_id: str) -> str:
        from ml.ood.pipeline import fit_and_log

        fit_and_log(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def reference(mlflow_run_id: str) -> str:
        from ml.monitoring.reference import compute_and_log

        compute_and_log(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def gate(mlflow_run_id: str) -> dict:
        """Register the model as `challenger`; promote it to `champion` if the gate passes."""
        from ml.registry import register_and_gate

        decision = register_and_gate(_settings(), mlflow_run_id)
        keys = ("version", "promoted", "reasons", "test_accuracy", "corrections_accuracy", "excluded_n")
        return {k: decision.get(k) for k in keys}

    @task(outlets=[CHAMPION])
    def publish_champion(decision: dict, *, outlet_events=None) -> str:
        """Tell serving a new champion exists; skipped when the gate rejected the model."""
        from airflow.exceptions import AirflowSkipException

        if not decision["promoted"]:
            raise AirflowSkipException(f"v{decision['version']} not promoted: {'; '.join(decision['reasons'])}")
        outlet_events[CHAMPION].extra = {"version": str(decision["version"])}
        return str(decision["version"])

    # Tasks pass the MLflow run id along ("run_id" is a reserved Airflow context key).
    mlflow_run_id = train(resolve_dataset())
    publish_champion(gate(reference(fit_ood(evaluate(mlflow_run_id)))))


training_pipeline()
