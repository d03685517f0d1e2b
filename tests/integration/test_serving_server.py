"""`bentoml serve` on 127.0.0.1 against moto's S3: metrics, an S3 outage, a restart; nothing lost or doubled."""

from __future__ import annotations

import re
import time
from collections import Counter

import httpx
import pytest

from ml import layout
from ml.records import RequestRecord
from ml.storage import MinioStore
from tests.fixtures.serving import png_bytes, serving_bundle_dir, start_service  # noqa: F401

pytestmark = pytest.mark.integration


def shipped_ids(store: MinioStore) -> Counter:
    """request_id -> how many times it appears across every batch object."""
    ids: Counter = Counter()
    for key in store.list(layout.REQUESTS):
        if layout.is_request_batch(key):
            ids.update(RequestRecord.from_json(line).request_id
                       for line in store.get_bytes(key).decode().splitlines() if line)
    return ids


def send(url: str, n: int, seed: int = 0) -> list[str]:
    ids = []
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            response = client.post(f"{url}/classify", files={"image": ("a.png", png_bytes(seed=seed + i), "image/png")})
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])
    return ids


def wait_for(predicate, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_outage_and_restart_ship_every_record_exactly_once(serving_bundle_dir, moto_s3, s3_settings,  # noqa: F811
                                                           tmp_path):
    directory, _ = serving_bundle_dir
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "3",
           "VISIONLOOP_HOME": str(s3_settings.home), "VISIONLOOP_S3_ENDPOINT": moto_s3.endpoint,
           "VISIONLOOP_S3_ACCESS_KEY": "testing", "VISIONLOOP_S3_SECRET_KEY": "testing",
           "VISIONLOOP_S3_BUCKET": s3_settings.s3_bucket, "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.3"}
    store = MinioStore(moto_s3.endpoint, "testing", "testing", s3_settings.s3_bucket)
    server, url = start_service(env, tmp_path / "serve.log")
    try:
        assert httpx.get(f"{url}/model_info").json()["model_version"] == "3"
        moto_s3.stop()  # outage: requests are still answered, the spool grows
        during = send(url, 6)
        assert wait_for(lambda: httpx.get(f"{url}/model_info").json()["spool_backlog"] == 6, 10)
        server.stop()  # and the service restarts while the store is still down
        moto_s3.start()  # moto forgets everything on restart: only post-restart objects are counted
        store.check()
        server, url = start_service(env, tmp_path / "serve2.log")
        after = send(url, 4, seed=100)
        assert wait_for(lambda: sum(shipped_ids(store).values()) >= 10, 30)
        time.sleep(1.0)  # a duplicate would come with a later ship cycle
        counts = shipped_ids(store)
        assert set(counts) == set(during + after)
        assert set(counts.values()) == {1}, "a record was shipped twice"
        assert httpx.get(f"{url}/model_info").json()["spool_backlog"] == 0
        metrics = httpx.get(f"{url}/metrics").text
        assert "visionloop_predictions" in metrics and "visionloop_spool_backlog" in metrics
        # Every image this (restarted) server classified went through one model call or another.
        assert re.search(r"^visionloop_batch_size_sum 4\.0$", metrics, re.M), "batch-size histogram"
    finally:
        server.stop()
