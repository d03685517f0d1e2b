"""Drift-run throughput: one window over 10,000 logged requests read from a real S3 server (moto).

Run from the repo root: `.venv/bin/python bench/drift_throughput.py`. Starts
moto's S3 server on a free loopback port (stopped by process group), ships
the requests in 200-record batches as the request-log shipper does, then
times `run_window` (concurrent reads, the production path) against a
baseline that reads the same batches one after another. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.config import Settings  # noqa: E402
from ml.monitoring import synthetic, window  # noqa: E402
from ml.stages import drift  # noqa: E402
from ml.storage import open_store  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("moto_server did not start")


def fresh_run(settings: Settings, store) -> tuple[dict, float]:
    """run_window from an empty watermark; returns the result and its wall time."""
    store.delete("monitoring/watermark.json")
    start = time.perf_counter()
    result = drift.run_window(settings, log_to_mlflow=False)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512, help="embedding size (the seed CNN's is 512)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="visionloop-drift-bench-"))
    port = free_port()
    proc = start_moto(port, tmp / "moto.log")
    try:
        settings = Settings.from_env(home=tmp / "home", s3_endpoint=f"127.0.0.1:{port}", s3_access_key="testing",
                                     s3_secret_key="testing", s3_bucket="bench")
        store = open_store(settings)
        classes = list(settings.classes)
        synthetic.pack(classes, dim=args.dim).save(settings.home / "cache" / "reference" / "1")
        recs = synthetic.records(args.requests, classes, seed=1, dim=args.dim)
        keys = synthetic.write_batches(store, recs, datetime(2026, 3, 1, 9, tzinfo=UTC))
        fresh_run(settings, store)  # warm-up: imports (scipy, sklearn) and connection pool
        result, concurrent_s = fresh_run(settings, store)

        start = time.perf_counter()
        records = window.read_batches(store, window.Watermark().pending(store), workers=16)
        read_concurrent_s = time.perf_counter() - start
        start = time.perf_counter()
        window.read_batches(store, window.Watermark().pending(store), workers=1)
        read_sequential_s = time.perf_counter() - start
        window.READ_WORKERS = 1  # baseline: the same run with one batch read at a time
        _, sequential_s = fresh_run(settings, store)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    print(f"{len(records)} requests in {len(keys)} batches: run_window {concurrent_s:.2f} s "
          f"(reads {read_concurrent_s:.2f} s); sequential baseline {sequential_s:.2f} s (reads {read_sequential_s:.2f} s)")
    print(json.dumps({"requests": len(records), "batches": len(keys), "embedding_dim": args.dim,
                      "cpus": os.cpu_count(), "verdict": result["verdict"],
                      "run_window_s": round(concurrent_s, 3), "read_concurrent_s": round(read_concurrent_s, 3),
                      "baseline_sequential_run_window_s": round(sequential_s, 3),
                      "baseline_sequential_read_s": round(read_sequential_s, 3),
                      "target_s": 30, "mlflow_logging": "excluded (no server in this bench)"}))


if __name__ == "__main__":
    main()
