"""VisionLoop's HTTP service: the champion model behind /classify, feedback, similar images and the page.

One `@bentoml.service` class. The FastAPI routes (mounted with `@bentoml.asgi_app`)
give precise status codes and JSON reasons for bad input; `/classify_batch` classifies
the images of one request in one model call. Concurrent `/classify` requests are batched
by `serving.worker.ClassifyWorker`'s threads, which kept lone requests fast where BentoML's
adaptive batching (VISIONLOOP_SERVE_BATCHING=bentoml, kept for bench/serve.py's comparison)
made them wait after a burst. All ML work is `ServingBundle.classify`; preprocessing is
`ml.imaging`. Run: `bentoml serve serving.service:VisionLoop`.

Fail closed: `serving.guards.BodyLimit` bounds every body while it streams (413), uploads
are decoded only in the allowed formats and under the pixel limit, /feedback is rate-limited
per client (429), a request is answered 200 only once its record is durable (else 503 with
Retry-After), and a new champion replaces the served one only after its digests and smoke
test pass (`serving.champion`). The pydantic models in `serving.schemas` are the OpenAPI schemas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Annotated, Any

import bentoml
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.staticfiles import StaticFiles

from ml.answers import error_body
from ml.records import feedback_labels
from serving.guards import FEEDBACK_MAX_BYTES, MULTIPART_SLACK, BodyLimit, RateLimiter
from serving.schemas import ERRORS, BatchItemOut, ClassifyOut, FeedbackIn, FeedbackOut, ModelInfoOut
from serving.worker import ClassifyWorker, Outcome

log = logging.getLogger("visionloop.serving")
STATIC = Path(__file__).parent / "static"
BUNDLE_DIR_ENV = "VISIONLOOP_BUNDLE_DIR"  # serve a bundle directory instead of the registry champion

app = FastAPI(title="VisionLoop", description="Classify an image into 13 classes; correct the answer.",
              docs_url=None, redoc_url=None, openapi_url=None)  # BentoML's /docs covers every route
app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _freeze_heap() -> None:
    """Move the loaded model and libraries out of the garbage collector's sight.

    Full collections otherwise walk TensorFlow's and BentoML's millions of objects
    under load and set the p99 latency: at concurrency 32 it fell from ~340 ms to
    160 ms with the same bundle and bench/serve.py's load generator. Unfreezing
    first lets a swapped-out model's cycles be collected before the new heap is frozen.
    """
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _json(status: int, body: dict | bytes, headers: dict[str, str] | None = None) -> Response:
    content = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _workers() -> int:
    """VISIONLOOP_SERVE_WORKERS, read when the service class is defined (BentoML forks that many)."""
    from ml.config import Settings

    return max(1, Settings.from_env().serve_workers)


def body_limits() -> dict[str, int]:
    """Byte limit per route, from the settings at first use (tests set the environment late)."""
    from ml.config import Settings

    settings = Settings.from_env()
    mb = 1024 * 1024
    return {"/classify": settings.max_upload_bytes + MULTIPART_SLACK, "/feedback": FEEDBACK_MAX_BYTES,
            "/classify_batch": int(settings.max_batch_upload_mb * mb) + MULTIPART_SLACK}


# Each worker has its own request-log spool (one writer per spool): <home>/spool/worker-<i>
# when VISIONLOOP_SERVE_WORKERS > 1, <home>/spool with the default single worker.
# Access logs and per-request OpenTelemetry spans on the hot paths cost more than the HTTP
# parsing itself at hundreds of requests/s; Prometheus /metrics stays on.
@bentoml.service(name="visionloop", workers=_workers(), traffic={"timeout": 60},
                 logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["/classify", "/similar", "/static"]})
@bentoml.asgi_app(app, path="/")
class VisionLoop:
    """Serves the registry champion (hot-swapped when the alias moves) and logs every request."""

    def __init__(self) -> None:
        from ml.bundle import ServingBundle
        from ml.config import Settings
        from ml.requestlog import RequestLog
        from ml.stages.snapshots import TrainingImages
        from ml.storage import open_store
        from serving.champion import ChampionFollower

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast while MLflow is down
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.settings = Settings.from_env()
        self.store = open_store(self.settings)
        self.worker_index = _worker_index()
        self.requestlog = RequestLog(self.settings, self.store, spool_dir=self._spool_dir()).start()
        self.images = TrainingImages(self.store, Path(self.settings.home) / "serving" / "datasets")
        self.worker = ClassifyWorker(self.requestlog, self.settings.max_upload_bytes,
                                     max_pixels=self.settings.max_image_pixels, threads=self.settings.serve_threads)
        self.feedback_limit = RateLimiter(self.settings.feedback_rate_per_s, self.settings.feedback_burst)
        self.follower = ChampionFollower(self.settings, self.worker, on_swap=_freeze_heap)
        self._adaptive = _adaptive_batcher(self.worker) if self.settings.serve_batching == "bentoml" else None
        self._stop = threading.Event()
        bundle_dir = os.environ.get(BUNDLE_DIR_ENV)
        if bundle_dir:
            self.worker.bundle = ServingBundle.from_dir(
                bundle_dir, version=os.environ.get("VISIONLOOP_BUNDLE_VERSION", "local"),
                imagenet=self.settings.imagenet_enabled, runtime=self.settings.inference_runtime,
                runtime_threads=self.settings.openvino_threads,
                similarity_prefilter_dims=self.settings.similarity_prefilter_dims)
            self.worker.bundle.smoke_test()  # a bundle whose classes and outputs disagree never serves
            _freeze_heap()
        else:
            self.follower.refresh()  # freezes the heap once a champion is loaded
        threading.Thread(target=self._housekeeping, args=(not bundle_dir,), name="housekeeping",
                         daemon=True).start()
        if self._adaptive is None:  # the adaptive path batches in BentoML's dispatcher instead
            self.worker.start()

    def _spool_dir(self) -> Path | None:
        """None (VISIONLOOP_SPOOL_DIR, default <home>/spool) for one worker; `worker-<i>` inside it for several."""
        if self.settings.serve_workers <= 1:
            return None
        return Path(self.settings.spool_dir or Path(self.settings.home) / "spool") / f"worker-{self.worker_index}"

    # -- model lifecycle ---------------------------------------------------------------------

    def _housekeeping(self, poll_alias: bool) -> None:
        """Every second: the backlog and quarantine gauges; every alias_poll_seconds: follow the alias."""
        import time

        next_poll = time.monotonic() + self.settings.alias_poll_seconds
        while not self._stop.wait(1.0):
            self.worker.metrics.backlog.set(self.requestlog.backlog())
            self.worker.metrics.quarantined.set(self._quarantined())
            if poll_alias and time.monotonic() >= next_poll:
                self.follower.refresh()
                next_poll = time.monotonic() + self.settings.alias_poll_seconds

    def _quarantined(self) -> int:
        return int(getattr(self.requestlog, "quarantined", 0) or 0)

    def __is_ready__(self) -> bool:
        return self.worker.bundle is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()
        self.worker.stop()
        self.requestlog.stop()

    # -- HTTP handlers (the routes are at the end of this module) -----------------------------

    def model_info(self) -> JSONResponse:
        bundle = self.worker.bundle
        return JSONResponse({
            "ready": bundle is not None, "model_version": bundle and bundle.version,
            "run_id": bundle and bundle.run_id, "dataset_version": bundle and bundle.dataset_version,
            "classes": list(bundle.classes if bundle else self.settings.classes),
            "spool_backlog": self.requestlog.backlog(), "store_ok": self.requestlog.store_ok,
            "quarantined": self._quarantined(), "worker": self.worker_index})

    async def classify(self, request: Request) -> Response:
        data = await self._upload(request)
        if isinstance(data, Outcome):
            return _json(data.status, data.body, data.headers)
        if self._adaptive is not None:
            outcome = await self._adaptive(data)
        else:
            outcome = await self.worker.submit(data, asyncio.get_running_loop())
        return _json(outcome.status, outcome.body, outcome.headers)

    async def _upload(self, request: Request) -> bytes | Outcome:
        """The `image` part's bytes, or the error to answer with."""
        limit = self.settings.max_upload_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + MULTIPART_SLACK:  # BodyLimit's bound, before parsing
            return Outcome(413, error_body(f"upload is larger than the {limit} byte limit"))
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return Outcome(415, error_body("send multipart/form-data with the image in the field 'image'"))
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # malformed multipart, too many parts
            return Outcome(400, error_body(f"malformed multipart body: {getattr(exc, 'detail', exc)}"))
        part = form.get("image")
        if not isinstance(part, UploadFile):
            return Outcome(422, error_body("missing file field 'image'"))
        part_type = (part.content_type or "").split(";")[0].strip().lower()
        if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            return Outcome(415, error_body(f"unsupported type {part_type}; upload an image"))
        data = await part.read(limit + 1)
        await form.close()
        if len(data) > limit:
            return Outcome(413, error_body(f"image is larger than the {limit} byte limit"))
        return data

    async def feedback(self, request: Request) -> Response:
        raw = await request.body()  # first: BodyLimit refuses an oversized body before it takes a token
        wait = self.feedback_limit.acquire(request.client.host if request.client else "unknown")
        if wait > 0:
            self.worker.metrics.feedback_limited.inc()
            return _json(429, error_body("too many corrections from this address; slow down"),
                         {"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            body = FeedbackIn.model_validate_json(raw)
        except ValueError:
            return _json(422, error_body("send JSON {\"request_id\": ..., \"label\": ...} "
                                         "(optional \"source\": \"web\" or \"api\")"))
        bundle = self.worker.bundle
        labels = feedback_labels(bundle.classes if bundle else self.settings.classes)
        if body.label not in labels:
            return _json(422, {"error": f"unknown label {body.label!r}", "valid_labels": labels})
        return await self._log_feedback(body)

    async def _log_feedback(self, body: FeedbackIn) -> Response:
        from ml.requestlog import SpoolUnavailable, UnknownRequest

        try:
            record = await asyncio.to_thread(self.requestlog.log_feedback, body.request_id, body.label, body.source)
        except UnknownRequest:
            return _json(404, error_body(f"unknown request_id {body.request_id!r}"))
        except SpoolUnavailable as exc:
            self.worker.metrics.spool_refusals.inc()
            return _json(503, error_body(f"request log unavailable: {exc.reason}"),
                         {"Retry-After": str(max(1, int(exc.retry_after_s)))})
        self.worker.metrics.feedback(body.label)
        return _json(201, json.loads(record.to_json()))

    async def similar(self, image_id: str) -> Response:
        from ml.storage import StorageError

        try:
            png = await asyncio.to_thread(self.worker.training_png, self.images, image_id)
        except KeyError:
            return _json(404, error_body(f"unknown image id {image_id!r}"))
        except StorageError as exc:
            return _json(503, error_body(f"object store unavailable: {exc}"))
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    # Not `batchable`: one batching path. A client's list is already a batch, and concurrent
    # /classify requests are batched by the worker's threads (bench/serve.py compared the two).
    @bentoml.api
    def classify_batch(self, images: list[Path]) -> list[BatchItemOut]:
        """Classify many images (multipart field `images`, repeated); a bad one gets an error item with its status."""
        if self.worker.bundle is None:
            raise bentoml.exceptions.ServiceUnavailable("no champion model loaded yet")
        return [BatchItemOut.model_validate(json.loads(o.body) | ({} if o.status == 200 else {"status": o.status}))
                for o in self.worker.process([_read_upload(p, self.settings.max_upload_bytes) for p in images])]


def _adaptive_batcher(worker: ClassifyWorker) -> Any:
    """/classify through BentoML's adaptive batching (the CorkDispatcher behind `batchable=True`), same limits."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    dispatcher = CorkDispatcher(max_latency_in_ms=1000, max_batch_size=64, get_batch_size=lambda _: 1,
                                fallback=lambda: Outcome(503, error_body("server overloaded; try again"),
                                                         {"Retry-After": "1"}))
    return dispatcher(worker.process_safely)  # sync: BentoML runs each batch in its thread pool


def _read_upload(path: Path, limit: int) -> bytes:
    """At most limit + 1 bytes of one uploaded file: the worker answers 413 for the oversized ones."""
    with open(path, "rb") as handle:
        return handle.read(limit + 1)


VisionLoop.add_asgi_middleware(BodyLimit, limits=body_limits)


def _worker_index() -> int:
    """0-based index of this BentoML worker process (BentoML numbers them from 1)."""
    from bentoml._internal.context import server_context

    return max(0, (server_context.worker_index or 1) - 1)


# -- routes ------------------------------------------------------------------------------------
# Module-level routes with an async dependency for the service instance. BentoML's class views
# inject `self` through a sync dependency, which FastAPI runs in its thread pool: one thread hop
# per request: /model_info at concurrency 32 went from 1.39 to 0.62 CPU-ms and 755 to 1,608 req/s.


async def _service() -> Any:
    return bentoml.get_current_service()


Service = Annotated[Any, Depends(_service)]  # the VisionLoop instance


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@app.get("/docs", include_in_schema=False)
async def docs() -> Response:
    """BentoML's Swagger UI (its usual home "/" is the upload page); it reads /docs.json."""
    import _bentoml_impl.server as bento_server

    page = Path(bento_server.__file__).parent / "main-openapi.html"
    return FileResponse(page) if page.is_file() else _json(404, error_body("API docs are not bundled"))


@app.get("/model_info", response_model=ModelInfoOut)
async def model_info(service: Service) -> JSONResponse:
    """The model version being served, its classes and the request-log backlog."""
    return service.model_info()


@app.post("/classify", response_model=ClassifyOut, responses=ERRORS, openapi_extra={"requestBody": {
    "required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"image": {"type": "string", "format": "binary"}},
        "required": ["image"]}}}}})
async def classify(request: Request, service: Service) -> Response:
    """Classify one uploaded image (multipart field `image`, up to the upload limit)."""
    return await service.classify(request)


@app.post("/feedback", status_code=201, response_model=FeedbackOut, responses=ERRORS | {404: ERRORS[422]},
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": FeedbackIn.model_json_schema()}}}})
async def feedback(request: Request, service: Service) -> Response:
    """Record the user's label for a classified request: JSON {request_id, label}; the label is a class
    name or `none_of_these` (the image shows none of the classes: it becomes outlier data)."""
    return await service.feedback(request)


@app.get("/similar/{image_id}", responses={200: {"content": {"image/png": {}}}, 404: ERRORS[422], 503: ERRORS[503]})
async def similar(image_id: str, service: Service) -> Response:
    """A training image as a 128x128 PNG (nearest-neighbour upscaling keeps its pixels visible)."""
    return await service.similar(image_id)
