"""Services mode: Airflow's components as separate process groups with CeleryExecutor and N workers.

Selected by VISIONLOOP_CELERY_WORKERS > 0. Airflow's metadata DB and the Celery broker are external
services named by Airflow's own variables; the compose stack runs the same commands.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path

import httpx

from ml.config import Settings
from ml.platform.components import BIN, LOCALHOST, REPO, airflow_env, airflow_url
from ml.platform.processes import Component, PlatformError

DB_VAR = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
BROKER_VAR = "AIRFLOW__CELERY__BROKER_URL"
# Tasks report this as their hostname (task instance `hostname`), so workers sharing a host differ.
HOSTNAME_VAR = "VISIONLOOP_TASK_HOSTNAME"
AIRFLOW_PARTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def check_services_env(environ: Mapping[str, str]) -> None:
    """Name the variable to set when services mode lacks its database or broker."""
    conn = environ.get(DB_VAR, "")
    if not conn or conn.startswith("sqlite"):
        raise PlatformError(f"VISIONLOOP_CELERY_WORKERS>0 runs Airflow with CeleryExecutor, which needs a "
                            f"shared database: set {DB_VAR} to a PostgreSQL URL "
                            "(postgresql+psycopg2://user:password@host:5432/airflow)")
    if (conn.startswith("postgresql") and not environ.get(f"{DB_VAR}_ASYNC")
            and importlib.util.find_spec("asyncpg") is None):
        raise PlatformError(f"Airflow 3 opens {DB_VAR} with an async driver too: install asyncpg "
                            "(`make venv` installs it with the docker extra) or set "
                            f"{DB_VAR}_ASYNC")
    if not environ.get(BROKER_VAR):
        raise PlatformError(f"VISIONLOOP_CELERY_WORKERS>0 needs a Celery broker: set {BROKER_VAR} "
                            "(e.g. redis://host:6379/0)")


def shared_secret(settings: Settings, name: str) -> str:
    """A random secret kept in <home>/airflow/<name> (0600): every component must sign with the same one."""
    path = settings.home.resolve() / "airflow" / name
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value
    # Written whole under a temporary name, then linked in: two components starting at once
    # both end up with whichever secret landed first, and a crash never leaves an empty file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    try:
        os.link(tmp, path)
    except FileExistsError:
        if not path.read_text().strip():  # an empty file from a crash before this fix
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def celery_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Airflow's environment for services mode: external DB and broker, shared secrets."""
    environ = os.environ if environ is None else environ
    check_services_env(environ)
    env = airflow_env(settings)
    env.update({DB_VAR: environ[DB_VAR], BROKER_VAR: environ[BROKER_VAR],
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    defaults = {
        # Task processes and the api-server verify each other's tokens: one secret for all.
        "AIRFLOW__API_AUTH__JWT_SECRET": shared_secret(settings, "jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": shared_secret(settings, "api_secret_key"),
        # One task at a time per worker: a training task uses every core it gets.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ml.platform.hostname.task_hostname",
    }
    for key, value in defaults.items():
        env[key] = environ.get(key) or value
    return env


def _part_healthy(part: str):
    def healthy(response: httpx.Response) -> bool:
        body = response.json()
        return (body.get(part) or {}).get("status") == "healthy"
    return healthy


def airflow_parts(settings: Settings, env: dict[str, str]) -> list[Component]:
    """api-server, scheduler, dag-processor and triggerer; each is healthy per the api-server."""
    url = airflow_url(settings)
    health = f"{url}/api/v2/monitor/health"
    airflow = str(BIN / "airflow")
    trigger_port = int(env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"])
    api = Component("airflow-api-server", "Airflow API", (airflow, "api-server", "--host", LOCALHOST,
                    "--port", str(settings.airflow_port)), url, health, settings.airflow_port,
                    "VISIONLOOP_AIRFLOW_PORT", env, REPO, start_timeout_s=180, healthy=_part_healthy("metadatabase"))
    parts = [api]
    for name, part in (("scheduler", "scheduler"), ("dag-processor", "dag_processor"), ("triggerer", "triggerer")):
        extra = ((trigger_port, "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"),) if name == "triggerer" else ()
        parts.append(Component(f"airflow-{name}", f"Airflow {name}", (airflow, name), url, health,
                               settings.airflow_port, "VISIONLOOP_AIRFLOW_PORT", env, REPO,
                               start_timeout_s=180, healthy=_part_healthy(part), extra_ports=extra))
    return parts


def worker_ready(log: Path, node: str):
    """True once the worker's log, since its last start, says Celery's `<node> ready.`."""
    def check() -> bool:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return False
        return f"{node} ready." in text.rsplit("\n==== ", 1)[-1]
    return check


def worker_components(settings: Settings, env: dict[str, str]) -> list[Component]:
    """N `airflow celery worker` processes, each with its own Celery node name and task hostname."""
    host = socket.gethostname()
    logs = settings.home.resolve() / "logs"
    workers = []
    for index in range(1, settings.celery_workers + 1):
        name, node = f"airflow-worker-{index}", f"worker{index}@{host}"
        worker_env = {**env, HOSTNAME_VAR: f"{host}-worker{index}"}
        # Logs are local files every component on this host reads: no log server per worker.
        argv = (str(BIN / "airflow"), "celery", "worker", "--celery-hostname", f"worker{index}@%h",
                "--skip-serve-logs")
        workers.append(Component(name, f"Worker {index}", argv, f"celery://{node}", "", 0,
                                 "VISIONLOOP_CELERY_WORKERS", worker_env, REPO, start_timeout_s=180,
                                 check=worker_ready(logs / f"{name}.log", node)))
    return workers


def services_components(settings: Settings) -> list[Component]:
    """Every Airflow process of services mode, in start order."""
    env = celery_env(settings)
    return airflow_parts(settings, env) + worker_components(settings, env)


def migrate_argv() -> tuple[str, ...]:
    return (str(BIN / "airflow"), "db", "migrate")
