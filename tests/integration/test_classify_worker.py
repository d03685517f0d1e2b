"""serving.worker.ClassifyWorker with a smoke bundle and a real request log: batching, threads, bad uploads."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from ml.bundle import ServingBundle
from ml.requestlog import RequestLog
from serving.worker import ClassifyWorker
from tests.fixtures.serving import forget_service_metrics, png_bytes, serving_bundle_dir  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(serving_bundle_dir, tmp_path):  # noqa: F811
    """A started two-thread worker whose model calls are recorded (batch sizes), stopped afterwards."""
    directory, settings = serving_bundle_dir
    requestlog = RequestLog(settings, spool_dir=tmp_path / "spool").start()
    worker = ClassifyWorker(requestlog, max_bytes=100_000, threads=2)
    worker.bundle = ServingBundle.from_dir(directory, version="5", imagenet=False)
    worker.calls = []
    classify = worker.bundle.classify

    def recorded(images):
        worker.calls.append(len(images))
        return classify(images)

    worker.bundle.classify = recorded
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        requestlog.stop()
        forget_service_metrics()


async def _submit_all(worker: ClassifyWorker, blobs: list[bytes]) -> list:
    loop = asyncio.get_running_loop()
    return await asyncio.gather(*(worker.submit(blob, loop) for blob in blobs))


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(worker):
    blobs = [png_bytes((32, 32), seed) for seed in range(24)]
    alone = [json.loads(worker.process([blob])[0].body) for blob in blobs[:3]]
    worker.calls.clear()
    outcomes = asyncio.run(_submit_all(worker, blobs))
    assert [o.status for o in outcomes] == [200] * 24
    bodies = [json.loads(o.body) for o in outcomes]
    assert len({b["request_id"] for b in bodies}) == 24
    assert sum(worker.calls) == 24 and len(worker.calls) < 24, worker.calls  # batched, nothing classified twice
    for body, single in zip(bodies, alone, strict=False):  # a batch never mixes up whose answer is whose
        assert body["label"] == single["label"]
        np.testing.assert_allclose(list(body["probabilities"].values()), list(single["probabilities"].values()),
                                   atol=1e-5)


def test_a_bad_upload_fails_alone_in_its_batch(worker):
    blobs = [png_bytes(seed=1), b"\x89PNG not really", png_bytes(seed=2), b"x" * 100_001]
    outcomes = asyncio.run(_submit_all(worker, blobs))
    assert [o.status for o in outcomes] == [200, 422, 200, 413]
    assert "error" in json.loads(outcomes[1].body)


def test_stop_answers_what_was_queued_and_ends_every_thread(serving_bundle_dir, tmp_path):  # noqa: F811
    directory, settings = serving_bundle_dir
    requestlog = RequestLog(settings, spool_dir=tmp_path / "spool").start()
    worker = ClassifyWorker(requestlog, max_bytes=100_000, threads=3)
    worker.bundle = ServingBundle.from_dir(directory, imagenet=False)
    try:
        worker.start()
        assert [o.status for o in asyncio.run(_submit_all(worker, [png_bytes(seed=s) for s in range(5)]))] == [200] * 5
        worker.stop()
        assert not any(thread.is_alive() for thread in worker._threads)
    finally:
        requestlog.stop()
        forget_service_metrics()


def test_bentoml_adaptive_batching_gives_the_same_answers(worker):
    """VISIONLOOP_SERVE_BATCHING=bentoml: /classify's requests batched by BentoML's dispatcher instead."""
    from serving.service import _adaptive_batcher

    blobs = [png_bytes((32, 32), seed) for seed in range(12)] + [b"GIF8 broken"]
    expected = [json.loads(o.body) for o in worker.process(blobs)]

    async def through_dispatcher() -> list:
        batched = _adaptive_batcher(worker)
        return await asyncio.gather(*(batched(blob) for blob in blobs))

    worker.calls.clear()
    outcomes = asyncio.run(through_dispatcher())
    assert [o.status for o in outcomes] == [200] * 12 + [422]
    assert sum(worker.calls) == 12
    for outcome, want in zip(outcomes[:12], expected, strict=False):
        got = json.loads(outcome.body)
        assert got["label"] == want["label"] and got["request_id"] != want["request_id"]
        np.testing.assert_allclose(list(got["probabilities"].values()), list(want["probabilities"].values()),
                                   atol=1e-5)
