"""The retrain decision, pure: significant drift or enough user corrections since the last training, after a cooldown.

`ml.stages.drift.decide_retrain` reads the feedback records, the trigger state and the last
training time, calls `decide`, and stores `next_state` when it says retrain.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ml.records import NONE_OF_THESE

HISTORY = 50  # past triggers kept in retrain_state.json


def parse_time(stamp: str | None) -> datetime | None:
    """An ISO 8601 stamp as an aware datetime (UTC when it has no zone); None for none."""
    if not stamp:
        return None
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def count_corrections(records: list[dict], since: datetime | None) -> int:
    """Feedback records created after `since` whose label differs from the prediction, "none of these" included."""
    count = 0
    for record in records:
        created = parse_time(record.get("created_at"))
        # "None of these" corrects whatever was predicted (its images become outlier data).
        corrected = record.get("label") == NONE_OF_THESE or record.get("label") != record.get("predicted_label")
        if corrected and (since is None or (created and created > since)):
            count += 1
    return count


def decide(drift_result: dict, corrections: int, since: datetime | None, last_trigger: datetime | None,
           now: datetime, min_feedback: int, cooldown_hours: float) -> dict:
    """{"retrain", "reason", "feedback_since_training", "since"}; a reason within the cooldown does not retrain."""
    reasons = []
    if drift_result.get("verdict") == "drift":
        drifted = [s["name"] for s in drift_result.get("signals", []) if s.get("drift")]
        reasons.append(f"drift in window {drift_result.get('window_id')} ({', '.join(drifted)})")
    if corrections >= min_feedback:
        reasons.append(f"{corrections} corrected images since {since.isoformat() if since else 'the start'}")
    decision = {"retrain": False, "reason": "; ".join(reasons) or "no drift and too few corrections",
                "feedback_since_training": corrections, "since": since.isoformat() if since else None}
    if reasons and last_trigger and now - last_trigger < timedelta(hours=cooldown_hours):
        decision["reason"] = (f"cooldown: last trigger {last_trigger.isoformat()} is less than "
                              f"{cooldown_hours} h ago; would retrain for: {decision['reason']}")
        return decision
    decision["retrain"] = bool(reasons)
    return decision


def next_state(state: dict, decision: dict, now: datetime, window_id: str | None) -> dict:
    """`monitoring/retrain_state.json` after a trigger: its time (for the cooldown), reason and recent history."""
    entry = {"at": now.isoformat(), "reason": decision["reason"], "window_id": window_id}
    return {"last_trigger_at": now.isoformat(), "reason": decision["reason"],
            "history": [*state.get("history", []), entry][-HISTORY:]}
