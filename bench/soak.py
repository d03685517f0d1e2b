"""Soak test: a real `bentoml serve` under mixed valid and hostile load; nothing valid fails, nothing leaks.

Run from the repo root: `.venv/bin/python bench/soak.py [--seconds 60] [--concurrency 64]`.
Serves a freshly built untrained bundle (random weights) with the local object store. The
load (one asyncio process, loopback) mixes valid PNG/JPEG uploads and corrections with
hostile inputs: pixel bombs, TIFF/PPM files, garbage, chunked bodies over the limit, huge
JSON, malformed feedback and mixed /classify_batch calls. At the end it flushes the request
log and checks the store: every request answered 200 is stored exactly once and its stored
image bytes are the ones sent. Reports 5xx counts (valid vs hostile), statuses per kind, RSS
growth of the server's process tree after warm-up, and `ok`; the last stdout line is the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KINDS = (("png", 40), ("jpeg", 10), ("correction", 12), ("batch", 4), ("bomb", 5), ("tiff", 4), ("ppm", 2),
         ("garbage", 5), ("chunked_huge", 3), ("json_huge", 3), ("bad_feedback", 8), ("model_info", 4))
VALID = {"png", "jpeg", "correction", "model_info"}


class Soak:
    """The load generator's state: what was answered, with which bytes, and every status seen."""

    def __init__(self, url: str, seed: int = 0):
        self.url, self.rng = url, random.Random(seed)
        self.sent: dict[str, str] = {}  # request_id answered 200 -> sha256 of the bytes sent
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.transport_errors: Counter = Counter()
        self.images = self._images()

    def _images(self) -> dict[str, list[bytes]]:
        from tests.fixtures.serving import png_bytes
        from tests.integration.test_serving_api import bomb

        return {"png": [png_bytes((self.rng.randint(16, 200), self.rng.randint(16, 200)), seed=i) for i in range(24)],
                "jpeg": [png_bytes((640, 480), seed=i, fmt="JPEG") for i in range(6)],
                "bomb": [bomb(12000), bomb(40000)], "tiff": [png_bytes(fmt="TIFF")], "ppm": [png_bytes(fmt="PPM")],
                "garbage": [os.urandom(2000), b"GIF89a" + os.urandom(100), png_bytes((64, 64))[:120]]}

    async def one(self, client, kind: str) -> None:
        try:
            status = await getattr(self, f"_{kind}", self._upload)(client, kind)
        except Exception as exc:  # noqa: BLE001  (counted and reported, never fatal to the soak)
            self.transport_errors[f"{kind}:{type(exc).__name__}"] += 1
            if os.environ.get("SOAK_DEBUG"):
                print("transport error", kind, repr(exc), repr(exc.__cause__ or exc.__context__), file=sys.stderr)
            return
        self.statuses[kind][status] += 1

    async def _upload(self, client, kind: str) -> int:
        data = self.rng.choice(self.images[kind])
        response = await client.post(f"{self.url}/classify", files={"image": ("x", data, "image/png")})
        if response.status_code == 200:
            self.sent[response.json()["request_id"]] = hashlib.sha256(data).hexdigest()
        return response.status_code

    async def _batch(self, client, kind: str) -> int:
        picks = [self.rng.choice(self.images[k]) for k in ("png", "png", "tiff", "bomb", "garbage", "png")]
        response = await client.post(f"{self.url}/classify_batch",
                                     files=[("images", (f"{i}", d, "image/png")) for i, d in enumerate(picks)])
        if response.status_code == 200:
            for data, item in zip(picks, response.json(), strict=True):
                if "request_id" in item:
                    self.sent[item["request_id"]] = hashlib.sha256(data).hexdigest()
        return response.status_code

    async def _correction(self, client, kind: str) -> int:
        if not self.sent:
            return await self._upload(client, "png")
        request_id = self.rng.choice(list(self.sent))
        response = await client.post(f"{self.url}/feedback", json={"request_id": request_id, "label": "cat"})
        return response.status_code

    async def _bad_feedback(self, client, kind: str) -> int:
        body = self.rng.choice([b"not json", b'{"request_id": "ffff", "label": "cat"}', b'{"label": 3}',
                                b'{"request_id": "x", "label": "unicorn"}'])
        return (await client.post(f"{self.url}/feedback", content=body)).status_code

    async def _json_huge(self, client, kind: str) -> int:
        body = b'{"request_id": "' + b"a" * 3_000_000 + b'", "label": "cat"}'
        return (await client.post(f"{self.url}/feedback", content=body)).status_code

    async def _chunked_huge(self, client, kind: str) -> int:
        async def body():
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            for _ in range(48):  # 3 MB against a 1 MB limit, no content-length
                yield b"\0" * 65536
            yield b"\r\n--b--\r\n"

        response = await client.post(f"{self.url}/classify", content=body(),
                                     headers={"content-type": "multipart/form-data; boundary=b"})
        return response.status_code

    async def _model_info(self, client, kind: str) -> int:
        return (await client.get(f"{self.url}/model_info")).status_code

    async def run(self, concurrency: int, seconds: float) -> None:
        import httpx

        names, weights = zip(*KINDS, strict=True)
        deadline = time.monotonic() + seconds
        # Idle connections expire before uvicorn's 5 s keep-alive timeout: otherwise a POST can race the
        # server closing an idle socket and fail with a read error (a client-side race, no server fault).
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                              keepalive_expiry=4.0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            async def user() -> None:
                while time.monotonic() < deadline:
                    await self.one(client, self.rng.choices(names, weights)[0])

            await asyncio.gather(*(user() for _ in range(concurrency)))


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and its descendants (BentoML forks its worker), in MiB."""
    parents, rss = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            rss[int(entry)] = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
    tree, grew = {root}, True
    while grew:
        children = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(rss.get(p, 0) for p in tree) / 2**20


def check_store(settings, sent: dict[str, str]) -> dict:
    """Every answered request stored once, its stored image byte-identical to what was sent."""
    from ml import layout
    from ml.records import RequestRecord
    from ml.storage import open_store

    store = open_store(settings)
    counts: Counter = Counter()
    records = {}
    for key in store.list(layout.REQUESTS):
        if layout.is_request_batch(key):
            for line in store.get_bytes(key).decode().splitlines():
                if line:
                    record = RequestRecord.from_json(line)
                    counts[record.request_id] += 1
                    records[record.request_id] = record
    missing = [r for r in sent if r not in counts]
    doubled = [r for r, n in counts.items() if n > 1]
    mismatched = [r for r, sha in sent.items() if r in records and (
        records[r].image_sha256 != sha or hashlib.sha256(store.get_bytes(records[r].image_key)).hexdigest() != sha)]
    return {"answered_200": len(sent), "stored": len(counts), "missing": len(missing), "stored_twice": len(doubled),
            "bytes_mismatch": len(mismatched)}


async def wait_flushed(url: str, timeout_s: float = 120) -> int:
    import httpx

    backlog = -1
    async with httpx.AsyncClient(timeout=10) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            backlog = (await client.get(f"{url}/model_info")).json()["spool_backlog"]
            if backlog == 0:
                return 0
            await asyncio.sleep(0.5)
    return backlog


def summarize(soak: Soak, rss: dict, store: dict, backlog: int, seconds: float) -> dict:
    statuses = {k: {str(s): n for s, n in sorted(c.items())} for k, c in sorted(soak.statuses.items())}
    valid_5xx = sum(n for k, c in soak.statuses.items() if k in VALID for s, n in c.items() if s >= 500)
    hostile_5xx = sum(n for k, c in soak.statuses.items() if k not in VALID for s, n in c.items() if s >= 500)
    requests = sum(sum(c.values()) for c in soak.statuses.values())
    valid_transport = sum(n for k, n in soak.transport_errors.items() if k.split(":")[0] in VALID)
    growth = round(100 * (rss["end"] - rss["warm"]) / rss["warm"], 2)
    ok = (valid_5xx == 0 and hostile_5xx == 0 and valid_transport == 0 and growth < 10 and backlog == 0 and store["missing"] == 0
          and store["stored_twice"] == 0 and store["bytes_mismatch"] == 0)
    return {"ok": ok, "seconds": seconds, "requests": requests, "rps": round(requests / seconds, 1),
            "valid_5xx": valid_5xx, "hostile_5xx": hostile_5xx, "valid_transport_errors": valid_transport,
            "transport_errors": dict(soak.transport_errors),
            "rss_mb": rss, "rss_growth_pct": growth, "backlog_after_flush": backlog, "store": store,
            "statuses": statuses, "cpus": os.cpu_count()}


def main(seconds: float, concurrency: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=REPO / ".visionloop" if (REPO / ".visionloop").is_dir() else None))
    for name, sub in (("BENTOML_HOME", "bentoml"), ("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "mpl")):
        os.environ.setdefault(name, str(root / sub))
    os.environ.update({"BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2"})
    from ml.config import Settings
    from tests.fixtures.data import write_tiny_snapshot
    from tests.fixtures.serving import start_service, write_bundle_dir

    settings = Settings.from_env(home=root / "home")
    snapshot = write_tiny_snapshot(settings, per_class=(6, 4, 2), version="soak0001")
    bundle_dir = write_bundle_dir(settings, snapshot, root / "bundle-dir")
    env = {"VISIONLOOP_HOME": str(settings.home), "VISIONLOOP_BUNDLE_DIR": str(bundle_dir),
           "VISIONLOOP_BUNDLE_VERSION": "1", "VISIONLOOP_MAX_UPLOAD_MB": "1", "VISIONLOOP_MAX_BATCH_UPLOAD_MB": "4",
           "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "1"}
    server, url = start_service(env, root / "serve.log")
    try:
        soak = Soak(url)
        asyncio.run(soak.run(concurrency, min(10.0, seconds / 4)))  # warm-up: caches, TF graphs, allocator pools
        rss = {"warm": round(tree_rss_mb(server.proc.pid), 1)}
        start = time.monotonic()
        asyncio.run(soak.run(concurrency, seconds))
        elapsed = round(time.monotonic() - start, 1)
        rss["end"] = round(tree_rss_mb(server.proc.pid), 1)
        backlog = asyncio.run(wait_flushed(url))
        store = check_store(settings, soak.sent)
    finally:
        server.stop()
    print(json.dumps(summarize(soak, rss, store, backlog, elapsed)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serving soak test; the JSON result is the last stdout line.")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    main(args.seconds, args.concurrency)
