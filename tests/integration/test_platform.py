"""`visionloop platform up --no-pipeline` starts real MLflow and Airflow; `down` leaves nothing of ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ml.platform.processes import ProcessManager, group_members
from tests.fixtures.servers import free_port

VISIONLOOP = str(Path(sys.executable).parent / "visionloop")
REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


def cli(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([VISIONLOOP, "platform", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.fixture
def platform_env(tmp_path) -> dict[str, str]:
    """A fresh working dir and free ports (Airflow's log servers too, they bind every interface)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONLOOP_", "AIRFLOW"))}
    env.update({
        "VISIONLOOP_HOME": str(tmp_path / "home"),
        "VISIONLOOP_MLFLOW_PORT": str(free_port()), "VISIONLOOP_AIRFLOW_PORT": str(free_port()),
        "VISIONLOOP_SERVE_PORT": str(free_port()),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    })
    yield env
    cli(["down"], env, 120)  # even when the test failed half-way


def test_up_status_down(platform_env):
    env = platform_env
    mlflow = f"http://127.0.0.1:{env['VISIONLOOP_MLFLOW_PORT']}"
    airflow = f"http://127.0.0.1:{env['VISIONLOOP_AIRFLOW_PORT']}"

    up = cli(["up", "--no-pipeline"], env, 200)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"MLflow UI:  {mlflow}" in up.stdout and f"Airflow UI: {airflow}" in up.stdout
    password = up.stdout.split("user admin  password ")[1].split()[0]
    assert len(password) >= 8 and password != "(not"
    print(up.stdout)  # start-up times, for the record

    assert httpx.get(f"{mlflow}/health", timeout=5).status_code == 200
    health = httpx.get(f"{airflow}/api/v2/monitor/health", timeout=5).json()
    assert health["scheduler"]["status"] == "healthy"
    token = httpx.post(f"{airflow}/auth/token", json={"username": "admin", "password": password}, timeout=10)
    assert token.status_code in (200, 201) and token.json()["access_token"]

    again = cli(["up", "--no-pipeline"], env, 60)
    assert again.returncode == 0 and again.stdout.count("already running") == 2

    status = cli(["status"], env, 60).stdout
    lines = {line.split()[0]: line for line in status.splitlines()[1:]}
    assert "healthy" in lines["mlflow"] and "healthy" in lines["airflow"] and "stopped" in lines["bentoml"]

    manager = ProcessManager(Path(env["VISIONLOOP_HOME"]))
    groups = [manager.running_pgid(name) for name in ("mlflow", "airflow")]
    assert all(groups)
    down = cli(["down"], env, 120)
    assert down.returncode == 0 and "airflow  stopped" in down.stdout
    assert not any(group_members(pgid) for pgid in groups)
    assert not list((Path(env["VISIONLOOP_HOME"]) / "run").glob("*.pid"))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{mlflow}/health", timeout=2)


def test_compose_mlflow_basic_auth_gives_each_service_its_rights(tmp_path):
    """infra/mlflow/start.sh with MLFLOW_AUTH=true and infra/mlflow/create-users.py, as compose runs them."""
    from tests.fixtures.servers import ServerProcess, wait_http

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "MLFLOW_AUTH": "true",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/auth.db",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw-123",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret", "MLFLOW_SERVER_HOST": "127.0.0.1",
        "MLFLOW_SERVER_PORT": str(port), "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port}", "TMPDIR": str(tmp_path),
    })
    server = ServerProcess(["sh", str(REPO / "infra" / "mlflow" / "start.sh")], tmp_path / "mlflow.log",
                           env=env).start()
    try:
        wait_http(f"{url}/health", 120, server.proc, server.log)
        users = {**env, "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
                 "MLFLOW_TRACKING_PASSWORD": "admin-pw-123", "MLFLOW_SERVICE_USERS": "MLFLOW_TRAINING,MLFLOW_SERVING",
                 "MLFLOW_TRAINING_USER": "training", "MLFLOW_TRAINING_PASSWORD": "train-password-1",
                 "MLFLOW_SERVING_USER": "serving", "MLFLOW_SERVING_PASSWORD": "serve-password-1"}
        short = subprocess.run([sys.executable, str(REPO / "infra" / "mlflow" / "create-users.py")],
                               env={**users, "MLFLOW_TRAINING_PASSWORD": "short"}, capture_output=True, text=True,
                               timeout=120)
        assert short.returncode == 2 and "MLFLOW_TRAINING_PASSWORD" in short.stderr
        assert "Traceback" not in short.stderr
        for _ in range(2):  # idempotent: a re-run resets the passwords
            done = subprocess.run([sys.executable, str(REPO / "infra" / "mlflow" / "create-users.py")],
                                  env=users, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        api = f"{url}/api/2.0/mlflow/experiments"
        assert httpx.get(f"{api}/search", params={"max_results": 1}, timeout=10).status_code == 401
        created = httpx.post(f"{api}/create", json={"name": "visionloop-training"}, auth=("training", "train-password-1"),
                             timeout=10)
        assert created.status_code == 200, created.text
        experiment = created.json()["experiment_id"]
        seen = httpx.get(f"{api}/get", params={"experiment_id": experiment}, auth=("serving", "serve-password-1"), timeout=10)
        assert seen.status_code == 200
        denied = httpx.post(f"{api}/update", json={"experiment_id": experiment, "new_name": "x"},
                            auth=("serving", "serve-password-1"), timeout=10)
        assert denied.status_code == 403
        assert httpx.get(f"{api}/search", params={"max_results": 1}, auth=("serving", "wrong"),
                         timeout=10).status_code == 401
    finally:
        server.stop()
