"""The process manager and launcher against a tiny `python -m http.server` stand-in."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from ml.cli import app
from ml.config import Settings
from ml.platform import launcher
from ml.platform.processes import Component, PlatformError, ProcessManager, group_members
from tests.fixtures.servers import free_port


def tiny_server(root: Path, port: int, name: str = "mlflow") -> Component:
    """An HTTP server whose /health is a file; a `sleep` child shares its process group."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "health").write_text("OK")
    shell = f"sleep 600 & exec {sys.executable} -m http.server --bind 127.0.0.1 {port}"
    url = f"http://127.0.0.1:{port}"
    return Component(name, "Tiny", ("sh", "-c", shell), url, f"{url}/health", port,
                     "VISIONLOOP_MLFLOW_PORT", dict(os.environ), root, start_timeout_s=30)


@pytest.fixture
def manager(tmp_path) -> ProcessManager:
    mgr = ProcessManager(tmp_path / "home")
    yield mgr
    for name in ("mlflow", "airflow", "bentoml"):
        mgr.stop(name, timeout_s=5)


def test_up_twice_starts_once_and_down_leaves_nothing(manager, tmp_path):
    server = tiny_server(tmp_path / "www", free_port())
    said: list[str] = []
    launcher.ensure(manager, [server], said.append)
    pgid = manager.running_pgid("mlflow")
    members = {p.pid for p in group_members(pgid)}
    assert len(members) == 2  # the server and its sleeping child

    launcher.ensure(manager, [server], said.append)
    assert manager.running_pgid("mlflow") == pgid
    assert "already running" in said[-1]
    assert sum("starting" in line for line in said) == 1

    settings = Settings.from_env(home=manager.home, mlflow_port=server.port)
    assert launcher.down(settings, said.append) == 1
    assert not group_members(pgid)  # at most zombies waiting for init remain
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in members)
    assert not manager.pid_path("mlflow").exists()
    assert launcher.down(settings, said.append) == 0


def test_status_shows_pid_url_and_health(manager, tmp_path):
    port = free_port()
    server = tiny_server(tmp_path / "www", port)
    launcher.ensure(manager, [server], lambda _: None)
    settings = Settings.from_env(home=manager.home, mlflow_port=port, airflow_port=free_port(),
                                 serve_port=free_port())
    rows = {row.name: row for row in launcher.status(settings)}
    assert rows["mlflow"].health == "healthy"
    assert rows["mlflow"].pid == manager.running_pgid("mlflow")
    assert rows["mlflow"].url == f"http://127.0.0.1:{port}"
    assert rows["mlflow"].detail == "no champion"  # the stand-in has no registry
    assert rows["airflow"].health == rows["bentoml"].health == "stopped"


def test_server_that_exits_is_reported_with_its_log(manager, tmp_path):
    port = free_port()
    broken = Component("mlflow", "MLflow", ("sh", "-c", "echo 'cannot open database'; exit 3"),
                       f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health", port,
                       "VISIONLOOP_MLFLOW_PORT", start_timeout_s=20)
    with pytest.raises(PlatformError) as err:
        launcher.ensure(manager, [broken], lambda _: None)
    message = str(err.value)
    assert "MLflow exited during start-up" in message
    assert str(manager.log_path("mlflow")) in message and "cannot open database" in message


def test_stale_or_foreign_pid_file_is_not_ours(manager):
    manager.run_dir.mkdir(parents=True)
    # Our own pid with a wrong start time: a reused pid must never be signalled.
    manager.pid_path("mlflow").write_text(f"{os.getpid()}\n12345.0\n")
    assert manager.running_pgid("mlflow") is None
    assert not manager.pid_path("mlflow").exists()
    assert manager.stop("mlflow") is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="steps the boot time psutil reads on Linux")
def test_a_wall_clock_step_does_not_orphan_a_running_component(manager, tmp_path, monkeypatch):
    """NTP or a resumed VM steps the clock, which moves /proc/stat's btime and so every psutil
    create_time: `down` must still find and stop what `up` started."""
    from psutil import _pslinux

    server = tiny_server(tmp_path / "www", free_port())
    launcher.ensure(manager, [server], lambda _: None)
    pgid = manager.running_pgid("mlflow")
    booted, created = _pslinux.boot_time(), psutil.Process(pgid).create_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: booted + 5.0)  # the clock stepped 5 s forward
    assert psutil.Process(pgid).create_time() - created == pytest.approx(5.0)
    assert manager.running_pgid("mlflow") == pgid
    settings = Settings.from_env(home=manager.home, mlflow_port=server.port)
    said: list[str] = []
    assert launcher.down(settings, said.append) == 1, said
    assert not group_members(pgid)


