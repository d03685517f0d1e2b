"""dataset_build: parses cleanly, is wired fetch -> validate -> balance -> snapshot, and builds tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.airflow import load_dag

DAG_ID = "dataset_build"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "insects")


@pytest.fixture(scope="module")
def dag(airflow_db):
    return load_dag(DAG_ID)


def test_dag_follows_the_house_rules(dag):
    assert dag.tags and "data" in dag.tags
    assert dag.default_args["retries"] >= 1
    assert not dag.catchup and dag.start_date.utcoffset().total_seconds() == 0
    assert "visionloop_retrain_request" in repr(dag.timetable.asset_condition), "scheduled on retrain requests"


def test_tasks_are_chained_in_pipeline_order(dag):
    order = ["fetch", "validate", "balance", "snapshot"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert [a.name for a in dag.get_task("snapshot").outlets] == ["visionloop_dataset"]


def tiny_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(10 if name != "insects" else 4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_dag_builds_a_snapshot_and_announces_its_version(dag, tmp_path, monkeypatch):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from ml.config import Settings
    from ml.stages import snapshots
    from ml.storage import open_store

    monkeypatch.setenv("VISIONLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISIONLOOP_SUPERCLASSES", "insects")
    monkeypatch.setenv("VISIONLOOP_CLASS_TARGET", "10")
    monkeypatch.setenv("VISIONLOOP_DATA_SOURCES", f"folder:{tiny_folder(tmp_path / 'imgs')}")
    run = dag.test()
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state

    settings = Settings.from_env()
    store = open_store(settings)
    version = snapshots.latest_version(settings)
    manifest = snapshots.manifest(settings, version)
    assert manifest["synthetic"]["insects"] == 6
    assert sum(manifest["counts"]["train"].values()) + sum(manifest["counts"]["val"].values()) + \
        sum(manifest["counts"]["test"].values()) == 110
    assert manifest["parameters"]["pipeline"] == 2 and sum(manifest["counts"]["corrections"].values()) == 0
    assert sum(manifest["ids"].values()) == 104  # every real image, once: the DAG steps keep identities
    assert not list(store.list("staging/")), "staging arrays are deleted after the snapshot"
    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
    assert [e.extra.get("version") for e in events] == [version]
