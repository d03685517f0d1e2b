"""Two replicas (two `bentoml serve`, each with two workers, its own home and spools) on one S3 store.

Every correction goes to the replica that did NOT classify the image, usually before that one has
shipped the request: it must be answered 503 + Retry-After (never a final 404), and once retried it
must land exactly once, on the right image, with the corrected label.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ml import layout
from ml.records import FeedbackRecord, RequestRecord, new_request_id
from ml.storage import open_store
from tests.fixtures.serving import png_bytes, start_service

pytestmark = pytest.mark.integration
N_IMAGES = 10
INTERVAL_S = 2.0  # long enough that most corrections reach the other replica before the request ships


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(predicate, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def stored_requests(store) -> tuple[dict[str, RequestRecord], Counter]:
    """Every shipped request record by id, and how many batch lines carry each id."""
    records, counts = {}, Counter()
    for key in store.list(layout.REQUESTS):
        if layout.is_request_batch(key):
            for line in store.get_bytes(key).decode().splitlines():
                record = RequestRecord.from_json(line)
                records[record.request_id] = record
                counts[record.request_id] += 1
    return records, counts


def start_replicas(envs: list[dict], tmp_path: Path) -> list[tuple]:
    """Start every replica at once (TensorFlow loads in parallel); stop the started ones if any fails."""
    with ThreadPoolExecutor(len(envs)) as pool:
        futures = [pool.submit(start_service, env, tmp_path / f"replica-{i}.log") for i, env in enumerate(envs)]
        outcomes = [(f.result(), None) if not f.exception() else (None, f.exception()) for f in futures]
    errors = [exc for _, exc in outcomes if exc]
    if errors:
        for started, _ in outcomes:
            if started:
                started[0].stop()
        raise errors[0]
    return [started for started, _ in outcomes]


def both_workers_answer(url: str) -> bool:
    # A new connection per call: the kernel hands each to either worker (keep-alive would stick to one).
    return wait_for(lambda: {httpx.get(f"{url}/model_info").json()["worker"] for _ in range(20)} == {0, 1})


def post_feedback(url: str, request_id: str, label: str) -> httpx.Response:
    return httpx.post(f"{url}/feedback", json={"request_id": request_id, "label": label}, timeout=30)


def classify_and_correct(urls: list[str], classes: list[str]) -> tuple[dict, dict, list[int]]:
    """Round-robin classify; each correction at once to the other replica. Returns sent, answers, 503 waits."""
    sent, answers, waits, pending = {}, {}, [], {}
    for i in range(N_IMAGES):
        data = png_bytes((28 + i, 30), seed=100 + i)
        answer = httpx.post(f"{urls[i % 2]}/classify", files={"image": ("a.png", data, "image/png")}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        request_id = body["request_id"]
        label = classes[(classes.index(body["label"]) + 1 + i % 12) % len(classes)]  # never the predicted one
        sent[request_id], answers[request_id] = data, (body["label"], label)
        pending[request_id] = (urls[1 - i % 2], 0.0)
        _retry_due(pending, answers, waits)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        _retry_due(pending, answers, waits)
    assert not pending, f"corrections still refused after 60 s: {sorted(pending)}"
    return sent, answers, waits


def _retry_due(pending: dict, answers: dict, waits: list[int]) -> None:
    """Send every correction whose Retry-After has passed; 201 settles it, 503 reschedules it."""
    for request_id, (url, due) in list(pending.items()):
        if time.monotonic() < due:
            continue
        response = post_feedback(url, request_id, answers[request_id][1])
        if response.status_code == 201:
            del pending[request_id]
            continue
        assert response.status_code == 503, (response.status_code, response.text)
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= INTERVAL_S + 1
        waits.append(retry_after)
        pending[request_id] = (url, time.monotonic() + retry_after)


def test_two_replicas_of_two_workers_land_each_correction_once_on_its_image(serving_bundle_dir, moto_s3,
                                                                           s3_settings, tmp_path):
    directory, bundle_settings = serving_bundle_dir
    classes = list(bundle_settings.classes)
    homes = [tmp_path / "replica-a", tmp_path / "replica-b"]
    envs = [{"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_HOME": str(home),
             "VISIONLOOP_SERVE_WORKERS": "2", "VISIONLOOP_REQUEST_LOG_INTERVAL_S": str(INTERVAL_S),
             "VISIONLOOP_FEEDBACK_BURST": "100", "VISIONLOOP_S3_ENDPOINT": moto_s3.endpoint,
             "VISIONLOOP_S3_ACCESS_KEY": "testing", "VISIONLOOP_S3_SECRET_KEY": "testing",
             "VISIONLOOP_S3_BUCKET": s3_settings.s3_bucket} for home in homes]
    store = open_store(s3_settings)
    replicas = start_replicas(envs, tmp_path)
    urls = [url for _, url in replicas]
    try:
        assert all(both_workers_answer(url) for url in urls)
        unknown = post_feedback(urls[0], uuid.uuid4().hex, classes[0])  # not a time-ordered id: never shipping
        assert unknown.status_code == 404, unknown.text
        young = post_feedback(urls[1], new_request_id(), classes[0])  # may still be shipping elsewhere
        assert young.status_code == 503 and int(young.headers["Retry-After"]) >= 1, young.text
        sent, answers, waits = classify_and_correct(urls, classes)
        assert waits, "no correction reached the other replica before the request shipped: the gap went untested"
        assert wait_for(lambda: all(store.exists(layout.feedback_record(r)) for r in sent))
        assert wait_for(lambda: set(sent) <= set(stored_requests(store)[0]))
        check_store(store, sent, answers)
        for home in homes:  # each worker of each replica wrote its own spool
            assert {p.name for p in (home / "spool").iterdir() if p.name.startswith("worker-")} == {
                "worker-0", "worker-1"}
    finally:
        for server, _ in replicas:
            server.stop()


def check_store(store, sent: dict[str, bytes], answers: dict[str, tuple[str, str]]) -> None:
    """One request record and one correction per image; both point at the uploaded bytes; labels as sent."""
    time.sleep(INTERVAL_S + 1)  # a duplicate would come with a later ship cycle
    records, counts = stored_requests(store)
    assert {r: counts[r] for r in sent} == {r: 1 for r in sent}, "a request was shipped twice"
    feedback_keys = [k for k in store.list(layout.FEEDBACK) if layout.is_feedback_record(k)]
    assert sorted(feedback_keys) == sorted(layout.feedback_record(r) for r in sent)
    for request_id, data in sent.items():
        predicted, corrected = answers[request_id]
        record = records[request_id]
        assert record.label == predicted and record.image_sha256 == sha(data)
        assert sha(store.get_bytes(record.image_key)) == sha(data)
        feedback = FeedbackRecord.from_json(store.get_bytes(layout.feedback_record(request_id)))
        assert (feedback.request_id, feedback.label, feedback.predicted_label) == (request_id, corrected, predicted)
        assert feedback.image_sha256 == sha(data) and sha(store.get_bytes(feedback.image_key)) == sha(data)
