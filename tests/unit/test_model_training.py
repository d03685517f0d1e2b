"""Training mechanics a user relies on: the one-cycle schedule and the time budget."""

from __future__ import annotations

import time

import pytest

from ml.train import OneCycle


def test_one_cycle_warms_up_peaks_and_anneals_to_zero():
    schedule = OneCycle(peak=0.4, warmup=0.25, total_steps=100)
    rates = [schedule.rate(p / 100) for p in range(101)]
    assert rates[0] == 0 and rates[25] == pytest.approx(0.4) and rates[100] == pytest.approx(0, abs=1e-9)
    assert all(a <= b for a, b in zip(rates[:25], rates[1:26], strict=False))  # rises during warm-up
    assert all(a >= b for a, b in zip(rates[25:], rates[26:], strict=False))  # then only falls


def test_time_budget_drives_progress_when_the_machine_is_slow():
    schedule = OneCycle(peak=0.4, warmup=0.25, total_steps=10_000, max_minutes=0.5)
    schedule.start = time.monotonic() - 15  # half the 30 s budget used after only 10 steps
    schedule.step = 10
    assert schedule.progress() == pytest.approx(0.5, abs=0.01)
    schedule.start = time.monotonic() - 31
    assert schedule.progress() == 1.0  # the schedule has reached 0: training stops here


def test_without_budget_progress_is_steps():
    schedule = OneCycle(peak=0.4, warmup=0.25, total_steps=200)
    schedule.step = 50
    assert schedule.progress() == pytest.approx(0.25)
