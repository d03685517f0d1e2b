"""
### drift_monitoring

Every hour (`VISIONLOOP_DRIFT_SCHEDULE`), test the requests logged since the
watermark against the serving version's reference pack, log the window to the
`visionloop-monitoring` MLflow experiment (requests of a version without a
reference pack are skipped and counted as `n_skipped`), then decide whether to retrain:
significant drift, or at least `VISIONLOOP_RETRAIN_MIN_FEEDBACK` user
corrections since the last training, once the cooldown has passed. A retrain
decision updates the `visionloop_retrain_request` Asset (extra: `reason`),
which schedules `dataset_build` (feedback images included), which schedules
`training_pipeline`. Both tasks call `ml.stages.drift` (as `visionloop monitor run` does).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task
from visionloop_assets import RETRAIN_REQUEST

# Parsed every 30 s by the scheduler: read the schedule from the environment, import nothing heavy.
_SCHEDULE = os.environ.get("VISIONLOOP_DRIFT_SCHEDULE", "@hourly")


@dag(
    dag_id="drift_monitoring",
    schedule=None if _SCHEDULE.lower() == "none" else _SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # two windows at once would race on the watermark
    doc_md=__doc__,
    tags=["visionloop", "monitoring"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
)
def drift_monitoring():
    @task
    def compute_window() -> dict:
        """Test and log the window; returns the result without the per-version detail."""
        from ml.config import Settings
        from ml.stages.drift import run_window

        result = run_window(Settings.from_env())
        return {k: result[k] for k in ("window_id", "verdict", "n_records", "model_version", "signals",
                                       "watermark", "n_skipped", "skipped_versions") if k in result}

    @task
    def decide(window: dict) -> dict:
        from ml.config import Settings
        from ml.stages.drift import decide_retrain

        return decide_retrain(Settings.from_env(), window)

    @task.short_circuit
    def retrain_decided(decision: dict) -> bool:
        """Skip the Asset update unless a retraining was decided."""
        return bool(decision["retrain"])

    @task(outlets=[RETRAIN_REQUEST])
    def request_retrain(decision: dict, *, outlet_events=None) -> str:
        outlet_events[RETRAIN_REQUEST].extra = {"reason": decision["reason"]}
        return decision["reason"]

    decision = decide(compute_window())
    retrain_decided(decision) >> request_retrain(decision)


drift_monitoring()
