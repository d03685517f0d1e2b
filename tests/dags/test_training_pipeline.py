"""training_pipeline: house rules, task order, schedule, and a dag.test() run on tiny data.

The dag.test() run replaces the stages ml.stages.fit_ood, ml.stages.build_bundle and
ml.stages.reference with recording fakes (inserted into sys.modules): this test checks
the DAG's wiring and the train/evaluate/gate stages; the real OOD, bundle and reference
stages have their own tests and run together in tests/fixtures/pipeline.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from tests.fixtures.airflow import load_dag

DAG_ID = "training_pipeline"
ORDER = ["resolve_dataset", "train", "evaluate", "fit_ood", "build_bundle", "reference", "gate", "publish_champion"]


@pytest.fixture(scope="module")
def dag(airflow_db):
    return load_dag(DAG_ID)


def test_dag_follows_the_house_rules(dag):
    assert "training" in dag.tags and dag.default_args["retries"] >= 1
    assert not dag.catchup and dag.start_date.utcoffset().total_seconds() == 0
    assert dag.doc_md and set(dag.params) == {"profile", "dataset_version"}


def test_tasks_run_in_pipeline_order_and_only_the_last_emits_the_champion(dag):
    for upstream, downstream in zip(ORDER, ORDER[1:], strict=False):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert [a.name for a in dag.get_task("publish_champion").outlets] == ["visionloop_champion"]


def test_scheduled_on_the_dataset_or_weekly_and_the_time_part_can_be_switched_off(dag, airflow_db,
                                                                                   monkeypatch):
    assert "visionloop_dataset" in repr(dag.timetable.asset_condition)
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert dag.timetable.timetable.expression == "0 0 * * 0"  # @weekly
    monkeypatch.setenv("VISIONLOOP_TRAIN_SCHEDULE", "none")
    asset_only = load_dag(DAG_ID)
    assert type(asset_only.timetable).__name__ != "AssetOrTimeSchedule"
    assert "visionloop_dataset" in repr(asset_only.timetable.asset_condition)


def fake_stage(name: str, function: str, calls: list) -> types.ModuleType:
    module = types.ModuleType(name)
    setattr(module, function, lambda settings, run_id: calls.append((function, run_id)) or {})
    return module


def test_dag_trains_gates_and_announces_the_new_champion(dag, mlflow_server, tmp_path, monkeypatch):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from ml.config import Settings
    from ml.stages import gate, tracking
    from tests.fixtures.data import write_tiny_snapshot

    calls: list = []
    for stage in ("fit_ood", "build_bundle", "reference"):
        monkeypatch.setitem(sys.modules, f"ml.stages.{stage}", fake_stage(f"ml.stages.{stage}", stage, calls))
    for name, value in {"HOME": str(tmp_path / "home"), "PROFILE": "smoke", "MODEL_NAME": "dag-test",
                        "EXPERIMENT": "dag-test", "GATE_MIN_ACCURACY": "0.0"}.items():
        monkeypatch.setenv(f"VISIONLOOP_{name}", value)
    for task in dag.tasks:  # fail at once instead of waiting out retry delays
        monkeypatch.setattr(task, "retries", 0)
    settings = Settings.from_env()
    write_tiny_snapshot(settings, version="dagtiny1")

    run = dag.test()
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state
    version = tracking.champion_version(settings)
    assert version == "1"
    run_id = gate.list_versions(settings)[0]["run_id"]
    assert calls == [("fit_ood", run_id), ("build_bundle", run_id), ("reference", run_id)]
    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
    assert [e.extra.get("version") for e in events] == [version]
