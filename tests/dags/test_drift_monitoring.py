"""drift_monitoring: parses cleanly, has the expected shape, and runs end to end under dag.test()."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ml.monitoring import synthetic
from ml.storage import open_store
from tests.fixtures.airflow import load_dag


@pytest.fixture(scope="module")
def dag(airflow_db):
    return load_dag("drift_monitoring")


def test_dag_parses_with_tags_retries_and_edges(dag):
    assert dag is not None and "monitoring" in dag.tags and not dag.catchup
    assert dag.default_args["retries"] >= 1
    assert dag.task_dict["compute_window"].downstream_task_ids == {"decide"}
    assert dag.task_dict["decide"].downstream_task_ids == {"retrain_decided", "request_retrain"}
    assert dag.task_dict["retrain_decided"].downstream_task_ids == {"request_retrain"}
    outlets = dag.task_dict["request_retrain"].outlets
    assert [a.name for a in outlets] == ["visionloop_retrain_request"]


@pytest.fixture
def loop_env(airflow_db, mlflow_server, tmp_path, monkeypatch):
    """Local store with a drifted window logged by version 7 (reference pack cached) and by version 8,
    which the registry never had (a bundle served from a directory, say)."""
    from ml.config import Settings

    monkeypatch.setenv("VISIONLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISIONLOOP_MONITORING_EXPERIMENT", f"dagtest-{tmp_path.name}"[:60])
    monkeypatch.setenv("VISIONLOOP_EXPERIMENT", f"dagtest-train-{tmp_path.name}"[:60])
    settings = Settings.from_env()
    synthetic.pack(list(settings.classes)).save(settings.home / "cache" / "reference" / "7")
    records = synthetic.records(120, list(settings.classes), seed=4, shift=0.6, model_version="7")
    synthetic.write_batches(open_store(settings), records, datetime(2026, 3, 1, 9, tzinfo=UTC))
    unknown = synthetic.records(60, list(settings.classes), seed=5, model_version="8")
    synthetic.write_batches(open_store(settings), unknown, datetime(2026, 3, 1, 9, 30, tzinfo=UTC))
    return settings


def test_dag_test_requests_a_retrain_on_drift(loop_env, dag):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"compute_window": "success", "decide": "success", "retrain_decided": "success",
                      "request_retrain": "success"}
    with create_session() as session:
        events = session.query(AssetEvent).all()
        assert any("drift in window" in (event.extra or {}).get("reason", "") for event in events)
    store = open_store(loop_env)
    assert store.get_json("monitoring/retrain_state.json")["reason"].startswith("drift")
    [window_key] = [k for k in store.list("monitoring/windows/")]
    assert store.get_json(window_key)["skipped_versions"] == {"8": 60}  # counted, and the window did not fail
