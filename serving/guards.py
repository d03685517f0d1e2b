"""Request guards that run before any handler: body limits enforced while streaming, and a rate limit.

`BodyLimit` is a plain ASGI middleware (added with `VisionLoop.add_asgi_middleware`), so it
covers BentoML's own routes (`/classify_batch`) as well as the FastAPI ones, and chunked
bodies that carry no content-length: it counts bytes as they arrive, and once a body passes
its route's limit the handler sees a disconnect, the rest is read and discarded (bounded,
never buffered), and the client gets 413 with a JSON reason.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

FEEDBACK_MAX_BYTES = 16 * 1024  # {request_id, label, source} is under 200 bytes
OTHER_MAX_BYTES = 64 * 1024  # routes that take no upload
MULTIPART_SLACK = 64 * 1024  # multipart framing around the image part
DRAIN_MAX_BYTES = 64 * 1024 * 1024  # read and discard at most this much after a 413 so the client sees it


class BodyLimit:
    """ASGI middleware: 413 with a JSON reason once a request body exceeds its route's byte limit."""

    def __init__(self, app: Any, limits: dict[str, int] | Callable[[], dict[str, int]],
                 default: int = OTHER_MAX_BYTES):
        self.app, self.default = app, default
        self._limits, self.limits = limits, limits if isinstance(limits, dict) else None

    def limit_for(self, path: str) -> int:
        if self.limits is None:  # resolved at the first request: the settings are final by then
            self.limits = self._limits()
        return self.limits.get(path.rstrip("/") or "/", self.default)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:  # refused from the header: the handler never runs
            await _drain(receive)
            await _reject(send, limit)
            return
        state = {"seen": 0, "rejected": False, "started": False}

        async def limited_receive() -> dict:
            if state["rejected"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["rejected"] = True
                    if message.get("more_body", False):
                        await _drain(receive)
                    return {"type": "http.disconnect"}  # the handler stops reading and gives up
            return message

        async def guarded_send(message: dict) -> None:
            if state["rejected"]:
                return  # the 413 goes out below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["rejected"]:
                raise  # a handler's "client disconnected" after the refusal is expected, anything else is not
        if state["rejected"] and not state["started"]:
            await _reject(send, limit)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _reject(send: Any, limit: int) -> None:
    body = json.dumps({"error": f"request body is larger than the {limit} byte limit of this route"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Any) -> None:
    """Discard the rest of a refused body (bounded) BEFORE answering: once a response is complete the
    server stops reading, closes the socket with unread bytes, and the client gets a reset, not the 413."""
    drained = 0
    while drained < DRAIN_MAX_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class RateLimiter:
    """Token buckets keyed by client address: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = float(rate), max(1, int(burst)), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:  # a rate of 0 switches the limit off
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_clients:  # forget the least recently seen client
                self._buckets.popitem(last=False)
            return wait
