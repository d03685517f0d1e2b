"""Serving benchmark: `bentoml serve` on 127.0.0.1 with request logging on, load from a second process.

Run from the repo root: `.venv/bin/python bench/serve.py`. Serves the registry
champion when MLflow answers, else a freshly built untrained bundle (default
arch, random weights, a synthetic similarity index of realistic size); the JSON
says which. Rows: /classify with 32x32 PNGs and 500x500 JPEGs at concurrency 1,
8 and 32, each with the server's CPU time per request (all its processes) and
the mean images per model call; `http_floor` is BentoML's own /livez at
concurrency 32, what the HTTP stack costs with no work behind it. The load
generator is a small asyncio HTTP/1.1 keep-alive client (one process, loopback
only, bounded count and time) so that it costs the shared CPUs as little as
possible. The last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LEVELS = ((1, 400, 10.0), (8, 1500, 12.0), (32, 4000, 15.0))  # (concurrency, max requests, max seconds)
BOUNDARY = "visionloopbench"


def payloads(kind: str, host: str, n: int = 16) -> list[bytes]:
    """Complete HTTP requests for /classify, each with a different image (kind "livez": GET /livez)."""
    from tests.fixtures.serving import png_bytes

    if kind == "livez":
        return [f"GET /livez HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()]
    out = []
    for seed in range(n):
        image = png_bytes((32, 32), seed) if kind == "png32" else png_bytes((500, 500), seed, fmt="JPEG")
        ext, ctype = ("png", "image/png") if kind == "png32" else ("jpg", "image/jpeg")
        body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.{ext}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
        head = (f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
    return out


async def _client(host: str, port: int, reqs: list[bytes], budget: list[int], deadline: float,
                  latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    while budget[0] > 0 and time.perf_counter() < deadline:
        budget[0] -= 1
        start = time.perf_counter()
        writer.write(reqs[i % len(reqs)])
        i += 1
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors[0] += 1
    writer.close()


async def _load(url: str, kind: str, concurrency: int, count: int, seconds: float) -> dict:
    host, port = url.split("//")[1].split(":")
    reqs = payloads(kind, f"{host}:{port}")
    warm = [concurrency * 4]
    await asyncio.gather(*(_client(host, int(port), reqs, warm, time.perf_counter() + 10, [], [0])
                           for _ in range(concurrency)))
    budget, latencies, errors = [count], [], [0]
    start = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), reqs, budget, start + seconds, latencies, errors)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    endpoint, image = ("/livez", None) if kind == "livez" else ("/classify", kind)
    return {"endpoint": endpoint, "image": image, "concurrency": concurrency, "requests": len(ms),
            "requests_with_warmup": len(ms) + concurrency * 4,
            "rps": round(len(ms) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": errors[0]}


def run_load(url: str, kind: str, concurrency: int, count: int, seconds: float, server_pid: int) -> dict:
    """One row, measured by a second process (this script with --load), with the server's CPU cost."""
    cpu, batches = tree_cpu_seconds(server_pid), batch_totals(url)
    out = subprocess.run([sys.executable, __file__, "--load", url, kind, str(concurrency), str(count), str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    served = row.pop("requests_with_warmup")
    row["server_cpu_ms_per_request"] = round((tree_cpu_seconds(server_pid) - cpu) * 1000 / served, 3)
    calls, images = (after - before for after, before in zip(batch_totals(url), batches, strict=True))
    if kind != "livez":
        row["images_per_model_call"] = round(images / calls, 1) if calls else None
    return row


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and all its descendants (BentoML forks workers)."""
    stats = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or it ended meanwhile
            continue
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, (parent, _) in stats.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def batch_totals(url: str) -> tuple[float, float]:
    """(model calls, images) so far, from the service's visionloop_batch_size histogram."""
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {name: float(value) for name, value in
             re.findall(r"^visionloop_batch_size_(count|sum) ([0-9.e+]+)$", text, re.M)}
    return found.get("count", 0.0), found.get("sum", 0.0)


def predict_on_batch_rate(bundle_dir: Path | None, settings, batch: int = 256, seconds: float = 3.0) -> float:
    """In-process forward passes of the served model: images per second at batch 256."""
    from ml.bundle import ServingBundle

    bundle = ServingBundle.from_dir(bundle_dir) if bundle_dir else ServingBundle.from_registry(settings)
    images = np.random.default_rng(0).integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
    bundle.predictor.predict(images)  # trace once
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        bundle.predictor.predict(images)
        n += batch
    return round(n / (time.perf_counter() - start), 1)


def untrained_bundle(settings, root: Path, arch: str | None = None, width: int | None = None) -> Path:
    """A model with random weights; a 13 x 5000 synthetic similarity index like a full snapshot's."""
    from ml import layout
    from ml.hparams import get_profile
    from ml.similarity import SimilarityIndex
    from tests.fixtures.data import write_tiny_snapshot
    from tests.fixtures.serving import write_bundle_dir

    hp = get_profile("standard", arch)
    snapshot = write_tiny_snapshot(settings, per_class=(24, 8, 8), version="bench0001")
    directory = write_bundle_dir(settings, snapshot, root / "bundle-dir", arch=hp.arch, width=width or hp.width)
    info = json.loads((directory / "bundle" / "bundle.json").read_text())
    rng = np.random.default_rng(0)
    n, dim = 13 * 5000, info["embedding_dim"]
    labels = np.repeat(np.arange(13), 5000)
    ids = np.array([layout.image_id(snapshot.version, "train", i % 312) for i in range(n)])
    index = SimilarityIndex().fit(rng.normal(size=(n, dim)).astype(np.float32), labels, ids)
    index.save(directory / "bundle" / "similarity" / "index.npz")
    return directory


def main(arch: str | None = None, width: int | None = None) -> None:
    """Untrained bundle of `arch`/`width` (default: the standard profile's) when there is no champion."""
    root = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=REPO / ".visionloop" if (REPO / ".visionloop").is_dir() else None))
    for name, sub in (("BENTOML_HOME", "bentoml"), ("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "mpl")):
        os.environ.setdefault(name, str(root / sub))
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                       "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2"})
    from ml.bundle import current_champion_version
    from ml.config import Settings
    from tests.fixtures.serving import start_service

    settings = Settings.from_env(home=root / "home")
    version = current_champion_version(settings)
    env = {"VISIONLOOP_HOME": str(settings.home)}
    bundle_dir = None
    if version is None or arch:
        bundle_dir = untrained_bundle(settings, root, arch, width)
        env["VISIONLOOP_BUNDLE_DIR"] = str(bundle_dir)
        info = json.loads((bundle_dir / "bundle" / "bundle.json").read_text())
        model = (f"untrained {info['arch']} bundle (random weights, width {width or 'default'}, synthetic "
                 "65k-entry similarity index); " + ("--arch given" if arch else "MLflow not reachable or no champion"))
    else:
        model = f"registry champion {settings.model_name} v{version}"
    rate = predict_on_batch_rate(bundle_dir, settings)
    server, url = start_service(env, root / "serve.log")
    rows = []
    try:
        floor = run_load(url, "livez", 32, 40000, 10.0, server.proc.pid)
        print(json.dumps(floor), flush=True)
        for kind in ("png32", "jpeg500"):
            for concurrency, count, seconds in LEVELS:
                rows.append(run_load(url, kind, concurrency, count, seconds, server.proc.pid))
                print(json.dumps(rows[-1]), flush=True)
        import httpx

        backlog = httpx.get(f"{url}/model_info", timeout=10).json()["spool_backlog"]
    finally:
        server.stop()
    print(json.dumps({"model": model, "request_logging": True, "cpus": os.cpu_count(),
                      "spool_backlog_at_end": backlog, "predict_on_batch_images_per_s": rate, "http_floor": floor,
                      "rows": rows}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        parser = argparse.ArgumentParser()
        parser.add_argument("--load", dest="url")
        parser.add_argument("kind")
        parser.add_argument("concurrency", type=int)
        parser.add_argument("count", type=int)
        parser.add_argument("seconds", type=float)
        a = parser.parse_args()
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asyncio.run(_load(a.url, a.kind, a.concurrency, a.count, a.seconds))))
    else:
        parser = argparse.ArgumentParser(description="Serving benchmark; the JSON result is the last stdout line.")
        parser.add_argument("--arch", help="serve an untrained bundle of this arch even when a champion exists")
        parser.add_argument("--width", type=int, help="airnet width for the untrained bundle")
        a = parser.parse_args()
        main(a.arch, a.width)