def test_port_in_use_names_the_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"VISIONLOOP_HOME": str(tmp_path / "home"), "VISIONLOOP_MLFLOW_PORT": str(port)}
        result = CliRunner().invoke(app, ["platform", "up", "--no-pipeline"], env=env)
    assert result.exit_code == 2
    assert f"port {port}" in result.output and "VISIONLOOP_MLFLOW_PORT" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "home" / "run" / "mlflow.pid").exists()


def test_unwritable_home_names_the_setting(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(app, ["platform", "up"], env={"VISIONLOOP_HOME": str(blocker / "home")})
    assert result.exit_code == 2
    assert "VISIONLOOP_HOME" in result.output and "not writable" in result.output
    assert "Traceback" not in result.output


def test_unreachable_minio_names_the_endpoint(tmp_path):
    settings = Settings.from_env(home=tmp_path / "home", s3_endpoint=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(PlatformError, match="VISIONLOOP_S3_ENDPOINT"):
        launcher.up(settings, say=lambda _: None)
    assert time.monotonic() - started < 60
    assert not any((tmp_path / "home" / "run").glob("*.pid"))


def test_follower_polls_six_times_less_while_a_model_trains(monkeypatch, tmp_path):
    """Each poll costs the API server and MLflow CPU the training competes for (bench/train.py --in-platform)."""
    from types import SimpleNamespace

    from ml.platform import first_run, mlflow_api
    from tests.unit.test_platform_pipeline import T1, T2, ScriptedAirflow, run

    def training(task: str) -> dict:
        return {"dataset_build": [run("d1", "success", end=T1)],
                "training_pipeline": [run("t1", "running", queued=T2, tasks=[{"task_id": task, "state": "running"}])]}

    building = {"dataset_build": [run("d1", "running", tasks=[{"task_id": "build", "state": "running"}])]}
    client = ScriptedAirflow([building, building, training("train"), training("train"), training("evaluate")])
    sleeps: list[float] = []
    monkeypatch.setattr(first_run, "time", SimpleNamespace(monotonic=time.monotonic, strftime=time.strftime,
                                                           sleep=sleeps.append))
    monkeypatch.setattr(mlflow_api, "latest_run", lambda *a: None)

    def champion(*_):
        client.step += 1
        return "1" if client.step >= 5 else None

    monkeypatch.setattr(mlflow_api, "champion_version", champion)
    watch = first_run.Watch(client, Settings.from_env(home=tmp_path / "home"), "http://mlflow", lambda _: None)
    assert first_run.follow(watch, timeout_s=60) == "1"
    assert sleeps == [first_run.POLL_S, 6 * first_run.POLL_S, 6 * first_run.POLL_S, first_run.POLL_S]


def test_airflow_runs_quieter_but_the_user_setting_wins(tmp_path, monkeypatch):
    from ml.platform import components

    settings = Settings.from_env(home=tmp_path / "home")
    env = components.airflow_env(settings)
    assert env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "30"
    assert env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] == "120"
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "10")
    assert components.airflow_env(settings)["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] == "10"


def test_renice_raises_only_the_named_members_of_a_group(tmp_path):
    """The launcher nices Airflow's API server and the like, never the scheduler that forks the tasks."""
    from ml.platform.processes import renice

    manager = ProcessManager(tmp_path / "home")
    shell = "exec -a background-part sleep 600 & exec -a task-parent sleep 600"
    component = Component("airflow", "Tiny", ("bash", "-c", shell), "http://127.0.0.1:1", "http://127.0.0.1:1/health",
                          free_port(), "VISIONLOOP_AIRFLOW_PORT", dict(os.environ), tmp_path)
    pgid = manager.start(component)
    try:
        deadline = time.monotonic() + 10
        names = {"background-part 600", "task-parent 600"}
        while not names <= {" ".join(p.cmdline()) for p in group_members(pgid)} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert renice(pgid, 10, ("background-part",))
        nice = {" ".join(p.cmdline()): p.nice() for p in group_members(pgid)}
        assert nice["background-part 600"] == 10 and nice["task-parent 600"] == 0
        assert renice(pgid, 10, ("background-part",)) == []  # already niced: nothing to do
    finally:
        manager.stop("airflow", timeout_s=5)
