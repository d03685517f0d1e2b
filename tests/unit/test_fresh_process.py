"""run_stage: a stage in a fresh interpreter, its output in our log, its result back, gone with its parent."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ml.stages.fresh_process import run_stage

CHILD = textwrap.dedent('''
    import argparse, json, os, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode")
    parser.add_argument("--result-file")
    args = parser.parse_args()
    print("epoch 1/2 - loss 0.5", flush=True)
    if args.mode == "fail":
        raise ValueError("snapshot v9 has no train split")
    if args.mode == "hang":
        open(os.environ["CHILD_PID_FILE"], "w").write(str(os.getpid()))
        time.sleep(120)
    json.dump({"run_id": "abc123", "env": os.environ.get("VISIONLOOP_PROFILE")}, open(args.result_file, "w"))
''')


@pytest.fixture
def child_module(tmp_path, monkeypatch):
    (tmp_path / "fake_stage.py").write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "fake_stage"


def test_the_result_comes_back_and_the_output_lands_in_the_log(child_module, monkeypatch, caplog):
    monkeypatch.setenv("VISIONLOOP_PROFILE", "smoke")
    with caplog.at_level(logging.INFO, logger="ml.stages.fresh_process"):
        result = run_stage(child_module, ["--mode", "ok"])
    assert result == {"run_id": "abc123", "env": "smoke"}  # Settings travel by the environment
    assert "epoch 1/2 - loss 0.5" in caplog.messages


def test_a_failing_stage_fails_the_task_with_its_own_error(child_module):
    with pytest.raises(RuntimeError) as failure:
        run_stage(child_module, ["--mode", "fail"])
    assert "exit code 1" in str(failure.value) and "snapshot v9 has no train split" in str(failure.value)


def test_a_killed_task_leaves_no_stage_running(child_module, tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("CHILD_PID_FILE", str(pid_file))
    task = subprocess.Popen([sys.executable, "-c", "from ml.stages.fresh_process import run_stage; "
                             f"run_stage({child_module!r}, ['--mode', 'hang'])"], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and task.poll() is None, "the stage never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    task.send_signal(signal.SIGKILL)  # what a killed Airflow task gets: no chance to clean up
    task.wait()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, f"stage process {child} outlived its task"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (dead, not yet reaped) counts as gone
        return stat.read().split()[2] != "Z"
