"""`visionloop platform up|down|status`: the local platform as process groups on 127.0.0.1."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ml.config import Settings
from ml.platform import first_run, mlflow_api, services
from ml.platform.airflow_api import AirflowApiError, AirflowClient
from ml.platform.components import (
    airflow_component,
    airflow_password,
    airflow_url,
    bentoml_component,
    mlflow_component,
    mlflow_uri,
)
from ml.platform.processes import Component, PlatformError, ProcessManager, probe, renice

Say = Callable[[str], None]
# `airflow standalone`'s parts that never run tasks (LocalExecutor forks tasks from the scheduler).
AIRFLOW_BACKGROUND = ("airflow standalone", "airflow api_server", "airflow api-server", "airflow dag-processor",
                      "airflow triggerer", "airflow serve-logs")
BACKGROUND_NICE = 10
# Start order; `down` stops in reverse (workers before the scheduler, everything before MLflow).
ORDER = ("mlflow", "airflow", *services.AIRFLOW_PARTS, "airflow-worker", "bentoml")


@dataclass(frozen=True)
class Row:
    """One line of `status`."""

    name: str
    url: str
    pid: int | None
    health: str  # healthy, starting, stopped
    detail: str = ""


def check_home(settings: Settings) -> None:
    """Create the working dirs or say which setting to change; no traceback for a read-only home."""
    home = settings.home.resolve()
    try:
        for sub in ("logs", "run", "mlflow", "airflow"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        probe_file = home / "run" / ".write-probe"
        probe_file.write_text("ok")
        probe_file.unlink()
    except OSError as exc:
        raise PlatformError(f"working dir {home} is not writable ({exc.strerror}); "
                            "set VISIONLOOP_HOME to a writable directory") from None


def check_store(settings: Settings) -> None:
    """Fail early, naming VISIONLOOP_S3_ENDPOINT, when the configured MinIO does not answer."""
    from ml.storage import StorageError, open_store

    try:
        open_store(settings).check()
    except StorageError as exc:
        raise PlatformError(str(exc)) from None


def ensure(manager: ProcessManager, components: list[Component], say: Say) -> None:
    """Start those not already running (all at once, ports checked first); wait until each is healthy."""
    to_start = [c for c in components if manager.running_pgid(c.name) is None]
    for component in to_start:
        manager.check_ports(component)
    pending, began = [], time.monotonic()
    for component in components:
        if component.name in {c.name for c in to_start}:
            pid = manager.start(component)
            say(f"{component.title:8} starting (pid {pid}, log {manager.log_path(component.name)})")
        elif probe(component):
            say(f"{component.title:8} already running at {component.url}")
            continue
        else:
            say(f"{component.title:8} already started; waiting for {component.health_url}")
        pending.append(component)
    for component in pending:
        manager.wait_healthy(component)
        say(f"{component.title:8} healthy at {component.url} ({time.monotonic() - began:.1f} s after start)")


def airflow_components(settings: Settings) -> list[Component]:
    """`airflow standalone`, or in services mode (VISIONLOOP_CELERY_WORKERS>0) each part and N workers."""
    if settings.celery_workers > 0:
        return services.services_components(settings)
    return [airflow_component(settings)]


def quiet_background(manager: ProcessManager) -> None:
    """Nice MLflow and Airflow standalone's parts except the scheduler, whose children run the tasks.

    Niced, their bursts (DAG parsing, API requests) yield to a training task that wants both cores.
    Measured (bench/train.py --in-platform, docs/scaling.md): 0.06 cores of such work, no
    difference on a quiet host; meant for the bursts, which were not measured on their own.
    """
    for name, only in (("mlflow", ()), ("airflow", AIRFLOW_BACKGROUND)):
        pgid = manager.running_pgid(name)
        if pgid is not None:
            renice(pgid, BACKGROUND_NICE, only)


def migrate(manager: ProcessManager, settings: Settings, say: Say) -> None:
    """Services mode: create or upgrade Airflow's tables once, before its components start."""
    env = services.celery_env(settings)
    log = manager.log_path("airflow-migrate")
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(log, "ab") as handle:
        done = subprocess.run(list(services.migrate_argv()), env=env, stdout=handle, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False, timeout=600)
    if done.returncode != 0:
        raise PlatformError(f"`airflow db migrate` failed against {services.DB_VAR}; its log is {log}. "
                            f"Last lines:\n{manager.tail('airflow-migrate')}")
    say(f"Airflow database migrated ({time.monotonic() - began:.1f} s)")


