"""docker-compose.yml is valid, has every service and profile, and .env.example documents every variable."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from ml.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
CORE = {"postgres", "minio", "minio-init", "mlflow", "airflow-init", "airflow-api-server",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "pipeline", "bentoml"}
ONE_SHOT = {"minio-init", "airflow-init", "pipeline"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_profiles(compose):
    services = compose["services"]
    assert CORE | {"redis", "airflow-worker"} == set(services)
    assert {name for name, svc in services.items() if "celery" in svc.get("profiles", [])} == {
        "redis", "airflow-worker"}
    assert not any(services[name].get("profiles") for name in CORE)


def test_long_running_services_have_healthchecks_and_wait_for_dependencies(compose):
    services = compose["services"]
    for name in set(services) - ONE_SHOT:
        assert "healthcheck" in services[name], name
    for name, svc in services.items():
        for dep, rule in (svc.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dep}"


def test_host_ports_are_loopback_only(compose):
    ports = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)


def test_python_services_use_the_launcher_commands(compose):
    services = compose["services"]
    assert services["airflow-scheduler"]["command"] == ["airflow", "scheduler"]
    assert "bentoml serve serving.service:" in services["bentoml"]["command"][-1]
    assert services["pipeline"]["command"][:3] == ["visionloop", "platform", "pipeline"]
    for name in ("mlflow", "airflow-api-server", "bentoml", "pipeline"):
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "uv sync --frozen" in dockerfile


def _documented() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))


def test_env_example_documents_every_setting():
    names = {"MLFLOW_TRACKING_URI" if f.name == "mlflow_tracking_uri" else f"VISIONLOOP_{f.name.upper()}"
             for f in fields(Settings) if f.name != "extra"}
    assert names - _documented() == set()


def test_env_example_documents_every_compose_variable():
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))  # $${X}: container-side
    assert used - _documented() == set()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("extra", [[], ["--env-file", str(ENV_EXAMPLE)], ["--profile", "celery"]])
def test_docker_compose_accepts_the_file(extra):
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), *extra, "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
