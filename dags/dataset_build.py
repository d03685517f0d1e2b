"""
### dataset_build

Build the 13-class 32x32 dataset snapshot from `VISIONLOOP_DATA_SOURCES`
(default: CIFAR-10, the CIFAR-100 superclasses and the user corrections under
`feedback/`): fetch and decode -> validate (skip unreadable files, drop exact
duplicates, fail on an empty class) -> balance (stable splits by image
identity, corrections to train or the held-out `corrections` split, rotated
copies in train only) -> snapshot under `datasets/<version>/`. The outlier
images (`VISIONLOOP_OUTLIER_SOURCES` and the users' "none of these" corrections)
are decoded in the fetch step and stored with the snapshot under `outliers/`.

Runs when `drift_monitoring` requests a retrain (Asset
`visionloop_retrain_request`) or when triggered by hand. Tasks pass only the
version, a content hash of the inputs; intermediate arrays live under
`staging/<version>/` in the object store. Each task calls one function of
`ml.stages.data` (`visionloop data build` runs the same steps in one call).
When the same inputs were built before, every step is a no-op. The last task updates the Asset
`visionloop_dataset` with extra `{"version", "reused"}`, which schedules
`training_pipeline`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task
from visionloop_assets import DATASET, RETRAIN_REQUEST


@dag(
    dag_id="dataset_build",
    schedule=[RETRAIN_REQUEST],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # two builds of the same version would write the same staging keys
    doc_md=__doc__,
    tags=["visionloop", "data"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
)
def dataset_build():
    @task
    def fetch() -> str:
        """Download/read and decode every source; returns the dataset version."""
        from ml.config import Settings
        from ml.stages.data import fetch as fetch_sources

        return fetch_sources(Settings.from_env())["version"]

    @task
    def validate(version: str) -> str:
        from ml.config import Settings
        from ml.stages.data import validate as validate_pool

        return validate_pool(Settings.from_env(), version)["version"]

    @task
    def balance(version: str) -> str:
        from ml.config import Settings
        from ml.stages.data import balance as balance_splits

        return balance_splits(Settings.from_env(), version)["version"]

    @task(outlets=[DATASET])
    def snapshot(version: str, *, outlet_events=None) -> dict:
        """Write the snapshot and announce its version to training_pipeline."""
        from ml.config import Settings
        from ml.stages.data import write

        result = write(Settings.from_env(), version)
        outlet_events[DATASET].extra = {"version": result["version"], "reused": result["reused"]}
        return result

    snapshot(balance(validate(fetch())))


dataset_build()