def up(settings: Settings, say: Say = print, pipeline: bool = True, wait: bool = True,
       timeout_s: float = 3600.0) -> None:
    """Start MLflow and Airflow, run the first pipeline when no champion exists, then serve."""
    check_home(settings)
    if settings.use_s3:
        check_store(settings)
    manager = ProcessManager(settings.home.resolve())
    started = time.monotonic()
    airflow = airflow_components(settings)
    if settings.celery_workers > 0 and manager.running_pgid("airflow-scheduler") is None:
        migrate(manager, settings, say)
    ensure(manager, [mlflow_component(settings), *airflow], say)
    quiet_background(manager)
    say(f"MLflow and Airflow up in {time.monotonic() - started:.1f} s")
    password = airflow_password(settings)
    say(f"Airflow UI: {airflow_url(settings)}  user admin  password {password or '(not generated)'}")
    say(f"MLflow UI:  {mlflow_uri(settings)}")
    champion = mlflow_api.champion_version(mlflow_uri(settings), settings.model_name)
    if champion is None and pipeline:
        champion = run_pipeline(settings, airflow_url(settings), password or "", mlflow_uri(settings),
                                say, wait, timeout_s)
    if champion is None:
        if not pipeline:
            say("no champion model yet: BentoML not started (run the pipeline, then `make up` again)")
        return
    say(f"champion: {settings.model_name} version {champion}")
    serving = bentoml_component(settings)
    ensure(manager, [serving], say)
    say(f"Serving:    {serving.url}")


def run_pipeline(settings: Settings, airflow: str, password: str, tracking_uri: str, say: Say,
                 wait: bool = True, timeout_s: float = 3600.0) -> str | None:
    """Unless a champion exists, trigger dataset_build and (with wait) follow it to a champion."""
    champion = mlflow_api.champion_version(tracking_uri, settings.model_name)
    if champion:
        say(f"champion {settings.model_name} version {champion} exists: no pipeline needed")
        return champion
    client = AirflowClient(airflow, "admin", password)
    try:
        say("no champion model yet: running the first pipeline (dataset_build -> training_pipeline)")
        first_run.start(client, say)
        if not wait:
            say("not waiting (--no-wait): follow it in the Airflow UI; `make up` again starts serving")
            return None
        return first_run.follow(first_run.Watch(client, settings, tracking_uri, say), timeout_s)
    except (AirflowApiError, httpx.HTTPError) as exc:
        raise PlatformError(f"Airflow API at {airflow}: {exc}") from None
    finally:
        client.close()


def wait_champion(settings: Settings, say: Say, timeout_s: float = 0, poll_s: float = 15.0) -> str | None:
    """Block until the registry has a champion (0 = no timeout); the compose serving service uses it."""
    deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
    say(f"waiting for a champion of {settings.model_name} at {settings.mlflow_tracking_uri}")
    while time.monotonic() < deadline:
        version = mlflow_api.champion_version(settings.mlflow_tracking_uri, settings.model_name)
        if version:
            say(f"champion: version {version}")
            return version
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
    return None


def _stop_order(manager: ProcessManager) -> list[str]:
    """Every component with a pid file, in reverse start order (unknown names first)."""
    names = sorted(path.stem for path in manager.run_dir.glob("*.pid"))

    def rank(name: str) -> int:
        matches = [known for known in ORDER if name == known or name.startswith(f"{known}-")]
        return ORDER.index(max(matches, key=len)) if matches else len(ORDER)

    return sorted(names, key=rank, reverse=True)


def down(settings: Settings, say: Say = print) -> int:
    """Stop every process group `up` started (and nothing else); return how many were stopped."""
    manager = ProcessManager(settings.home.resolve())
    stopped = 0
    for name in _stop_order(manager):
        pgid = manager.running_pgid(name)
        if pgid is None:
            manager.pid_path(name).unlink(missing_ok=True)
            continue
        began = time.monotonic()
        manager.stop(name)
        stopped += 1
        say(f"{name:8} stopped (process group {pgid}, {time.monotonic() - began:.1f} s)")
    if not stopped:
        say("nothing of ours was running")
    return stopped


def status(settings: Settings) -> list[Row]:
    """Each component with its URL, pid and health; MLflow's row carries the champion version."""
    manager = ProcessManager(settings.home.resolve())
    rows = []
    try:
        components = [mlflow_component(settings), *airflow_components(settings), bentoml_component(settings)]
    except PlatformError:  # services mode without its variables: show what standalone would be
        components = [mlflow_component(settings), airflow_component(settings), bentoml_component(settings)]
    for component in components:
        pid = manager.running_pgid(component.name)
        healthy = probe(component)
        health = "healthy" if healthy else ("starting" if pid else "stopped")
        detail = ""
        if component.name == "mlflow" and healthy:
            version = mlflow_api.champion_version(component.url, settings.model_name)
            detail = f"champion v{version}" if version else "no champion"
        elif healthy and pid is None:
            detail = "not started by us"
        rows.append(Row(component.name, component.url, pid, health, detail))
    return rows
