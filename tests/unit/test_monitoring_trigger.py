"""Retrain trigger: drift or enough corrections since the last training, never within the cooldown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ml import layout
from ml.records import NONE_OF_THESE, FeedbackRecord
from ml.stages import drift
from ml.storage import open_store

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TRAINED = NOW - timedelta(days=3)
NO_DRIFT = {"verdict": "no drift", "window_id": "w1", "signals": []}
DRIFT = {"verdict": "drift", "window_id": "w2", "signals": [{"name": "confidence", "drift": True}]}


@pytest.fixture
def settings(settings, monkeypatch):
    monkeypatch.setattr(drift, "last_training_time", lambda s: TRAINED)
    return settings.with_(retrain_min_feedback=5, retrain_cooldown_hours=24.0)


def add_feedback(settings, n: int, when: datetime, wrong: bool = True, start: int = 0) -> None:
    store = open_store(settings)
    for i in range(start, start + n):
        record = FeedbackRecord(f"r{i:04d}", "cat" if wrong else "dog", "dog", "1", when.isoformat(),
                                layout.feedback_image(f"r{i:04d}", "png"))
        store.put_bytes(layout.feedback_record(record.request_id), record.to_json().encode())


def test_no_drift_and_few_corrections_does_not_retrain(settings):
    add_feedback(settings, 4, NOW - timedelta(hours=1))
    decision = drift.decide_retrain(settings, NO_DRIFT, now=NOW)
    assert decision["retrain"] is False and decision["feedback_since_training"] == 4
    assert not open_store(settings).exists(layout.RETRAIN_STATE)


def test_only_corrections_after_the_last_training_count(settings):
    add_feedback(settings, 10, TRAINED - timedelta(hours=1))
    add_feedback(settings, 3, NOW - timedelta(hours=1), start=100)
    add_feedback(settings, 9, NOW - timedelta(hours=1), wrong=False, start=200)  # confirmations
    assert drift.decide_retrain(settings, NO_DRIFT, now=NOW)["feedback_since_training"] == 3


def test_enough_corrections_trigger_then_cooldown_blocks_then_allows(settings):
    add_feedback(settings, 5, NOW - timedelta(hours=1))
    first = drift.decide_retrain(settings, NO_DRIFT, now=NOW)
    assert first["retrain"] and "corrected images" in first["reason"]
    state = open_store(settings).get_json(layout.RETRAIN_STATE)
    assert state["last_trigger_at"] == NOW.isoformat() and len(state["history"]) == 1

    blocked = drift.decide_retrain(settings, DRIFT, now=NOW + timedelta(hours=2))
    assert not blocked["retrain"] and blocked["reason"].startswith("cooldown")
    # corrections before the trigger were used by it: after the cooldown only drift can fire
    assert drift.decide_retrain(settings, NO_DRIFT, now=NOW + timedelta(hours=25))["retrain"] is False
    later = drift.decide_retrain(settings, DRIFT, now=NOW + timedelta(hours=25))
    assert later["retrain"] and "drift in window w2 (confidence)" in later["reason"]
    assert len(open_store(settings).get_json(layout.RETRAIN_STATE)["history"]) == 2


def test_drift_alone_triggers(settings):
    decision = drift.decide_retrain(settings, DRIFT, now=NOW)
    assert decision["retrain"] and decision["feedback_since_training"] == 0


def test_none_of_these_counts_like_any_correction(settings):
    add_feedback(settings, 3, NOW - timedelta(hours=1))
    store = open_store(settings)
    for i in range(2):
        record = FeedbackRecord(f"n{i}", NONE_OF_THESE, "dog", "1", (NOW - timedelta(hours=1)).isoformat(),
                                layout.feedback_image(f"n{i}", "png"))
        store.put_bytes(layout.feedback_record(record.request_id), record.to_json().encode())
    decision = drift.decide_retrain(settings, NO_DRIFT, now=NOW)
    assert decision["feedback_since_training"] == 5 and decision["retrain"] is True
