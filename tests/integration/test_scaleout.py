"""Services mode end to end: `visionloop platform up` with CeleryExecutor, two workers, PostgreSQL and Redis.

dataset_build and training_pipeline (smoke) run through the real scheduler; the task instances in
Airflow's PostgreSQL database show both workers' hostnames, and MLflow's PostgreSQL database holds
the run and the champion alias.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg2
import pytest

from ml.platform import mlflow_api
from ml.platform.processes import ProcessManager, group_members
from tests.fixtures.services import scaleout_env

VISIONLOOP = str(Path(sys.executable).parent / "visionloop")
MODEL = "visionloop-classifier"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def cli(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([VISIONLOOP, "platform", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def rows(url: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def wait_runs_done(db_url: str, timeout_s: float) -> list[tuple]:
    """(dag_id, state) of every run of the two DAGs, once none is queued or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = rows(db_url, "SELECT dag_id, state FROM dag_run WHERE dag_id IN ('dataset_build', 'training_pipeline')")
        if time.monotonic() > deadline or not any(state in ("queued", "running") for _, state in runs):
            return runs
        time.sleep(2)


@pytest.fixture
def scaleout(tmp_path, postgres_server, redis_server, moto_s3):  # noqa: F811 (fixtures)
    env = scaleout_env(tmp_path, postgres_server, redis_server.url, moto_s3.endpoint, workers=2)
    yield env
    down = cli(["down"], env, 180)  # even when the test failed half-way
    print(down.stdout)


def test_pipeline_runs_on_two_celery_workers_with_postgres(scaleout):
    env = scaleout
    up = cli(["up", "--no-pipeline"], env, 300)
    print(up.stdout)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Airflow database migrated" in up.stdout
    assert "Worker 1" in up.stdout and "Worker 2" in up.stdout

    status = cli(["status"], env, 60).stdout
    health = {line.split()[0]: line.split()[1] for line in status.splitlines()[1:]}
    for name in ("mlflow", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker-1", "airflow-worker-2"):
        assert "healthy" in health.get(name, ""), status

    pipeline = cli(["pipeline", "--timeout", "420"], env, 460)
    print(pipeline.stdout)
    assert pipeline.returncode == 0, pipeline.stdout + pipeline.stderr

    airflow_db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    # The gate sets the alias before publish_champion runs: let the runs finish.
    runs = wait_runs_done(airflow_db, 120)
    assert sorted(runs) == [("dataset_build", "success"), ("training_pipeline", "success")], runs
    tasks = rows(airflow_db, "SELECT dag_id, task_id, state, hostname FROM task_instance "
                             "WHERE dag_id IN ('dataset_build', 'training_pipeline')")
    assert {(dag, state) for dag, _, state, _ in tasks} == {("dataset_build", "success"),
                                                           ("training_pipeline", "success")}, tasks
    host = socket.gethostname()
    assert {hostname for *_, hostname in tasks} == {f"{host}-worker1", f"{host}-worker2"}, tasks

    mlflow_db = env["MLFLOW_BACKEND_STORE_URI"]
    assert ("FINISHED",) in rows(mlflow_db, "SELECT status FROM runs")
    aliases = rows(mlflow_db, f"SELECT alias, version FROM registered_model_aliases WHERE name = '{MODEL}'")
    champion = dict(aliases).get("champion")
    assert champion is not None, aliases
    assert mlflow_api.champion_version(env["MLFLOW_TRACKING_URI"], MODEL) == str(champion)

    manager = ProcessManager(Path(env["VISIONLOOP_HOME"]))
    names = [path.stem for path in manager.run_dir.glob("*.pid")]
    groups = [manager.running_pgid(name) for name in names]
    down = cli(["down"], env, 180)
    assert down.returncode == 0 and "airflow-worker-2 stopped" in down.stdout, down.stdout
    assert not any(group_members(pgid) for pgid in groups if pgid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{env['MLFLOW_TRACKING_URI']}/health", timeout=2)
