"""The CLI lists every stage and turns configuration mistakes into one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml.cli import app

GROUPS = ("data", "train", "model", "serve", "monitor", "platform")


def test_help_lists_every_stage():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in GROUPS:
        assert group in result.output


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_help_with_commands(group):
    result = CliRunner().invoke(app, [group, "--help"])
    assert result.exit_code == 0, result.output
    assert "Commands" in result.output, f"`visionloop {group}` has no commands yet"


def test_bad_setting_is_one_line_naming_the_variable(tmp_path):
    exe = Path(sys.executable).parent / "visionloop"
    env = {"PATH": "/usr/bin:/bin", "VISIONLOOP_PROFILE": "enormous", "VISIONLOOP_HOME": str(tmp_path)}
    result = subprocess.run([str(exe), "data", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "VISIONLOOP_PROFILE" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_mlflow_down_is_one_line_not_an_empty_registry(tmp_path):
    exe = Path(sys.executable).parent / "visionloop"
    env = {"PATH": "/usr/bin:/bin", "VISIONLOOP_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = subprocess.run([str(exe), "model", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "MLFLOW_TRACKING_URI" in result.stderr and "registered yet" not in result.stdout
    assert "Traceback" not in result.stderr


def test_a_misspelt_hyperparameter_override_is_one_line_listing_the_fields(tmp_path):
    exe = Path(sys.executable).parent / "visionloop"
    env = {"PATH": "/usr/bin:/bin", "VISIONLOOP_HOME": str(tmp_path)}
    result = subprocess.run([str(exe), "train", "run", "--set", "widht=64"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode != 0
    assert "widht=64" in result.stderr and "width" in result.stderr.split("FIELD one of")[1]
    assert "Traceback" not in result.stderr
