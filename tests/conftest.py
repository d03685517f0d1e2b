"""Shared fixtures: isolated env, a real S3 server (moto), a real MLflow server, settings.

Servers bind 127.0.0.1 on free ports, run in their own process group and are
stopped by group at the end of the session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Everything below must be set before Airflow, MLflow, Keras or matplotlib are imported.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="visionloop-tests-"))
REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
os.environ.update({
    "VISIONLOOP_HOME": str(_SESSION_DIR / "home"),
    "KERAS_HOME": str(_SESSION_DIR / "keras"),
    "MPLCONFIGDIR": str(_SESSION_DIR / "mpl"),
    "BENTOML_HOME": str(_SESSION_DIR / "bentoml"),
    "XDG_CACHE_HOME": str(_SESSION_DIR / "xdg-cache"),
    "XDG_CONFIG_HOME": str(_SESSION_DIR / "xdg-config"),
    "AIRFLOW_HOME": str(_SESSION_DIR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "SCARF_ANALYTICS": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",  # tests that need MLflow take the mlflow_server fixture
})
for key in [k for k in os.environ if k.startswith("VISIONLOOP_") and k != "VISIONLOOP_HOME"]:
    del os.environ[key]

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.data",
    "tests.fixtures.training",
    "tests.fixtures.serving",
    "tests.fixtures.pipeline",
    "tests.fixtures.airflow",
    "tests.fixtures.services",
]


@pytest.fixture
def settings(tmp_path):
    """Settings for a local-directory store under tmp_path; no servers."""
    from ml.config import Settings

    return Settings.from_env(home=tmp_path / "home")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real image archives beside the repo (development only); skip where absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is not present")
    return SHARED_DATASETS
