"""Benchmark: build the real 13-class snapshot (57,500 images in, 65,000 out) into a temp store.

Run from the repo root: `.venv/bin/python bench/ingest.py`. Each build runs in
its own child process so its peak memory is its own. The baseline is the same
build on one process (decode + Lanczos in the caller, no pool). The last line
of stdout is one JSON object. Target: under 10 s on 2 cores, under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
ARCHIVES = ("cifar10_train_jpg.tar.gz", "extra_superclasses_train.tar.gz")
TARGET_S, TARGET_MB = 10.0, 2048


def one_build(workers: int) -> dict:
    """Build into a fresh temp store in this process; then time a second, reused build."""
    sys.path.insert(0, str(REPO))
    from ml.config import Settings
    from ml.stages import snapshots
    from ml.stages.data import build as build_dataset

    with tempfile.TemporaryDirectory(prefix="visionloop-bench-") as tmp:
        sources = tuple(f"folder:{DATASETS / a}" for a in ARCHIVES)
        settings = Settings.from_env(home=Path(tmp), data_sources=sources)
        started = time.perf_counter()
        result = build_dataset(settings, workers=workers)
        seconds = time.perf_counter() - started
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb, workers_mb = me.ru_maxrss / 1024, kids.ru_maxrss / 1024
        # CPU seconds (this process + its decode workers): comparable even on a busy shared machine.
        main_cpu_s, workers_cpu_s = me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
        started = time.perf_counter()
        reused = build_dataset(settings, workers=workers)
        reuse_s = time.perf_counter() - started
        manifest = snapshots.manifest(settings, result["version"])
    return {"workers": workers, "version": result["version"], "images_in": manifest["images_in"],
            "images_out": manifest["images_out"], "synthetic": sum(manifest["synthetic"].values()),
            "duplicates": manifest["duplicates"], "seconds": round(seconds, 2),
            "images_per_s": round(manifest["images_in"] / seconds, 1), "cpu_seconds": round(main_cpu_s + workers_cpu_s, 2),
            "main_cpu_seconds": round(main_cpu_s, 2), "workers_cpu_seconds": round(workers_cpu_s, 2),
            "peak_rss_mb": round(peak_mb, 1),
            "worker_peak_rss_mb": round(workers_mb, 1), "reuse_seconds": round(reuse_s, 3),
            "reused": reused["reused"]}


def run_child(workers: int) -> dict:
    """One build in a fresh interpreter; its JSON is the last line of its stdout."""
    out = subprocess.run([sys.executable, __file__, "--child", str(workers)], cwd=REPO, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help="decode processes for the measured build")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-process build")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_build(args.child)))
        return
    missing = [a for a in ARCHIVES if not (DATASETS / a).is_file()]
    if missing:
        sys.exit(f"missing {', '.join(missing)} in {DATASETS}")
    for name in ARCHIVES:  # warm the page cache so neither build pays for the first disk read
        (DATASETS / name).read_bytes()
    baseline = None if args.no_baseline else run_child(1)
    result = run_child(args.workers)
    if baseline:
        keys = ("workers", "seconds", "images_per_s", "cpu_seconds", "peak_rss_mb")
        result["baseline"] = {k: baseline[k] for k in keys}
        result["speedup"] = round(baseline["seconds"] / result["seconds"], 2)
        result["same_version_as_baseline"] = baseline["version"] == result["version"]
    result.update(target_seconds=TARGET_S, target_rss_mb=TARGET_MB, cores=len(os.sched_getaffinity(0)),
                  load_avg_1m=round(os.getloadavg()[0], 2),
                  meets_target=result["seconds"] < TARGET_S and result["peak_rss_mb"] < TARGET_MB)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
