"""Services mode (VISIONLOOP_CELERY_WORKERS > 0): what it starts, what it needs, how it stops."""

from __future__ import annotations

import socket
import stat

import httpx
import pytest
from typer.testing import CliRunner

from ml.cli import app
from ml.config import Settings
from ml.platform import launcher, services
from ml.platform.components import mlflow_component
from ml.platform.hostname import task_hostname
from ml.platform.processes import PlatformError, ProcessManager
from tests.fixtures.servers import free_port
from tests.unit.test_platform import tiny_server

DB = "postgresql+psycopg2://vl@127.0.0.1:5432/airflow"
BROKER = "redis://127.0.0.1:6379/0"


@pytest.fixture
def celery_settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv(services.DB_VAR, DB)
    monkeypatch.setenv(services.BROKER_VAR, BROKER)
    monkeypatch.setenv(f"{services.DB_VAR}_ASYNC", "postgresql+asyncpg://vl@127.0.0.1:5432/airflow")
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    return Settings.from_env(home=tmp_path / "home", celery_workers=2, airflow_port=free_port())


@pytest.mark.parametrize(("environ", "named"), [
    ({}, services.DB_VAR),
    ({services.DB_VAR: "sqlite:////tmp/airflow.db", services.BROKER_VAR: BROKER}, services.DB_VAR),
    ({services.DB_VAR: DB, f"{services.DB_VAR}_ASYNC": "x"}, services.BROKER_VAR),
])
def test_missing_database_or_broker_names_the_variable(environ, named):
    with pytest.raises(PlatformError, match=named):
        services.check_services_env(environ)


def test_up_without_a_database_is_one_line_and_starts_nothing(tmp_path):
    env = {"VISIONLOOP_HOME": str(tmp_path / "home"), "VISIONLOOP_CELERY_WORKERS": "2",
           "VISIONLOOP_MLFLOW_PORT": str(free_port()), services.DB_VAR: "", services.BROKER_VAR: ""}
    result = CliRunner().invoke(app, ["platform", "up", "--no-pipeline"], env=env)
    assert result.exit_code == 2, result.output
    assert services.DB_VAR in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "home" / "run").glob("*.pid"))


def test_components_are_the_airflow_parts_and_n_named_workers(celery_settings):
    components = launcher.airflow_components(celery_settings)
    assert [c.name for c in components] == [*services.AIRFLOW_PARTS, "airflow-worker-1", "airflow-worker-2"]
    env = components[0].env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env[services.DB_VAR] == DB and env[services.BROKER_VAR] == BROKER
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "ml.platform.hostname.task_hostname"
    assert components[0].argv[1:] == ("api-server", "--host", "127.0.0.1", "--port",
                                      str(celery_settings.airflow_port))
    workers = components[-2:]
    assert [w.argv[1:4] for w in workers] == [("celery", "worker", "--celery-hostname")] * 2
    names = {w.env[services.HOSTNAME_VAR] for w in workers}
    assert names == {f"{socket.gethostname()}-worker1", f"{socket.gethostname()}-worker2"}


def test_every_component_signs_with_one_persisted_secret(celery_settings):
    first = launcher.airflow_components(celery_settings)
    again = launcher.airflow_components(celery_settings)
    secrets = {c.env["AIRFLOW__API_AUTH__JWT_SECRET"] for c in first + again}
    assert len(secrets) == 1 and len(secrets.pop()) >= 32
    path = celery_settings.home.resolve() / "airflow" / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_worker_is_ready_only_after_its_latest_start(tmp_path):
    log = tmp_path / "worker.log"
    check = services.worker_ready(log, "worker1@host")
    assert check() is False  # no log yet
    log.write_text("\n==== start 1\nworker1@host ready.\n\n==== start 2\nconnecting\n")
    assert check() is False
    log.write_text(log.read_text() + "worker1@host ready.\n")
    assert check() is True


def test_task_hostname_is_the_workers_name(monkeypatch):
    monkeypatch.setenv(services.HOSTNAME_VAR, "box-worker2")
    assert task_hostname() == "box-worker2"
    monkeypatch.delenv(services.HOSTNAME_VAR)
    assert task_hostname() == socket.getfqdn()


def test_mlflow_uses_the_configured_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://vl@db/mlflow")
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://mlflow/artifacts")
    argv = mlflow_component(Settings.from_env(home=tmp_path / "home")).argv
    assert argv[argv.index("--backend-store-uri") + 1] == "postgresql://vl@db/mlflow"
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI")
    argv = mlflow_component(Settings.from_env(home=tmp_path / "home")).argv
    assert argv[argv.index("--backend-store-uri") + 1].startswith("sqlite:///")


def test_down_stops_workers_before_the_scheduler_and_mlflow_last(tmp_path):
    manager = ProcessManager(tmp_path / "home")
    names = ["mlflow", "airflow-api-server", "airflow-scheduler", "airflow-worker-1", "airflow-worker-2"]
    servers = [tiny_server(tmp_path / name, free_port(), name) for name in names]
    try:
        launcher.ensure(manager, servers, lambda _: None)
        said: list[str] = []
        assert launcher.down(Settings.from_env(home=manager.home), said.append) == len(names)
    finally:
        for name in names:
            manager.stop(name, timeout_s=5)
    order = [line.split()[0] for line in said]
    assert order.index("airflow-worker-1") < order.index("airflow-scheduler") < order.index("airflow-api-server")
    assert order[-1] == "mlflow"
    assert not list(manager.run_dir.glob("*.pid"))


def test_a_slow_api_server_is_asked_again_for_reads_but_not_for_triggers(monkeypatch):
    from ml.platform import airflow_api

    monkeypatch.setattr(airflow_api, "READ_RETRY_WAITS_S", (0.0, 0.0))
    calls: list[str] = []  # methods of the API calls (not the login)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        calls.append(request.method)
        if request.method == "POST" or calls.count("GET") <= 2:  # two slow reads, every write slow
            raise httpx.ReadTimeout("busy", request=request)
        return httpx.Response(200, json={"dag_runs": [{"state": "running"}]})

    client = airflow_api.AirflowClient("http://airflow.test", "admin", "pw")
    client.http = httpx.Client(base_url="http://airflow.test", transport=httpx.MockTransport(handler))
    assert client.runs("dataset_build") == [{"state": "running"}]
    calls.clear()
    with pytest.raises(httpx.ReadTimeout):
        client.trigger("dataset_build")
    assert calls == ["POST"]  # a trigger that may have arrived is never sent twice
