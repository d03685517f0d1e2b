"""One drift window: read new requests, test them against their model version's reference, log, advance."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime

from ml import layout
from ml.config import Settings
from ml.monitoring import reference as reference_mod
from ml.monitoring import report, signals
from ml.monitoring.window import Watermark, read_batches, read_json_objects
from ml.records import RequestRecord
from ml.storage import ObjectStore, open_store

log = logging.getLogger(__name__)


def read_feedback(store: ObjectStore, request_ids: list[str]) -> list[dict]:
    """Feedback records of the given requests (feedback/<request_id>.json), read concurrently."""
    wanted = set(request_ids)
    keys = [k for k in store.list(layout.FEEDBACK) if layout.is_feedback_record(k)
            and k[len(layout.FEEDBACK):-len(".json")] in wanted]
    return read_json_objects(store, keys)


def evaluate_version(settings: Settings, store: ObjectStore, version: str, records: list[RequestRecord]) -> dict:
    """All signals for one model version's requests, with the Holm-corrected verdict."""
    pack = reference_mod.load_for_version(settings, version)
    data = signals.WindowData.from_records(records)
    feedback = read_feedback(store, data.request_ids)
    results = signals.compute_signals(data, pack, settings.drift_alpha, feedback)
    verdict, rows = signals.verdict(results, settings.drift_alpha, len(data), settings.drift_min_window)
    return {"model_version": version, "n_records": len(data), "verdict": verdict, "signals": rows,
            "n_feedback": len(feedback), "summary": report.summarize(data, pack), "_data": data, "_pack": pack}


def _overall(tested: list[dict]) -> str:
    if not tested:
        return signals.INSUFFICIENT
    return signals.DRIFT if any(t["verdict"] == signals.DRIFT for t in tested) else signals.NO_DRIFT


def evaluate_versions(settings: Settings, store: ObjectStore, by_version: dict[str, list[RequestRecord]]
                  ) -> tuple[list[dict], dict[str, int]]:
    """Results of the versions with enough requests (largest first) and the record count of skipped versions.

    A version without a reference pack (never registered, served from a local
    bundle, trained before packs existed) can never be tested: its records are
    counted and skipped instead of failing every window from now on.
    """
    tested, skipped = [], {}
    for version, recs in sorted(by_version.items(), key=lambda item: -len(item[1])):
        if len(recs) < settings.drift_min_window:
            continue
        try:
            tested.append(evaluate_version(settings, store, version, recs))
        except reference_mod.ReferenceMissing as exc:
            log.warning("skipping %d requests of model version %s: %s", len(recs), version, exc)
            skipped[version] = len(recs)
    return tested, skipped


def run_window(settings: Settings, now: datetime | None = None, log_to_mlflow: bool = True) -> dict:
    """Test the requests logged since the watermark; write the result, then advance the watermark.

    A window below `drift_min_window` requests is not tested and does not move
    the watermark, so its requests roll into the next window. Requests of a
    version with too few of them while another version is tested are counted
    but not tested (the tail of a version being replaced). Requests of a
    version without a reference pack are counted in `skipped_versions`; when
    they are all there is, the watermark moves past them.
    """
    now = now or datetime.now(UTC)
    store = open_store(settings)
    watermark = Watermark.load(store)
    keys = watermark.pending(store)
    records = read_batches(store, keys)
    by_version: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_version[str(record.model_version)].append(record)
    tested, skipped = evaluate_versions(settings, store, by_version)
    primary = tested[0] if tested else {}
    result = {
        "window_id": f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}", "created_at": now.isoformat(),
        "verdict": _overall(tested), "n_records": len(records), "n_batches": len(keys),
        "alpha": settings.drift_alpha, "min_window": settings.drift_min_window,
        "model_version": primary.get("model_version"), "signals": primary.get("signals", []),
        "summary": primary.get("summary", {}), "n_feedback": primary.get("n_feedback", 0),
        "versions": {v: {"n_records": len(r)} for v, r in by_version.items()},
        "skipped_versions": skipped, "n_skipped": sum(skipped.values()),
        "other_versions": [{k: v for k, v in t.items() if not k.startswith("_")} for t in tested[1:]],
    }
    # Records of versions without a pack never become testable: waiting on them would stall forever.
    advance = result["verdict"] != signals.INSUFFICIENT or bool(records) and result["n_skipped"] == len(records)
    next_mark = watermark.advanced(keys) if advance else watermark
    result["watermark"] = {"last_key": next_mark.last_key, "advanced": advance}
    if log_to_mlflow:
        result["mlflow_run_id"] = report.log_window(settings, result, primary.get("_data"), primary.get("_pack"))
    store.put_json(layout.monitoring_window(result["window_id"]), result)
    if advance:  # only once the result is safely written: a crash before here re-reads the same batches
        next_mark.save(store)
    log.info("drift window %s: %s over %d requests (%d skipped: no reference pack)", result["window_id"],
             result["verdict"], len(records), result["n_skipped"])
    return result
