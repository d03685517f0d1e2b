"""The retrain trigger: significant drift or enough user corrections since the last training, after a cooldown."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from ml import layout
from ml.config import Settings
from ml.monitoring.window import read_json_objects
from ml.records import NONE_OF_THESE
from ml.storage import ObjectNotFound, ObjectStore, open_store

log = logging.getLogger(__name__)
HISTORY = 50  # past triggers kept in retrain_state.json


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def load_state(store: ObjectStore) -> dict:
    try:
        return store.get_json(layout.RETRAIN_STATE)
    except ObjectNotFound:
        return {}


def last_training_time(settings: Settings) -> datetime | None:
    """Start of the newest run in the training experiment, else the champion's creation; None if unknown."""
    try:
        import mlflow

        client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                      max_results=1)
            if runs:
                return datetime.fromtimestamp(runs[0].info.start_time / 1000, tz=UTC)
        champion = client.get_model_version_by_alias(settings.model_name, "champion")
        return datetime.fromtimestamp(champion.creation_timestamp / 1000, tz=UTC)
    except Exception as exc:  # MLflow down or nothing trained yet: fall back to the trigger state
        log.warning("cannot read the last training time from MLflow (%s: %s)", type(exc).__name__, exc)
        return None


def corrections_since(store: ObjectStore, since: datetime | None) -> int:
    """User corrections created after `since`: a label that differs from the prediction, "none of these" included."""
    keys = [k for k in store.list(layout.FEEDBACK) if layout.is_feedback_record(k)]
    count = 0
    for record in read_json_objects(store, keys):
        created = _parse(record.get("created_at"))
        # "None of these" corrects whatever was predicted (its images become outlier data).
        corrected = record.get("label") == NONE_OF_THESE or record.get("label") != record.get("predicted_label")
        if corrected and (since is None or (created and created > since)):
            count += 1
    return count


def decide_retrain(settings: Settings, drift_result: dict, now: datetime | None = None) -> dict:
    """Decide whether to request a retraining, and record the trigger (for the cooldown) when it does."""
    now = now or datetime.now(UTC)
    store = open_store(settings)
    state = load_state(store)
    last_trigger = _parse(state.get("last_trigger_at"))
    since = max([t for t in (last_training_time(settings), last_trigger) if t is not None], default=None)
    corrections = corrections_since(store, since)
    reasons = []
    if drift_result.get("verdict") == "drift":
        drifted = [s["name"] for s in drift_result.get("signals", []) if s.get("drift")]
        reasons.append(f"drift in window {drift_result.get('window_id')} ({', '.join(drifted)})")
    if corrections >= settings.retrain_min_feedback:
        reasons.append(f"{corrections} corrected images since {since.isoformat() if since else 'the start'}")
    decision = {"retrain": False, "reason": "; ".join(reasons) or "no drift and too few corrections",
                "feedback_since_training": corrections, "since": since.isoformat() if since else None}
    if reasons and last_trigger and now - last_trigger < timedelta(hours=settings.retrain_cooldown_hours):
        decision["reason"] = (f"cooldown: last trigger {last_trigger.isoformat()} is less than "
                              f"{settings.retrain_cooldown_hours} h ago; would retrain for: {decision['reason']}")
        return decision
    if reasons:
        decision["retrain"] = True
        entry = {"at": now.isoformat(), "reason": decision["reason"], "window_id": drift_result.get("window_id")}
        store.put_json(layout.RETRAIN_STATE, {"last_trigger_at": now.isoformat(), "reason": decision["reason"],
                                              "history": ([*state.get("history", []), entry])[-HISTORY:]})
    return decision
