"""The serving guards on their own: the per-client token bucket and the champion follower's backoff."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.guards import RateLimiter


def test_token_bucket_allows_a_burst_then_refills_at_the_rate():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.acquire("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", now=0.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.acquire("b", now=0.0) == 0.0  # another client has its own bucket
    assert limiter.acquire("a", now=0.5) == 0.0
    assert limiter.acquire("a", now=0.5) > 0


def test_token_bucket_forgets_the_oldest_clients_beyond_its_size():
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    for client in ("a", "b", "c"):
        limiter.acquire(client, now=0.0)
    assert set(limiter._buckets) == {"b", "c"}
    assert RateLimiter(rate=0, burst=1).acquire("a") == 0.0  # rate 0 switches the limit off


def test_broken_champion_is_retried_with_backoff_and_the_old_one_keeps_serving(monkeypatch):
    from ml.bundle import BundleRejected
    from ml.stages import serving_bundle
    from serving.champion import ChampionFollower

    old = SimpleNamespace(version="1")
    counter = SimpleNamespace(n=0)
    worker = SimpleNamespace(bundle=old, metrics=None)
    settings = SimpleNamespace(alias_poll_seconds=30.0, bundle_retry_max_s=300.0)
    follower = ChampionFollower(settings, worker)
    monkeypatch.setattr(serving_bundle, "champion_version", lambda s: "2")

    def broken():
        counter.n += 1
        raise BundleRejected("smoke", "outputs 13 probabilities but the bundle lists 12 classes")

    monkeypatch.setattr(follower, "_load", broken)
    swaps = [follower.refresh(now=float(t)) for t in range(0, 1200, 30)]  # 20 minutes of 30 s polls
    assert worker.bundle is old and not any(swaps)
    # tries at 0, 60, 180, 420 s (the wait doubles), then every 300 s (the cap): 6 loads, not 40
    assert counter.n == 6 and follower.failures["2"][0] == 6
    new = SimpleNamespace(version="2")
    monkeypatch.setattr(follower, "_load", lambda: new)
    assert follower.refresh(now=1e6) and worker.bundle is new and "2" not in follower.failures


@pytest.mark.parametrize("env", [{"VISIONLOOP_SERVE_BATCHING": "celery"}, {"VISIONLOOP_SERVE_THREADS": "0"}])
def test_serving_settings_refuse_values_the_service_cannot_run(env):
    from ml.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env=env)
