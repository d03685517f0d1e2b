"""The drift_monitoring stages: `run_window` (test new requests, log the window to MLflow) and `decide_retrain`.

Both read and write the object store (requests since the watermark, feedback, `monitoring/`) and
MLflow (reference packs, the window's run, the last training time) here; the tests, verdicts and
the decision are the pure functions of ml.monitoring.
"""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime

from ml import layout
from ml.config import Settings
from ml.monitoring import drift, report, trigger
from ml.monitoring.reference import ReferenceMissing, ReferencePack
from ml.monitoring.signals import WindowData
from ml.monitoring.window import Watermark, read_batches, read_json_objects
from ml.records import RequestRecord
from ml.stages import tracking
from ml.stages.reference import load_for_version
from ml.storage import ObjectNotFound, ObjectStore, open_store

log = logging.getLogger(__name__)


def read_feedback(store: ObjectStore, request_ids: list[str] | None = None) -> list[dict]:
    """Feedback records (`feedback/<request_id>.json`), of the given requests only when ids are given; read concurrently."""
    wanted = None if request_ids is None else set(request_ids)
    keys = [k for k in store.list(layout.FEEDBACK) if layout.is_feedback_record(k)
            and (wanted is None or k[len(layout.FEEDBACK):-len(".json")] in wanted)]
    return read_json_objects(store, keys)


def evaluate_versions(settings: Settings, store: ObjectStore, by_version: dict[str, list[RequestRecord]]
                      ) -> tuple[list[dict], dict[str, int]]:
    """Results of the versions with enough requests (largest first) and the record count of skipped versions.

    A version without a reference pack (never registered, served from a local bundle, trained
    before packs existed) can never be tested: its records are counted and skipped instead of
    failing every window from now on. Any other error (MLflow down) propagates: the task retries.
    """
    tested, skipped = [], {}
    for version, recs in sorted(by_version.items(), key=lambda item: -len(item[1])):
        if len(recs) < settings.drift_min_window:
            continue
        try:
            pack = load_for_version(settings, version)
        except ReferenceMissing as exc:
            log.warning("skipping %d requests of model version %s: %s", len(recs), version, exc)
            skipped[version] = len(recs)
            continue
        feedback = read_feedback(store, [r.request_id for r in recs])
        tested.append(drift.evaluate_version(version, recs, pack, feedback, settings.drift_alpha,
                                             settings.drift_min_window))
    return tested, skipped


def run_window(settings: Settings, now: datetime | None = None, log_to_mlflow: bool = True) -> dict:
    """Test the requests logged since the watermark; write the result, then advance the watermark.

    A window below `drift_min_window` requests is not tested and does not move the watermark, so
    its requests roll into the next window. Requests of a version with too few of them while
    another version is tested are counted but not tested (the tail of a version being replaced).
    Requests of a version without a reference pack are counted in `skipped_versions`; when they
    are all there is, the watermark moves past them.
    """
    now = now or datetime.now(UTC)
    store = open_store(settings)
    watermark = Watermark.load(store)
    keys = watermark.pending(store)
    by_version: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in read_batches(store, keys):
        by_version[str(record.model_version)].append(record)
    tested, skipped = evaluate_versions(settings, store, by_version)
    result = drift.window_result(now, len(keys), by_version, tested, skipped, settings.drift_alpha,
                                 settings.drift_min_window)
    advance = drift.should_advance(result)
    next_mark = watermark.advanced(keys) if advance else watermark
    result["watermark"] = {"last_key": next_mark.last_key, "advanced": advance}
    if log_to_mlflow:
        primary = tested[0] if tested else {}
        result["mlflow_run_id"] = log_window(settings, result, primary.get("_data"), primary.get("_pack"))
    store.put_json(layout.monitoring_window(result["window_id"]), result)
    if advance:  # only once the result is safely written: a crash before here re-reads the same batches
        next_mark.save(store)
    log.info("drift window %s: %s over %d requests (%d skipped: no reference pack)", result["window_id"],
             result["verdict"], result["n_records"], result["n_skipped"])
    return result


def log_window(settings: Settings, result: dict, window: WindowData | None, reference: ReferencePack | None) -> str:
    """Log one MLflow run for the window in the monitoring experiment (metrics, plots, report.html); its run id."""
    import mlflow
    from PIL import Image

    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        settings.monitoring_experiment)
    history = _history(client, experiment_id) if window is not None else []
    run = client.create_run(experiment_id, run_name=result["window_id"],
                            tags={"model_version": str(result.get("model_version")), "verdict": result["verdict"],
                                  "window_id": result["window_id"]})
    metrics = dict(result.get("summary", {}), window_size=float(result["n_records"]),
                   skipped_records=float(result.get("n_skipped", 0)))
    for s in result.get("signals", []):
        metrics[f"{s['name']}_statistic"] = s["statistic"]
        metrics[f"{s['name']}_p_value"] = s["p_value"]
    stamp = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(k, float(v), stamp, 0)
                                               for k, v in metrics.items()])
    images = {}
    if window is not None and reference is not None and len(window):
        images = report.plots(window, reference, [*history, result.get("summary", {})])
        for name, data in images.items():
            client.log_image(run.info.run_id, Image.open(io.BytesIO(data)), artifact_file=f"plots/{name}")
    client.log_text(run.info.run_id, report.render_html(result, images), "report.html")
    client.log_dict(run.info.run_id, result, "window.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _history(client, experiment_id: str) -> list[dict]:
    """Metrics of the earlier windows, oldest first (for the over-time plot)."""
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=report.HISTORY_RUNS)
    return [dict(run.data.metrics) for run in reversed(runs)]


def last_training_time(settings: Settings) -> datetime | None:
    """Start of the newest run in the training experiment, else the champion's creation; None if unknown."""
    try:
        client = tracking.client(settings)
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                      max_results=1)
            if runs:
                return datetime.fromtimestamp(runs[0].info.start_time / 1000, tz=UTC)
        champion = client.get_model_version_by_alias(settings.model_name, tracking.CHAMPION)
        return datetime.fromtimestamp(champion.creation_timestamp / 1000, tz=UTC)
    except Exception as exc:  # noqa: BLE001  (MLflow down or nothing trained yet: fall back to the trigger state)
        log.warning("cannot read the last training time from MLflow (%s: %s)", type(exc).__name__, exc)
        return None


def decide_retrain(settings: Settings, window: dict, now: datetime | None = None) -> dict:
    """Decide whether to request a retraining from a `run_window` result; record the trigger (cooldown) when it does.

    Returns {"retrain", "reason", "feedback_since_training", "since"}.
    """
    now = now or datetime.now(UTC)
    store = open_store(settings)
    state = retrain_state(settings)
    last_trigger = trigger.parse_time(state.get("last_trigger_at"))
    since = max([t for t in (last_training_time(settings), last_trigger) if t is not None], default=None)
    corrections = trigger.count_corrections(read_feedback(store), since)
    decision = trigger.decide(window, corrections, since, last_trigger, now, settings.retrain_min_feedback,
                              settings.retrain_cooldown_hours)
    if decision["retrain"]:
        store.put_json(layout.RETRAIN_STATE, trigger.next_state(state, decision, now, window.get("window_id")))
    return decision


def retrain_state(settings: Settings) -> dict:
    """`monitoring/retrain_state.json` (last trigger time, reason, history); empty before the first trigger."""
    try:
        return open_store(settings).get_json(layout.RETRAIN_STATE)
    except ObjectNotFound:
        return {}
