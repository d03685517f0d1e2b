"""Serving benchmark: today's serving path vs the new default, and the two batching paths, in one run.

Run from the repo root: `.venv/bin/python bench/serve.py`. Serves the registry
champion when MLflow answers (it must have an OpenVINO export), else a freshly
built untrained bundle (default arch, random weights, its OpenVINO export, a
synthetic similarity index of realistic size); the JSON says which. Three
`bentoml serve` processes with request logging on, one bundle: `baseline` is
today's serving path (TensorFlow forward pass, the worker's own batching
in one thread, one worker), `candidate` the defaults (OpenVINO export), `adaptive`
the candidate with /classify through BentoML's adaptive batching instead of
the worker's thread. Rows: /classify with 32x32 PNGs at concurrency 1, 8 and
32, servers alternating within each level (so load on the shared machine hits
all alike), each with the server's CPU time per request (all its processes)
and the mean images per model call; 500x500 JPEGs on the candidate;
`http_floor` is BentoML's own /livez at concurrency 32. The load generator is
a small asyncio HTTP/1.1 keep-alive client in a second process. The last
stdout line is the JSON result, with `speedup_vs_baseline_c32`, `p99_ms_c32`,
`p50_ms_c1` and `batching_worker_vs_bentoml`.

Design experiments: `--rounds N` repeats the interleaved rows (the summary takes the
upper-median round), `--experiment KEY=VALUE[,KEY=VALUE]` adds a server (the candidate
with that environment, e.g. VISIONLOOP_SERVE_THREADS=2), `--quick` keeps baseline,
candidate and experiments at concurrency 1 and 32 only, `--bundle-dir` reuses a built bundle.
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


def predict_on_batch_rate(bundle_dir: Path | None, settings, runtime: str, batch: int = 256,
                          seconds: float = 3.0) -> float:
    """In-process forward passes of the served model on one runtime: images per second at batch 256."""
    from ml.bundle import ServingBundle

    if bundle_dir:
        bundle = ServingBundle.from_dir(bundle_dir, imagenet=False, runtime=runtime)
    else:
        from dataclasses import replace

        from ml.stages import serving_bundle

        bundle = serving_bundle.load(replace(settings, inference_runtime=runtime))
    images = np.random.default_rng(0).integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
    bundle.predictor.predict(images)  # trace / compile once
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        bundle.predictor.predict(images)
        n += batch
    return round(n / (time.perf_counter() - start), 1)


def untrained_bundle(settings, root: Path, arch: str | None = None, width: int | None = None) -> Path:
    """A model with random weights, its OpenVINO export, a 13 x 5000 synthetic similarity index like a full snapshot's."""
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
    export_bundle_openvino(directory, snapshot.arrays["val"])
    return directory


def export_bundle_openvino(directory: Path, val: tuple[np.ndarray, np.ndarray]) -> dict:
    """`<dir>/bundle/openvino/` from `<dir>/model.keras`, precision chosen on `val` as training does."""
    import keras

    from ml.inference import Predictor
    from ml.runtime import export_openvino

    model = keras.models.load_model(directory / "model.keras", compile=False)
    return export_openvino(Predictor(model), directory / "bundle" / "openvino", check=val)


def served_model(settings, root: Path, arch: str | None, width: int | None,
                 reuse: Path | None = None) -> tuple[str, Path | None]:
    """(description, bundle dir or None for the registry champion); the served bundle must have an OpenVINO export."""
    from ml.stages import serving_bundle

    if reuse is not None:
        if not (reuse / "bundle" / "openvino" / "model.xml").is_file():
            raise SystemExit(f"{reuse} has no bundle/openvino/ export")
        return f"bundle dir {reuse} (--bundle-dir)", reuse
    version = None if arch else serving_bundle.champion_version(settings)
    if version is None:
        bundle_dir = untrained_bundle(settings, root, arch, width)
        info = json.loads((bundle_dir / "bundle" / "bundle.json").read_text())
        return (f"untrained {info['arch']} bundle (random weights, width {width or 'default'}, synthetic 65k-entry "
                "similarity index, OpenVINO export built here); "
                + ("--arch given" if arch else "MLflow not reachable or no champion")), bundle_dir
    if serving_bundle.load(settings).predictor.__class__.__name__ != "OpenVINOPredictor":
        raise SystemExit(f"champion v{version} has no loadable OpenVINO export; run with --arch airnet "
                         "to bench an untrained bundle that has one")
    return f"registry champion {settings.model_name} v{version}", None


# name -> environment of one server. baseline: today's serving path (TensorFlow forward pass, the worker's
# own batching with one thread, one worker, exact similar-image scan); candidate: the defaults; adaptive: the candidate through BentoML's
# adaptive batching (CorkDispatcher) instead of the worker's own thread.
SERVERS = {"baseline": {"VISIONLOOP_INFERENCE_RUNTIME": "tensorflow", "VISIONLOOP_SERVE_BATCHING": "worker",
                        "VISIONLOOP_SERVE_WORKERS": "1", "VISIONLOOP_SERVE_THREADS": "1",
                        "VISIONLOOP_SIMILARITY_PREFILTER_DIMS": "0"},
           "candidate": {},
           "adaptive": {"VISIONLOOP_SERVE_BATCHING": "bentoml"}}


