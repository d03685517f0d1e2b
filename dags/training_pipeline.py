"""
### training_pipeline

Train a classifier on a dataset snapshot, evaluate it, fit its OOD detectors,
build the rest of its serving bundle (similarity index, ImageNet mapping) and
its monitoring reference pack, then let the registry gate decide whether it
becomes `champion`:

resolve_dataset -> train -> evaluate -> fit_ood -> build_bundle -> reference -> gate -> publish_champion

Each task calls one function of `ml.stages` (the same ones `visionloop train run`
chains, see `ml.stages.chain.run_training`).

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

        from ml.stages.snapshots import latest_version

        version = latest_version(_settings())
        if version is None:
            # A weekly tick before the first dataset_build has nothing to train on: not an error.
            raise AirflowSkipException("no dataset snapshot in the store yet; dataset_build makes one")
        return version

    @task
    def train(dataset_version: str, params=None) -> str:
        """The train stage in a fresh interpreter (see ml/stages/fresh_process.py), Settings from this env."""
        from ml.stages.fresh_process import run_stage

        profile = (params or {}).get("profile")
        args = ["--dataset", dataset_version, *(["--profile", profile] if profile else [])]
        return run_stage("ml.stages.train", args)["run_id"]

    @task
    def evaluate(mlflow_run_id: str) -> str:
        from ml.stages.evaluate import evaluate as evaluate_stage

        evaluate_stage(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def fit_ood(mlflow_run_id: str) -> str:
        from ml.stages.fit_ood import fit_ood as fit_ood_stage

        fit_ood_stage(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def build_bundle(mlflow_run_id: str) -> str:
        """The similarity index over the training images and the ImageNet mapping, into the run's bundle/."""
        from ml.stages.build_bundle import build_bundle as build_bundle_stage

        build_bundle_stage(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def reference(mlflow_run_id: str) -> str:
        from ml.stages.reference import reference as reference_stage

        reference_stage(_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def gate(mlflow_run_id: str) -> dict:
        """Register the model as `challenger`; promote it to `champion` if the gate passes."""
        from ml.stages.gate import gate as gate_stage

        decision = gate_stage(_settings(), mlflow_run_id)
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
    publish_champion(gate(reference(build_bundle(fit_ood(evaluate(mlflow_run_id))))))


training_pipeline()
