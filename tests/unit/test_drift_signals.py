"""Signals and the corrected verdict on seeded synthetic windows."""

from __future__ import annotations

import numpy as np
import pytest

from ml.config import CIFAR10_CLASSES, DEFAULT_SUPERCLASSES
from ml.monitoring import signals, synthetic
from ml.monitoring.signals import WindowData

CLASSES = list(CIFAR10_CLASSES + DEFAULT_SUPERCLASSES)


@pytest.fixture(scope="module")
def pack():
    return synthetic.pack(CLASSES, n=2000, seed=0)


def _window(n: int, seed: int, shift: float = 0.0) -> WindowData:
    return WindowData.from_records(synthetic.records(n, CLASSES, seed=seed, shift=shift))


def _run(window: WindowData, pack, feedback=None) -> tuple[str, dict]:
    results = signals.compute_signals(window, pack, 0.05, feedback)
    verdict, rows = signals.verdict(results, 0.05, len(window), min_window=50)
    return verdict, {row["name"]: row for row in rows}


def test_same_distribution_raises_no_alarm(pack):
    verdict, rows = _run(_window(300, seed=7), pack)
    assert verdict == signals.NO_DRIFT
    assert set(rows) == {"hist_distance", "pixel_entropy", "embedding", "ood_rate", "confidence", "predicted_class"}
    assert all(row["tested"] and 0 <= row["p_adjusted"] <= 1 for row in rows.values())


def test_clean_windows_keep_the_family_wise_false_alarm_rate(pack):
    alarms = [_run(_window(200, seed=1000 + i), pack)[0] == signals.DRIFT for i in range(20)]
    assert np.mean(alarms) <= 0.15


@pytest.mark.parametrize("signal", ["hist_distance", "pixel_entropy", "embedding", "ood_rate", "confidence"])
def test_shifted_window_fires_each_signal(pack, signal):
    verdict, rows = _run(_window(400, seed=9, shift=0.5), pack)
    assert verdict == signals.DRIFT
    assert rows[signal]["drift"], rows[signal]


def test_class_prior_shift_fires_only_the_class_signal(pack):
    window = _window(2000, seed=11)
    keep = np.flatnonzero((window.predicted == 0) | (np.arange(len(window)) % 4 == 0))[:300]
    subset = WindowData(*(getattr(window, f)[keep] for f in ("confidence", "pixel_entropy", "hist_distance",
                                                               "predicted", "is_ood", "embeddings")),
                        [window.request_ids[i] for i in keep])
    verdict, rows = _run(subset, pack)
    assert verdict == signals.DRIFT and rows["predicted_class"]["drift"]


def _feedback(window: WindowData, n: int, wrong_share: float) -> list[dict]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        predicted = CLASSES[int(window.predicted[i])]
        label = CLASSES[(int(window.predicted[i]) + 1) % len(CLASSES)] if rng.random() < wrong_share else predicted
        out.append({"request_id": window.request_ids[i], "label": label, "predicted_label": predicted})
    return out


def test_feedback_disagreement_enters_the_verdict_only_with_enough_feedback(pack):
    window = _window(300, seed=13)
    verdict, rows = _run(window, pack, _feedback(window, 10, wrong_share=1.0))
    assert not rows["feedback_disagreement"]["tested"] and verdict == signals.NO_DRIFT
    verdict, rows = _run(window, pack, _feedback(window, 120, wrong_share=0.8))
    assert rows["feedback_disagreement"]["tested"] and rows["feedback_disagreement"]["drift"]
    assert verdict == signals.DRIFT
    per_class = rows["feedback_disagreement"]["details"]["per_class"]
    assert sum(c["n"] for c in per_class.values()) == 120


def test_small_window_is_insufficient_data(pack):
    verdict, rows = _run(_window(20, seed=3, shift=1.0), pack)
    assert verdict == signals.INSUFFICIENT
    assert not any(row["drift"] for row in rows.values())