def start_servers(base_env: dict, candidate_env: dict, root: Path, names: tuple[str, ...]) -> dict:
    """One `bentoml serve` per named entry of SERVERS (started one after another), each with its own home."""
    from tests.fixtures.serving import start_service

    servers = {}
    try:
        for name in names:
            extra = SERVERS[name] if name in SERVERS else dict(kv.split("=", 1) for kv in name.split(","))
            # own BentoML home too: a server starting wipes the Prometheus files of the one before it
            env = base_env | {"VISIONLOOP_HOME": str(root / f"home-{name}"), "BENTOML_HOME": str(root / f"bentoml-{name}")}
            env |= candidate_env if name != "baseline" else {}
            servers[name] = start_service(env | extra, root / f"serve-{name}.log")
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict) -> None:
    for server, _ in servers.values():
        server.stop()


def interleaved_rows(servers: dict, rounds: int, levels: tuple = LEVELS) -> dict[str, list[dict]]:
    """png32 rows per server and concurrency, alternating servers within each level so load noise hits all alike."""
    rows: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(rounds):
        for concurrency, count, seconds in levels:
            for name, (server, url) in servers.items():
                row = run_load(url, "png32", concurrency, count, seconds, server.proc.pid) | {"server": name}
                rows[name].append(row)
                print(json.dumps(row), flush=True)
    return rows


def best_of(rows: list[dict], concurrency: int) -> dict:
    """The row with the (upper) median req/s among the rounds at one concurrency."""
    found = sorted((r for r in rows if r["concurrency"] == concurrency), key=lambda r: r["rps"])
    return found[len(found) // 2]


def summary(rows: dict[str, list[dict]]) -> dict:
    """The #15 target numbers and the batching comparison (median round per level)."""
    cand, base = best_of(rows["candidate"], 32), best_of(rows["baseline"], 32)
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "images_per_model_call")
    compare = {f"c{c}": {name: {k: best_of(rows[name], c).get(k) for k in keys} | {
        "p50_ms_every_round": [r["p50_ms"] for r in rows[name] if r["concurrency"] == c]}
        for name in ("candidate", "adaptive")} for c, _, _ in LEVELS} if "adaptive" in rows else None
    return {"speedup_vs_baseline_c32": round(cand["rps"] / base["rps"], 2), "rps_c32": cand["rps"],
            "baseline_rps_c32": base["rps"], "p99_ms_c32": cand["p99_ms"],
            "p50_ms_c1": best_of(rows["candidate"], 1)["p50_ms"],
            "targets_met": {"speedup_ge_2": cand["rps"] >= 2 * base["rps"], "p99_c32_le_150": cand["p99_ms"] <= 150,
                            "p50_c1_le_8": best_of(rows["candidate"], 1)["p50_ms"] <= 8},
            "batching_worker_vs_bentoml": compare}


def main(arch: str | None = None, width: int | None = None, rounds: int = 1,
         candidate_env: dict | None = None, quick: bool = False, reuse: Path | None = None,
         experiments: tuple[str, ...] = ()) -> None:
    """Baseline, candidate and BentoML-batching servers on one bundle, measured interleaved in one run."""
    root = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=REPO / ".visionloop" if (REPO / ".visionloop").is_dir() else None))
    for name, sub in (("BENTOML_HOME", "bentoml"), ("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "mpl")):
        os.environ.setdefault(name, str(root / sub))
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                       "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2"})
    from ml.config import Settings

    settings = Settings.from_env(home=root / "home")
    model, bundle_dir = served_model(settings, root, arch, width, reuse)
    base_env = {"VISIONLOOP_BUNDLE_DIR": str(bundle_dir)} if bundle_dir else {}
    rates = {rt: predict_on_batch_rate(bundle_dir, settings, rt) for rt in ("tensorflow", "auto")}
    load_before = os.getloadavg()
    names = ("baseline", "candidate") + (() if quick else ("adaptive",)) + tuple(experiments)
    servers = start_servers(base_env, candidate_env or {}, root, names)
    try:
        server, url = servers["candidate"]
        floor = None if quick else run_load(url, "livez", 32, 40000, 10.0, server.proc.pid)
        print(json.dumps(floor), flush=True)
        rows = interleaved_rows(servers, rounds, (LEVELS[0], LEVELS[2]) if quick else LEVELS)
        jpeg = [] if quick else [run_load(url, "jpeg500", c, n, s, server.proc.pid) for c, n, s in LEVELS]
        import httpx

        backlog = httpx.get(f"{url}/model_info", timeout=10).json()["spool_backlog"]
    finally:
        stop_servers(servers)
    print(json.dumps({"model": model, "request_logging": True, "cpus": os.cpu_count(),
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      "candidate_env": candidate_env or {}, "spool_backlog_at_end": backlog,
                      "predict_on_batch_images_per_s": rates, "http_floor": floor, **summary(rows),
                      "rows": rows, "jpeg500_candidate": jpeg}))


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
        parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median round is reported")
        parser.add_argument("--candidate-env", action="append", default=[], metavar="KEY=VALUE",
                            help="extra environment of the candidate and adaptive servers (design experiments)")
        parser.add_argument("--quick", action="store_true",
                            help="design experiments: baseline and candidate only, concurrency 1 and 32, no JPEG rows")
        parser.add_argument("--experiment", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                            help="one more server: the candidate with this environment, measured interleaved")
        parser.add_argument("--bundle-dir", type=Path, help="serve this bundle dir (with bundle/openvino/) instead")
        a = parser.parse_args()
        main(a.arch, a.width, a.rounds, dict(kv.split("=", 1) for kv in a.candidate_env), a.quick, a.bundle_dir,
             tuple(a.experiment))
