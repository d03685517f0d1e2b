"""One drift window's result, pure: signals per model version, the overall verdict, whether to move on.

`ml.stages.drift.run_window` reads the requests, reference packs and feedback and hands them here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ml.monitoring import report, signals
from ml.monitoring.reference import ReferencePack
from ml.records import RequestRecord


def evaluate_version(version: str, records: list[RequestRecord], pack: ReferencePack, feedback: list[dict],
                     alpha: float, min_window: int) -> dict:
    """All signals for one model version's requests, with the Holm-corrected verdict."""
    data = signals.WindowData.from_records(records)
    results = signals.compute_signals(data, pack, alpha, feedback)
    verdict, rows = signals.verdict(results, alpha, len(data), min_window)
    return {"model_version": version, "n_records": len(data), "verdict": verdict, "signals": rows,
            "n_feedback": len(feedback), "summary": report.summarize(data, pack), "_data": data, "_pack": pack}


def overall(tested: list[dict]) -> str:
    """Drift when any tested version drifted; insufficient data when none could be tested."""
    if not tested:
        return signals.INSUFFICIENT
    return signals.DRIFT if any(t["verdict"] == signals.DRIFT for t in tested) else signals.NO_DRIFT


def window_result(now: datetime, n_batches: int, by_version: dict[str, list[RequestRecord]], tested: list[dict],
                  skipped: dict[str, int], alpha: float, min_window: int) -> dict:
    """The JSON-able window record (`monitoring/windows/<id>.json`); `tested` is largest version first."""
    primary = tested[0] if tested else {}
    return {
        "window_id": f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}", "created_at": now.isoformat(),
        "verdict": overall(tested), "n_records": sum(map(len, by_version.values())), "n_batches": n_batches,
        "alpha": alpha, "min_window": min_window,
        "model_version": primary.get("model_version"), "signals": primary.get("signals", []),
        "summary": primary.get("summary", {}), "n_feedback": primary.get("n_feedback", 0),
        "versions": {v: {"n_records": len(r)} for v, r in by_version.items()},
        "skipped_versions": skipped, "n_skipped": sum(skipped.values()),
        "other_versions": [{k: v for k, v in t.items() if not k.startswith("_")} for t in tested[1:]],
    }


def should_advance(result: dict) -> bool:
    """Move the watermark past a tested window, or past records that can never be tested (no reference pack)."""
    # Records of versions without a pack never become testable: waiting on them would stall forever.
    n = result["n_records"]
    return result["verdict"] != signals.INSUFFICIENT or bool(n) and result["n_skipped"] == n
