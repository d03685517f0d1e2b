"""Fault injection on the real service process: disk full, then kill -9 before fsync, after seal, after ship.

`bentoml serve` runs with `VISIONLOOP_FAILPOINT` naming the points in order and a marker folder,
so each point fires once: the first write fails with ENOSPC (503, nothing spooled), then the
worker SIGKILLs itself before an fsync, after sealing a batch and after shipping one but before
forgetting it. After each death the worker restarts (BentoML respawns it, or the test restarts
the service) and recovers the spool. At the end every request answered 200 is in the store
exactly once, with the sha256 of the bytes the client sent, and the service is ready.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ml import layout
from ml.storage import MinioStore
from tests.fixtures.serving import png_bytes, serving_bundle_dir, start_service  # noqa: F401

pytestmark = pytest.mark.integration
POINTS = ("enospc_on_write", "before_fsync", "after_seal", "after_ship_before_delete")


def shipped(store: MinioStore) -> tuple[Counter, dict[str, dict]]:
    """request_id -> copies across batch objects, and request_id -> its record."""
    counts: Counter = Counter()
    rows = {}
    for key in store.list(layout.REQUESTS):
        if layout.is_request_batch(key):
            for line in store.get_bytes(key).decode().splitlines():
                row = json.loads(line)
                counts[row["request_id"]] += 1
                rows[row["request_id"]] = row
    return counts, rows


def classify(url: str, data: bytes) -> httpx.Response | None:
    """One upload; None when the worker died under it (connection dropped)."""
    try:
        return httpx.post(f"{url}/classify", files={"image": ("a.png", data, "image/png")}, timeout=60)
    except httpx.HTTPError:
        return None


def ready(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


class Faults:
    """The service under test plus what the client saw."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.starts = env, logs, 0
        self.answered: dict[str, str] = {}  # request_id -> sha256 of the bytes sent
        self.refused = 0
        self.server, self.url = None, ""
        self.seed = 0

    def start(self) -> None:
        self.starts += 1
        self.server, self.url = start_service(self.env, self.logs / f"serve{self.starts}.log")

    def send(self) -> None:
        self.seed += 1
        data = png_bytes(size=(24 + self.seed % 9, 32), seed=self.seed)
        response = classify(self.url, data)
        if response is not None and response.status_code == 200:
            self.answered[response.json()["request_id"]] = hashlib.sha256(data).hexdigest()
        elif response is not None:
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            self.refused += 1

    def until_fired(self, marker: Path) -> None:
        """Send requests until the point fired (a request waits while BentoML respawns the worker)."""
        for _ in range(60):
            if marker.exists():
                return
            self.send()
            time.sleep(0.05)
        assert marker.exists(), f"failpoint {marker.name} never fired"

    def serving_again(self) -> None:
        time.sleep(0.5)  # let the last kill land before probing readiness
        if not ready(self.url, 120):  # no respawn: restart the service like an operator would
            self.server.stop()
            self.start()


def test_kill_points_and_disk_full_keep_every_answered_request_exactly_once(
        serving_bundle_dir, moto_s3, s3_settings, tmp_path):  # noqa: F811
    directory, _ = serving_bundle_dir
    marks = tmp_path / "fired"
    marks.mkdir()
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "3",
           "VISIONLOOP_HOME": str(s3_settings.home), "VISIONLOOP_S3_ENDPOINT": moto_s3.endpoint,
           "VISIONLOOP_S3_ACCESS_KEY": "testing", "VISIONLOOP_S3_SECRET_KEY": "testing",
           "VISIONLOOP_S3_BUCKET": s3_settings.s3_bucket, "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.3",
           "VISIONLOOP_FAILPOINT": ",".join(POINTS), "VISIONLOOP_FAILPOINT_MARK": str(marks)}
    store = MinioStore(moto_s3.endpoint, "testing", "testing", s3_settings.s3_bucket)
    faults = Faults(env, tmp_path)
    faults.start()
    try:
        for point in POINTS:
            faults.until_fired(marks / point)
        faults.serving_again()
        assert faults.refused == 1  # the ENOSPC write: 503 + Retry-After, not a 200 without a record
        for _ in range(3):
            faults.send()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not set(faults.answered) <= set(shipped(store)[0]):
            time.sleep(0.5)
        counts, rows = shipped(store)
        assert set(faults.answered) <= set(counts), "an answered request never reached the store"
        assert {rid: counts[rid] for rid in faults.answered} == {rid: 1 for rid in faults.answered}
        for rid, sha in faults.answered.items():
            assert rows[rid]["image_sha256"] == sha
            assert hashlib.sha256(store.get_bytes(rows[rid]["image_key"])).hexdigest() == sha
        assert ready(faults.url, 10)
        info = httpx.get(f"{faults.url}/model_info", timeout=10).json()
        assert info["store_ok"] and info.get("quarantined", 0) == 0
    finally:
        faults.server.stop()
