"""Benchmark: Airflow's per-task overhead with CeleryExecutor, against the tasks' own durations.

Run from the repo root: `.venv/bin/python bench/celery.py [--workers 2]`. Starts a throwaway
PostgreSQL, Redis and S3 (moto) on loopback (tests/fixtures code), runs `visionloop platform up`
in services mode and the smoke pipeline (dataset_build -> training_pipeline on a tiny folder
source), then reads every task instance from Airflow's database:
  own        start_date -> end_date (the task process, imports included)
  schedule   upstream end -> scheduled_dttm (the scheduler noticing the upstream success)
  queue      scheduled_dttm -> queued_dttm (the scheduler handing it to Celery)
  pickup     queued_dttm -> start_date (broker, worker, task process start-up)
The baseline is the tasks' own time: overhead is reported as a share of it.
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.servers import MotoS3  # noqa: E402
from tests.fixtures.services import Postgres, Redis, scaleout_env  # noqa: E402

VISIONLOOP = str(Path(sys.executable).parent / "visionloop")
QUERY = """SELECT ti.dag_id, ti.task_id, ti.hostname, ti.scheduled_dttm, ti.queued_dttm, ti.start_date,
                  ti.end_date FROM task_instance ti
           WHERE ti.state = 'success' ORDER BY ti.start_date"""


def platform(args: list[str], env: dict[str, str], timeout_s: float) -> str:
    done = subprocess.run([VISIONLOOP, "platform", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"platform {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_runs_done(db_url: str, timeout_s: float) -> None:
    """The pipeline command returns once the alias is set; publish_champion may still be running."""
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://"))
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM dag_run WHERE state IN ('queued', 'running')")
            active = cur.fetchone()[0]
        conn.close()
        if not active:
            return
        time.sleep(2)


def task_rows(db_url: str) -> list[dict]:
    import psycopg2

    conn = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://"))
    with conn, conn.cursor() as cur:
        cur.execute(QUERY)
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    conn.close()
    return rows


def phases(rows: list[dict]) -> list[dict]:
    """Per task: own duration and the overhead phases; the chain's previous task is the upstream."""
    out, previous_end = [], {}
    for row in rows:
        own = (row["end_date"] - row["start_date"]).total_seconds()
        upstream_end = previous_end.get(row["dag_id"])
        out.append({
            "task": f"{row['dag_id']}.{row['task_id']}", "host": row["hostname"], "own_s": round(own, 2),
            "schedule_s": round((row["scheduled_dttm"] - upstream_end).total_seconds(), 2) if upstream_end else None,
            "queue_s": round((row["queued_dttm"] - row["scheduled_dttm"]).total_seconds(), 2),
            "pickup_s": round((row["start_date"] - row["queued_dttm"]).total_seconds(), 2),
        })
        previous_end[row["dag_id"]] = row["end_date"]
    return out


def summarize(tasks: list[dict]) -> dict:
    chained = [t for t in tasks if t["schedule_s"] is not None]
    overhead = [t["schedule_s"] + t["queue_s"] + t["pickup_s"] for t in chained]
    own = [t["own_s"] for t in tasks]
    return {
        "tasks": len(tasks), "hosts": sorted({t["host"] for t in tasks}),
        "overhead_median_s": round(statistics.median(overhead), 2),
        "overhead_max_s": round(max(overhead), 2),
        "pickup_median_s": round(statistics.median(t["pickup_s"] for t in tasks), 2),
        "schedule_median_s": round(statistics.median(t["schedule_s"] for t in chained), 2),
        "own_median_s": round(statistics.median(own), 2), "own_total_s": round(sum(own), 1),
        "overhead_share_of_own": round(sum(overhead) / sum(own), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="visionloop-bench-celery-"))
    postgres, redis, s3 = Postgres(), Redis(work / "redis"), MotoS3(work)
    env = None
    try:
        postgres.start(), redis.start(), s3.start()
        env = scaleout_env(work, postgres, redis.url, s3.endpoint, workers=args.workers)
        began = time.monotonic()
        platform(["up", "--no-pipeline"], env, 600)
        up_s = time.monotonic() - began
        began = time.monotonic()
        platform(["pipeline", "--timeout", "900"], env, 960)
        pipeline_s = time.monotonic() - began
        wait_runs_done(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], 180)
        tasks = phases(task_rows(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    finally:
        if env:
            subprocess.run([VISIONLOOP, "platform", "down"], env=env, capture_output=True, timeout=300)
        s3.stop(), redis.stop(), postgres.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept when something failed: its logs/ say why
    for task in tasks:
        print(json.dumps(task))
    print(json.dumps({"bench": "celery", "workers": args.workers, "up_s": round(up_s, 1),
                      "pipeline_s": round(pipeline_s, 1), **summarize(tasks)}))


if __name__ == "__main__":
    main()
