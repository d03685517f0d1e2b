"""Each detector: seeded data from the reference distribution must not fire; a shifted one must."""

from __future__ import annotations

import numpy as np
import pytest

from ml.monitoring.detectors import (
    ChiSquareDetector,
    KSDetector,
    MultiKSDetector,
    RateDetector,
    holm_adjust,
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("shift, fires", [(0.0, False), (0.5, True)])
def test_ks_detector(shift, fires):
    detector = KSDetector("x", alpha=0.05).fit(_rng(0).normal(size=2000))
    result = detector.score(_rng(1).normal(shift, 1, size=200))
    assert result.drift is fires
    assert result.threshold == 0.05 and result.n == 200 and 0 <= result.p_value <= 1


@pytest.mark.parametrize("shift, fires", [(0.0, False), (0.6, True)])
def test_multi_ks_bonferroni(shift, fires):
    reference = _rng(0).normal(size=(2000, 8))
    current = _rng(1).normal(size=(200, 8))
    current[:, 3] += shift  # one drifting component among eight
    result = MultiKSDetector("emb").fit(reference).score(current)
    assert result.drift is fires
    if fires:
        assert result.details["worst_dim"] == 3


def test_multi_ks_false_alarm_rate_stays_near_alpha():
    reference = _rng(0).normal(size=(2000, 16))
    detector = MultiKSDetector("emb", alpha=0.05).fit(reference)
    alarms = [detector.score(_rng(100 + i).normal(size=(100, 16))).drift for i in range(30)]
    assert np.mean(alarms) <= 0.1


@pytest.mark.parametrize("prior, fires", [(None, False), ([0.5] + [0.5 / 12] * 12, True)])
def test_chi_square_class_prior_shift(prior, fires):
    detector = ChiSquareDetector(13).fit(_rng(0).integers(0, 13, size=2000))
    result = detector.score(_rng(1).choice(13, size=300, p=prior))
    assert result.drift is fires


def test_chi_square_survives_a_class_the_reference_never_predicted():
    detector = ChiSquareDetector(3).fit(np.array([0, 1] * 500))
    result = detector.score(np.array([0, 1] * 50 + [2]))
    assert np.isfinite(result.statistic)


@pytest.mark.parametrize("rate, fires", [(0.05, False), (0.2, True)])
def test_rate_detector(rate, fires):
    detector = RateDetector("ood").fit(0.05)
    assert detector.score(_rng(3).random(300) < rate).drift is fires


def test_rate_detector_empty_window_is_not_drift():
    assert not RateDetector("ood").fit(0.05).score(np.zeros(0, bool)).drift


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(0.04, 3*0.03), max(0.09, 2*0.04), max(0.09, 0.5)
    assert np.allclose(holm_adjust(p), [0.04, 0.09, 0.09, 0.5])
    assert np.all(holm_adjust(p) >= p)


def test_chi_square_does_not_fire_on_a_clean_window_larger_than_the_reference():
    # Goodness of fit to the reference frequencies as if exact fires here; the two-sample test must not.
    detector = ChiSquareDetector(13).fit(_rng(0).integers(0, 13, size=1000))
    alarms = [detector.score(_rng(10 + i).integers(0, 13, size=10_000)).drift for i in range(20)]
    assert np.mean(alarms) <= 0.15


@pytest.mark.parametrize("shift, fires", [(0.0, False), (0.5, True)])
def test_mmd_permutation_test(shift, fires):
    from ml.monitoring.detectors import MMDDetector

    detector = MMDDetector(n_permutations=40, max_reference=200).fit(_rng(0).normal(size=(400, 4)))
    result = detector.score(_rng(1).normal(shift, 1, size=(60, 4)))
    assert result.drift is fires and 0 < result.p_value <= 1
