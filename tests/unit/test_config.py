"""Settings come from the environment, default to a laptop setup, and reject bad values clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import ConfigError, Settings


def test_defaults_run_locally_with_thirteen_classes():
    s = Settings.from_env(env={})
    assert s.home == Path(".visionloop")
    assert not s.use_s3 and s.store_dir == Path(".visionloop/store")
    assert len(s.classes) == 13
    assert s.classes[:2] == ("airplane", "automobile")
    assert s.classes[-3:] == ("fruit_and_vegetables", "insects", "food_containers")
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert s.profile == "standard"


def test_environment_overrides_every_kind_of_field():
    s = Settings.from_env(env={
        "VISIONLOOP_HOME": "/srv/vl",
        "VISIONLOOP_S3_ENDPOINT": "minio:9000",
        "VISIONLOOP_S3_SECURE": "true",
        "VISIONLOOP_SUPERCLASSES": "insects, flowers ,trees",
        "VISIONLOOP_MAX_UPLOAD_MB": "2.5",
        "VISIONLOOP_SERVE_PORT": "3100",
        "VISIONLOOP_DATA_SOURCES": "folder:/data/a.tar.gz,feedback",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    })
    assert s.home == Path("/srv/vl") and s.use_s3 and s.s3_secure
    assert s.classes[-3:] == ("insects", "flowers", "trees")
    assert s.max_upload_bytes == int(2.5 * 1024 * 1024)
    assert s.serve_port == 3100
    assert s.data_sources == ("folder:/data/a.tar.gz", "feedback")
    assert s.mlflow_tracking_uri == "http://mlflow:5000"


@pytest.mark.parametrize("env, names", [
    ({"VISIONLOOP_SERVE_PORT": "http"}, "VISIONLOOP_SERVE_PORT"),
    ({"VISIONLOOP_SERVE_PORT": "70000"}, "VISIONLOOP_SERVE_PORT"),
    ({"VISIONLOOP_S3_SECURE": "maybe"}, "VISIONLOOP_S3_SECURE"),
    ({"VISIONLOOP_PROFILE": "huge"}, "VISIONLOOP_PROFILE"),
    ({"VISIONLOOP_SUPERCLASSES": "cat,insects"}, "VISIONLOOP_SUPERCLASSES"),
])
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env=env)


def test_settings_are_frozen_and_copyable():
    s = Settings.from_env(env={})
    with pytest.raises(AttributeError):
        s.profile = "smoke"  # type: ignore[misc]
    assert s.with_(profile="smoke").profile == "smoke" and s.profile == "standard"


def test_import_has_no_side_effects(tmp_path):
    # A fresh interpreter: reloading modules in this one would fork their exception classes.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = "import ml.config, ml.storage, ml.layout, ml.records, ml.imaging; ml.config.Settings.from_env()"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60,
                   env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert list(tmp_path.iterdir()) == []


def test_env_example_documents_every_setting():
    from dataclasses import fields

    example = Path(__file__).resolve().parents[2] / ".env.example"
    if not example.exists():
        pytest.fail(".env.example is missing")
    text = example.read_text()
    for f in fields(Settings):
        name = "MLFLOW_TRACKING_URI" if f.name == "mlflow_tracking_uri" else f"VISIONLOOP_{f.name.upper()}"
        assert name in text, f"{name} is not documented in .env.example"
