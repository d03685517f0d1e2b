"""What the local platform runs: MLflow, Airflow standalone and BentoML, with their environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

from ml.config import Settings
from ml.platform.processes import Component

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The serving module's one @bentoml.service class (serving/service.py).
SERVICE_TARGET = "serving.service:VisionLoop"
LOCALHOST = "127.0.0.1"


def mlflow_uri(settings: Settings) -> str:
    """The tracking URI of the MLflow server this platform runs."""
    return f"http://{LOCALHOST}:{settings.mlflow_port}"


def airflow_url(settings: Settings) -> str:
    return f"http://{LOCALHOST}:{settings.airflow_port}"


def serve_url(settings: Settings) -> str:
    return f"http://{settings.serve_host}:{settings.serve_port}"


def base_env(settings: Settings) -> dict[str, str]:
    """The environment every child gets: ours, caches kept out of $HOME, telemetry off."""
    home = settings.home.resolve()
    env = dict(os.environ)
    cache = home / "cache"
    for name, default in {
        "KERAS_HOME": cache / "keras", "MPLCONFIGDIR": cache / "matplotlib",
        "BENTOML_HOME": home / "bentoml", "XDG_CACHE_HOME": cache / "xdg",
        "XDG_CONFIG_HOME": home / "config", "TF_CPP_MIN_LOG_LEVEL": "2",
    }.items():
        env.setdefault(name, str(default))
    env.update({
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true",
        "SCARF_ANALYTICS": "false", "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        # Tasks and the service run with another cwd: give them absolute paths and our MLflow.
        "VISIONLOOP_HOME": str(home),
        "MLFLOW_TRACKING_URI": mlflow_uri(settings),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    })
    return env


def mlflow_component(settings: Settings) -> Component:
    """MLflow tracking server: SQLite and a local directory unless MLFLOW_BACKEND_STORE_URI /
    MLFLOW_ARTIFACTS_DESTINATION name external ones (PostgreSQL, s3://)."""
    root = settings.home.resolve() / "mlflow"
    env = base_env(settings)
    # The job runner starts 7 huey consumers (1.8 GiB); VisionLoop uses no MLflow jobs.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    backend = env.get("MLFLOW_BACKEND_STORE_URI") or f"sqlite:///{root}/mlflow.db"
    artifacts = env.get("MLFLOW_ARTIFACTS_DESTINATION") or str(root / "artifacts")
    argv = (str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts, "--host", LOCALHOST,
            "--port", str(settings.mlflow_port), "--workers", "1")
    uri = mlflow_uri(settings)
    return Component("mlflow", "MLflow", argv, uri, f"{uri}/health", settings.mlflow_port,
                     "VISIONLOOP_MLFLOW_PORT", env, REPO, start_timeout_s=90)


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow standalone's configuration; values the launcher owns win over the environment."""
    home = settings.home.resolve() / "airflow"
    url = airflow_url(settings)
    env = base_env(settings)
    for key, value in {
        "AIRFLOW__CORE__PARALLELISM": "4",  # 32 idle workers otherwise, on 2 cores
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",  # new DAG files show up within 30 s
        # Less background work while a task trains on the same cores (bench/train.py --in-platform):
        # an edited DAG file is re-parsed within 2 min instead of 30 s, and a running task reports to
        # the API server every 30 s instead of 5 s (Airflow declares it lost only after 300 s).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "30",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "8793",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "8794",
        "AIRFLOW__API__WORKERS": "1",
    }.items():
        env.setdefault(key, value)
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)  # set by the test suite, wrong for a real server
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": LOCALHOST,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": url,
        # Task processes report to the execution API; its default assumes port 8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
    })
    return env


def _airflow_healthy(response: httpx.Response) -> bool:
    body = response.json()
    return all((body.get(part) or {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "dag_processor"))


def airflow_component(settings: Settings) -> Component:
    """Airflow 3 standalone: api-server, scheduler, dag-processor and triggerer in one group."""
    env = airflow_env(settings)
    url = airflow_url(settings)
    # Airflow's log servers bind every interface on fixed ports (hard-coded host), so check them too.
    extra = tuple((int(env[f"AIRFLOW__LOGGING__{kind}_LOG_SERVER_PORT"]),
                   f"AIRFLOW__LOGGING__{kind}_LOG_SERVER_PORT") for kind in ("WORKER", "TRIGGER"))
    return Component("airflow", "Airflow", (str(BIN / "airflow"), "standalone"), url,
                     f"{url}/api/v2/monitor/health", settings.airflow_port, "VISIONLOOP_AIRFLOW_PORT",
                     env, REPO, start_timeout_s=180, extra_ports=extra, healthy=_airflow_healthy)


def bentoml_component(settings: Settings) -> Component:
    """The BentoML service serving the champion."""
    url = serve_url(settings)
    argv = (str(BIN / "bentoml"), "serve", SERVICE_TARGET, "--host", settings.serve_host,
            "--port", str(settings.serve_port))
    return Component("bentoml", "BentoML", argv, url, f"{url}/readyz", settings.serve_port,
                     "VISIONLOOP_SERVE_PORT", base_env(settings), REPO, start_timeout_s=240)


def airflow_password(settings: Settings) -> str | None:
    """The admin password Airflow standalone generated, or None before its first start."""
    path = settings.home.resolve() / "airflow" / "simple_auth_manager_passwords.json.generated"
    try:
        return json.loads(path.read_text()).get("admin")
    except (OSError, ValueError):
        return None
