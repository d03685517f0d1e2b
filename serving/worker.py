"""The service's request path: decode, batch concurrent requests into one model call, log, answer.

The service (serving/service.py) only parses HTTP; everything between the upload
bytes and the JSON answer happens here, with the ML work in `ServingBundle.classify`
and the answer's shape in `ml.answers`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml import imaging
from ml.answers import answer_body, decode_refusal, error_body, sniff_format
from ml.bundle import ServingBundle

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """An HTTP status and its JSON body (and extra headers, e.g. Retry-After), ready to send."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None


class ServingMetrics:
    """Prometheus counters beside BentoML's own, exposed on the same /metrics."""

    def __init__(self) -> None:
        import bentoml

        self.predictions = bentoml.metrics.Counter(
            name="visionloop_predictions", documentation="Classified images by predicted class",
            labelnames=["label"])
        self.ood = bentoml.metrics.Counter(name="visionloop_ood_rejections", documentation="Images judged OOD")
        self.feedbacks = bentoml.metrics.Counter(name="visionloop_feedback", documentation="Feedback received",
                                                 labelnames=["label"])
        self.backlog = bentoml.metrics.Gauge(name="visionloop_spool_backlog",
                                             documentation="Logged records not yet in the object store")
        self.batch_size = bentoml.metrics.Histogram(
            name="visionloop_batch_size", documentation="Images classified per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64))
        self.spool_refusals = bentoml.metrics.Counter(
            name="visionloop_spool_refusals", documentation="Requests answered 503: their record was not durable")
        self.feedback_limited = bentoml.metrics.Counter(
            name="visionloop_feedback_rate_limited", documentation="Corrections refused with 429 (rate limit)")
        self.bundle_failures = bentoml.metrics.Counter(
            name="visionloop_bundle_load_failures", documentation="Champion loads refused or failed, by reason",
            labelnames=["reason"])
        self.quarantined = bentoml.metrics.Gauge(
            name="visionloop_spool_quarantined", documentation="Spool batches/files quarantined by the request log")

    def feedback(self, label: str) -> None:
        self.feedbacks.labels(label=label).inc()


class ClassifyWorker:
    """Threads that each drain the waiting requests and classify them in one batch (adaptive batching).

    With two threads one runs the forward pass (it releases the GIL) while the other decodes,
    searches similar images and answers the batch before it, so both cores work.
    """

    def __init__(self, requestlog: Any, max_bytes: int, max_batch: int = 64, max_pixels: int | None = None,
                 formats: tuple[str, ...] = imaging.SERVING_FORMATS, threads: int = 1):
        import queue

        self.requestlog, self.max_bytes, self.max_batch = requestlog, max_bytes, max_batch
        self.max_pixels, self.formats, self.n_threads = max_pixels, formats, max(1, threads)
        self.bundle: ServingBundle | None = None  # swapped whole by the alias poller
        self.metrics = ServingMetrics()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pngs: dict[str, bytes] = {}
        self._threads: list[Any] = []

    def start(self) -> None:
        import threading

        self._threads = [threading.Thread(target=self._run, name=f"classify-{i}", daemon=True)
                         for i in range(self.n_threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)  # one stop mark per thread
        for thread in self._threads:
            thread.join(10)

    async def submit(self, data: bytes, loop: Any) -> Outcome:
        future = loop.create_future()
        self._queue.put((data, future, loop))
        return await future

    def _run(self) -> None:
        while (batch := self._drain()) is not None:
            outcomes = self.process_safely([b[0] for b in batch])
            for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_resolve, future, outcome)

    def _drain(self) -> list | None:
        """The waiting requests (at least one, at most max_batch); None once this thread's stop mark came."""
        import queue

        batch = [self._queue.get()]
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        stops = sum(item is None for item in batch)
        for _ in range(stops - 1):
            self._queue.put(None)  # the other threads' stop marks
        batch = [item for item in batch if item is not None]
        if stops and batch:
            self._queue.put(None)  # answer these first, stop on the next drain
        return None if stops and not batch else batch

    def process_safely(self, blobs: list[bytes]) -> list[Outcome]:
        """`process`, with a bug answered 500 for these requests instead of failing the service."""
        try:
            return self.process(blobs)
        except Exception:
            log.exception("classification failed")
            return [Outcome(500, error_body("internal error while classifying"))] * len(blobs)

    def process(self, blobs: list[bytes]) -> list[Outcome]:
        """Decode each upload, classify the readable ones in one call, log and answer each on its own."""
        import time

        start = time.perf_counter()
        bundle = self.bundle  # one reference for the whole batch: a swap never splits it
        if bundle is None:
            return [Outcome(503, error_body("no champion model loaded yet; try again shortly"),
                            {"Retry-After": "5"})] * len(blobs)
        outcomes: list[Outcome | None] = [None] * len(blobs)
        decoded: list[tuple[int, imaging.Prepared]] = []
        for i, data in enumerate(blobs):
            prepared = self._prepare(data, bundle.imagenet is not None)
            if isinstance(prepared, Outcome):
                outcomes[i] = prepared
            else:
                decoded.append((i, prepared))
        if decoded:
            self.metrics.batch_size.observe(len(decoded))
            for (i, prep), result in zip(decoded, self._classify(bundle, [d[1] for d in decoded]), strict=True):
                outcomes[i] = result if isinstance(result, Outcome) else self._answer_safely(
                    bundle, blobs[i], prep, result, start)
        self.metrics.backlog.set(self.requestlog.backlog())
        return outcomes

    def _prepare(self, data: bytes, preview: bool) -> imaging.Prepared | Outcome:
        """The 32x32 input (and preview) of one upload, or the 4xx outcome that says why not."""
        if len(data) > self.max_bytes:
            return Outcome(413, error_body(f"image is larger than the {self.max_bytes} byte limit"))
        try:
            return imaging.prepare(data, self.formats, self.max_pixels, preview=preview)
        except Exception as exc:  # a decoder bug on one upload must not fail its batch
            status, reason = decode_refusal(exc)
            return Outcome(status, error_body(reason))

    def _classify(self, bundle: ServingBundle, items: list[imaging.Prepared]) -> list[dict | Outcome]:
        """One model call for the batch; if it fails, each image alone, so one bad input fails only itself."""
        try:
            return list(bundle.classify(np.stack([p.pixels for p in items])))
        except Exception:
            if len(items) == 1:
                log.exception("classification failed")
                return [Outcome(500, error_body("internal error while classifying this image"))]
            log.exception("batch classification failed; classifying its %d images one by one", len(items))
        return [self._classify(bundle, [p])[0] for p in items]

    def _answer_safely(self, bundle: ServingBundle, data: bytes, prep: imaging.Prepared, res: dict,
                       start: float) -> Outcome:
        """`_answer`, with a spool that cannot take the record answered 503 (never 200 unlogged)."""
        from ml.requestlog import SpoolUnavailable

        try:
            return self._answer(bundle, data, prep, res, start)
        except SpoolUnavailable as exc:
            self.metrics.spool_refusals.inc()
            return Outcome(503, error_body(f"request log unavailable: {exc.reason}"),
                           {"Retry-After": str(max(1, int(exc.retry_after_s)))})
        except Exception:
            log.exception("answering a classified image failed")
            return Outcome(500, error_body("internal error while answering this image"))

    def _answer(self, bundle: ServingBundle, data: bytes, prep: imaging.Prepared, res: dict, start: float) -> Outcome:
        """Spool the request record and build the response body."""
        import time

        from ml.records import RequestRecord, new_request_id, utc_now_iso

        fmt, ext = sniff_format(data)
        request_id = new_request_id()  # time-ordered: ids sort by arrival
        record = RequestRecord(
            request_id=request_id, created_at=utc_now_iso(), model_version=bundle.version,
            label=res["label"], class_id=res["class_id"], confidence=res["confidence"],
            probabilities=res["probabilities"], is_ood=res["is_ood"], ood_score=res["ood_score"],
            ood_threshold=res["ood_threshold"], ood_detector=res["ood_detector"],
            pixel_entropy=res["pixel_entropy"], hist_distance=res["hist_distance"], embedding=res["embedding"],
            image_sha256="", image_format=fmt, width=prep.width,  # RequestLog hashes the spooled bytes
            height=prep.height, byte_size=len(data), latency_ms=round((time.perf_counter() - start) * 1000, 3))
        self.requestlog.log_request(record, data, ext)
        self.metrics.predictions.labels(label=res["label"]).inc()
        if res["is_ood"]:
            self.metrics.ood.inc()
        body = {"request_id": request_id, "model_version": bundle.version, **answer_body(bundle, res),
                "imagenet": bundle.suggest_imagenet(prep.preview)}
        return Outcome(200, json.dumps(body, separators=(",", ":")).encode())

    def training_png(self, images: Any, image_id: str) -> bytes:
        """A training image upscaled to 128x128 PNG; cached, the index points at few distinct images."""
        if image_id not in self._pngs:
            import io

            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(images.get(image_id)).resize((128, 128), Image.NEAREST).save(buffer, format="PNG")
            if len(self._pngs) > 4096:
                self._pngs.clear()
            self._pngs[image_id] = buffer.getvalue()
        return self._pngs[image_id]


def _resolve(future: Any, outcome: Outcome) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(outcome)
