"""Two BentoML workers on one store: each has its own spool, and a correction lands once on the right image."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ml import layout
from ml.config import Settings
from ml.records import RequestRecord
from ml.storage import open_store
from tests.fixtures.serving import png_bytes, serving_bundle_dir, start_service  # noqa: F401

pytestmark = pytest.mark.integration


def stored_requests(store) -> dict[str, RequestRecord]:
    out = {}
    for key in store.list(layout.REQUESTS):
        if layout.is_request_batch(key):
            for line in store.get_bytes(key).decode().splitlines():
                record = RequestRecord.from_json(line)
                out[record.request_id] = record
    return out


def wait_for(predicate, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_two_workers_own_spools_and_corrections_find_their_image(serving_bundle_dir, tmp_path):  # noqa: F811
    directory, _ = serving_bundle_dir
    home = tmp_path / "home"
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_HOME": str(home), "VISIONLOOP_SERVE_WORKERS": "2",
           "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.3", "VISIONLOOP_FEEDBACK_BURST": "100"}
    store = open_store(Settings.from_env(home=home))
    server, url = start_service(env, tmp_path / "serve.log")
    try:
        # A new connection per call: the kernel hands each to either worker (keep-alive would stick to one).
        assert wait_for(lambda: {httpx.get(f"{url}/model_info").json()["worker"] for _ in range(20)} == {0, 1})
        with httpx.Client(timeout=30) as client:
            sent = {}
            for i in range(16):
                data = png_bytes((30 + i, 30), seed=i)
                sent[client.post(f"{url}/classify", files={"image": ("a.png", data, "image/png")}).json()[
                    "request_id"]] = data
            assert wait_for(lambda: set(sent) <= set(stored_requests(store)))
        # A random worker per correction: about half reach the worker that did not classify the image.
        statuses = [httpx.post(f"{url}/feedback", json={"request_id": r, "label": "ship"}).status_code for r in sent]
        assert statuses == [201] * len(sent)
        assert {p.name for p in (home / "spool").iterdir() if p.name.startswith("worker-")} == {"worker-0", "worker-1"}

        def corrected() -> bool:
            return all(store.exists(layout.feedback_record(r)) for r in sent)

        assert wait_for(corrected)
        for request_id, data in sent.items():
            record = json.loads(store.get_bytes(layout.feedback_record(request_id)))
            assert record["label"] == "ship" and store.get_bytes(record["image_key"]) == data
        assert len([k for k in store.list("feedback/") if layout.is_feedback_record(k)]) == len(sent)
    finally:
        server.stop()
