"""VisionLoop's HTTP service: the champion model behind /classify, feedback, similar images and the page.

One `@bentoml.service` class. The FastAPI routes (mounted with `@bentoml.asgi_app`)
give precise status codes and JSON reasons for bad input; `/classify_batch` is a
BentoML batchable API (adaptive batching). All ML work is `ServingBundle.classify`;
preprocessing is `ml.imaging`. Run: `bentoml serve serving.service:VisionLoop`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any

import bentoml
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.staticfiles import StaticFiles

from ml.classify_worker import ClassifyWorker, Outcome, error_body

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


def _json(status: int, body: dict | bytes) -> Response:
    content = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type="application/json")


# One worker: the request-log spool has a single writer, so batch keys sort in ship order.
# Access logs and per-request OpenTelemetry spans on the hot paths cost more than the HTTP
# parsing itself at hundreds of requests/s; Prometheus /metrics stays on.
@bentoml.service(name="visionloop", workers=1, traffic={"timeout": 60},
                 logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["/classify", "/similar", "/static"]})
@bentoml.asgi_app(app, path="/")
class VisionLoop:
    """Serves the registry champion (hot-swapped when the alias moves) and logs every request."""

    def __init__(self) -> None:
        from ml.bundle import ServingBundle, TrainingImages
        from ml.config import Settings
        from ml.requestlog import RequestLog
        from ml.storage import open_store

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast while MLflow is down
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.settings = Settings.from_env()
        self.store = open_store(self.settings)
        self.requestlog = RequestLog(self.settings, self.store).start()
        self.images = TrainingImages(self.store, Path(self.settings.home) / "serving" / "datasets")
        self.worker = ClassifyWorker(self.requestlog, self.settings.max_upload_bytes)
        self._stop = threading.Event()
        bundle_dir = os.environ.get(BUNDLE_DIR_ENV)
        if bundle_dir:
            self.worker.bundle = ServingBundle.from_dir(bundle_dir, version=os.environ.get(
                "VISIONLOOP_BUNDLE_VERSION", "local"))
            _freeze_heap()
        else:
            self._refresh()  # freezes the heap once a champion is loaded
        threading.Thread(target=self._housekeeping, args=(not bundle_dir,), name="housekeeping",
                         daemon=True).start()
        self.worker.start()

    # -- model lifecycle ---------------------------------------------------------------------

    def _refresh(self) -> None:
        """Load the champion if the alias moved: build the new bundle fully, then swap one reference."""
        from ml.bundle import ServingBundle, current_champion_version

        version = current_champion_version(self.settings)
        current = self.worker.bundle
        if version is None or (current is not None and current.version == version):
            return
        try:
            self.worker.bundle = ServingBundle.from_registry(self.settings)  # in-flight batches keep the old one
            log.info("serving model version %s (was %s)", version, current and current.version)
        except Exception:
            log.exception("could not load champion version %s; still serving %s", version,
                          current and current.version)
            return
        current = None  # the last reference here: the old model's cycles are collected below
        _freeze_heap()

    def _housekeeping(self, poll_alias: bool) -> None:
        """Every second: the backlog gauge; every alias_poll_seconds: follow the champion alias."""
        import time

        next_poll = time.monotonic() + self.settings.alias_poll_seconds
        while not self._stop.wait(1.0):
            self.worker.metrics.backlog.set(self.requestlog.backlog())
            if poll_alias and time.monotonic() >= next_poll:
                self._refresh()
                next_poll = time.monotonic() + self.settings.alias_poll_seconds

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
            "spool_backlog": self.requestlog.backlog(), "store_ok": self.requestlog.store_ok})

    async def classify(self, request: Request) -> Response:
        data = await self._upload(request)
        if isinstance(data, Outcome):
            return _json(data.status, data.body)
        outcome = await self.worker.submit(data, asyncio.get_running_loop())
        return _json(outcome.status, outcome.body)

    async def _upload(self, request: Request) -> bytes | Outcome:
        """The `image` part's bytes, or the error to answer with."""
        limit = self.settings.max_upload_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + 65536:  # multipart framing is small
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
        try:
            body = await request.json()
            request_id, label = str(body["request_id"]), str(body["label"])
            source = "web" if body.get("source") == "web" else "api"
        except Exception:
            return _json(422, error_body("send JSON {\"request_id\": ..., \"label\": ...}"))
        bundle = self.worker.bundle
        classes = list(bundle.classes if bundle else self.settings.classes)
        if label not in classes:
            return _json(422, {"error": f"unknown label {label!r}", "valid_labels": classes})
        from ml.requestlog import UnknownRequest

        try:
            record = await asyncio.to_thread(self.requestlog.log_feedback, request_id, label, source)
        except UnknownRequest:
            return _json(404, error_body(f"unknown request_id {request_id!r}"))
        self.worker.metrics.feedback(label)
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

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def classify_batch(self, images: list[Path]) -> list[dict]:
        """Classify many images (multipart field `images`, repeated); an unreadable one gets an error item."""
        if self.worker.bundle is None:
            raise bentoml.exceptions.ServiceUnavailable("no champion model loaded yet")
        return [json.loads(o.body) | ({} if o.status == 200 else {"status": o.status})
                for o in self.worker.process([p.read_bytes() for p in images])]


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


@app.get("/model_info")
async def model_info(service: Service) -> JSONResponse:
    """The model version being served, its classes and the request-log backlog."""
    return service.model_info()


@app.post("/classify", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"image": {"type": "string", "format": "binary"}},
    "required": ["image"]}}}}})
async def classify(request: Request, service: Service) -> Response:
    """Classify one uploaded image (multipart field `image`, up to the upload limit)."""
    return await service.classify(request)


@app.post("/feedback", status_code=201)
async def feedback(request: Request, service: Service) -> Response:
    """Record the user's label for a classified request: JSON {request_id, label}."""
    return await service.feedback(request)


@app.get("/similar/{image_id}", responses={200: {"content": {"image/png": {}}}})
async def similar(image_id: str, service: Service) -> Response:
    """A training image as a 128x128 PNG (nearest-neighbour upscaling keeps its pixels visible)."""
    return await service.similar(image_id)
