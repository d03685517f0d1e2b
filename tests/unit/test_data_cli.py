"""`visionloop data build/list/show`: what a user types and reads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ml.cli import app
from ml.config import CIFAR10_CLASSES


@pytest.fixture
def env(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name in (*CIFAR10_CLASSES, "insects"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    monkeypatch.setenv("VISIONLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISIONLOOP_SUPERCLASSES", "insects")
    monkeypatch.setenv("VISIONLOOP_CLASS_TARGET", "12")
    monkeypatch.setenv("VISIONLOOP_DATA_SOURCES", f"folder:{tmp_path / 'imgs'}")
    return tmp_path


def test_build_prints_the_table_then_reuses(env):
    runner = CliRunner()
    first = runner.invoke(app, ["data", "build"])
    assert first.exit_code == 0, first.output
    assert "built: dataset version" in first.output
    header = next(line for line in first.output.splitlines() if line.startswith("class"))
    assert header.split()[-5:] == ["train", "val", "test", "corrections", "total"]
    row = next(line for line in first.output.splitlines() if line.startswith("insects"))
    source, synthetic, train, val, test, corrections, total = map(int, row.split()[1:])
    assert (source, synthetic, corrections, total) == (10, 2, 0, 12) and train + val + test == 12
    again = runner.invoke(app, ["data", "build", "--profile"])
    assert again.exit_code == 0 and "reused the existing snapshot" in again.output
    assert "peak memory" in again.output


def test_list_and_show(env):
    runner = CliRunner()
    assert "no dataset snapshots yet" in runner.invoke(app, ["data", "list"]).output
    runner.invoke(app, ["data", "build"])
    listed = runner.invoke(app, ["data", "list"])
    version = listed.output.split()[0]
    shown = runner.invoke(app, ["data", "show", version])
    assert shown.exit_code == 0 and f"dataset {version}" in shown.output and "sha256:" in shown.output


@pytest.mark.parametrize("args, message", [
    (["data", "show", "nope"], "visionloop data list"),
    (["data", "build", "--source", "flickr"], "unknown data source 'flickr'"),
])
def test_mistakes_are_one_clear_line(env, args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
