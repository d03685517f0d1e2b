"""The real service over a damaged spool, and two services on one home.

A service whose store is down answers requests from its spool; the spool is then damaged the
way a power loss or an operator would (one segment's image bytes lost, a torn record line, a
stray sealed file) and the service restarts against a working store. It must start, ship every
undamaged request exactly once with the client's bytes, set the damaged ones aside in
`quarantine/` (never shipping wrong bytes) and report them. A second service on the same home
must refuse to start, naming the setting that gives it its own spool.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from ml.storage import MinioStore
from tests.fixtures.servers import free_port
from tests.fixtures.serving import png_bytes, serving_bundle_dir, start_service  # noqa: F401
from tests.integration.test_spool_faults import ready, shipped

pytestmark = pytest.mark.integration


def service_env(directory: Path, home: Path, endpoint: str, bucket: str) -> dict[str, str]:
    return {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "4",
            "VISIONLOOP_HOME": str(home), "VISIONLOOP_S3_ENDPOINT": endpoint,
            "VISIONLOOP_S3_ACCESS_KEY": "testing", "VISIONLOOP_S3_SECRET_KEY": "testing",
            "VISIONLOOP_S3_BUCKET": bucket, "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.3"}


def spooled_requests(spool: Path) -> dict[str, int]:
    """request_id -> segment number, read from the segments' record lines."""
    where = {}
    for jsonl in sorted((spool / "segments").glob("*.jsonl")):
        for line in jsonl.read_bytes().splitlines():
            envelope = json.loads(line)
            if envelope.get("kind") == "request":
                where[envelope["record"]["request_id"]] = int(jsonl.stem)
    return where


def test_damaged_spool_ships_the_rest_exactly_once_and_quarantines_the_damage(
        serving_bundle_dir, moto_s3, s3_settings, tmp_path):  # noqa: F811
    directory, _ = serving_bundle_dir
    home = tmp_path / "home"
    dead_store = f"127.0.0.1:{free_port()}"  # nothing listens: everything stays in the spool
    server, url = start_service(service_env(directory, home, dead_store, s3_settings.s3_bucket), tmp_path / "a.log")
    answered = {}
    try:
        for seed in range(12):
            data = png_bytes(size=(20 + seed, 32), seed=100 + seed)
            response = httpx.post(f"{url}/classify", files={"image": ("a.png", data, "image/png")}, timeout=60)
            assert response.status_code == 200, response.text
            answered[response.json()["request_id"]] = hashlib.sha256(data).hexdigest()
            time.sleep(0.1)  # spread the requests over several segments
    finally:
        server.stop()
    spool = home / "spool"
    where = spooled_requests(spool)
    assert set(where) == set(answered), "an answered request is not in the spool"
    victim = min(where.values())
    (spool / "segments" / f"{victim:012d}.bin").write_bytes(b"")  # its image bytes are gone
    last = spool / "segments" / f"{max(where.values()):012d}.jsonl"
    with open(last, "ab") as handle:
        handle.write(b'{"kind": "request", "record": [torn')  # a line cut by a power loss
    (spool / "sealed").mkdir(exist_ok=True)
    (spool / "sealed" / "stray.json").write_text("not a sealed batch")
    damaged = {rid for rid, seq in where.items() if seq == victim}
    assert damaged and len(damaged) < len(answered)

    env = service_env(directory, home, moto_s3.endpoint, s3_settings.s3_bucket)
    server, url = start_service(env, tmp_path / "b.log")
    try:
        store = MinioStore(moto_s3.endpoint, "testing", "testing", s3_settings.s3_bucket)
        intact = set(answered) - damaged
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not intact <= set(shipped(store)[0]):
            time.sleep(0.5)
        counts, rows = shipped(store)
        assert {rid: counts[rid] for rid in intact} == {rid: 1 for rid in intact}
        assert not damaged & set(counts), "a request whose bytes were lost was shipped anyway"
        for rid in intact:
            assert hashlib.sha256(store.get_bytes(rows[rid]["image_key"])).hexdigest() == answered[rid]
        assert ready(url, 10)
        info = httpx.get(f"{url}/model_info", timeout=10).json()
        assert info["store_ok"] and info["quarantined"] >= 1
        assert any((spool / "quarantine").iterdir())
    finally:
        server.stop()


def test_a_second_service_on_the_same_home_refuses_to_start(serving_bundle_dir, tmp_path):  # noqa: F811
    directory, settings = serving_bundle_dir
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_HOME": str(tmp_path / "home"),
           "VISIONLOOP_LOCAL_STORE": str(tmp_path / "store")}
    first, url = start_service(env, tmp_path / "first.log")
    try:
        with pytest.raises(Exception):  # noqa: B017  (never ready: its worker cannot take the spool)
            second, _ = start_service(env, tmp_path / "second.log", timeout_s=45)
            second.stop()
        assert "VISIONLOOP_SPOOL_DIR" in (tmp_path / "second.log").read_text()
        assert httpx.post(f"{url}/classify", files={"image": ("a.png", png_bytes(), "image/png")},
                          timeout=30).status_code == 200
    finally:
        first.stop()
