"""Drift windows skip and count requests of model versions without a reference pack, and never fail on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ml import layout
from ml.monitoring import synthetic
from ml.monitoring.reference import ReferenceMissing
from ml.stages import drift
from ml.stages.reference import load_for_version
from ml.storage import open_store

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def known(settings):
    """Version 3 has a cached pack; MLflow is unreachable, so nothing else can be looked up."""
    import dataclasses

    synthetic.pack(list(settings.classes)).save(settings.home / "cache" / "reference" / "3")
    # A dead port, whatever MLflow server an earlier test in the session left in the environment.
    return dataclasses.replace(settings, mlflow_tracking_uri="http://127.0.0.1:1")


def ship(settings, n: int, version: str, seed: int, when: datetime) -> None:
    recs = synthetic.records(n, list(settings.classes), seed=seed, model_version=version, start=when)
    synthetic.write_batches(open_store(settings), recs, when)


@pytest.mark.parametrize("version", ["dir:/srv/bundle", "../../etc", ""])
def test_a_version_that_is_no_registry_version_has_no_pack(known, version):
    with pytest.raises(ReferenceMissing):
        load_for_version(known, version)


def test_unknown_version_is_skipped_and_counted_while_the_known_one_is_tested(known):
    ship(known, 120, "3", seed=1, when=T0)
    ship(known, 80, "dir:/srv/bundle", seed=2, when=T0 + timedelta(minutes=1))
    result = drift.run_window(known, now=T0 + timedelta(hours=1), log_to_mlflow=False)
    assert result["verdict"] == "no drift" and result["model_version"] == "3"
    assert result["n_records"] == 200 and result["n_skipped"] == 80
    assert result["skipped_versions"] == {"dir:/srv/bundle": 80}
    saved = open_store(known).get_json(layout.monitoring_window(result["window_id"]))
    assert saved["n_skipped"] == 80 and result["watermark"]["advanced"]


def test_a_window_of_only_unknown_versions_moves_on_instead_of_stalling(known):
    ship(known, 60, "dir:/srv/bundle", seed=3, when=T0)
    first = drift.run_window(known, now=T0 + timedelta(hours=1), log_to_mlflow=False)
    assert first["verdict"] == "insufficient data" and first["n_skipped"] == 60
    assert first["watermark"]["advanced"], "records that can never be tested must not be re-read forever"
    ship(known, 120, "3", seed=4, when=T0 + timedelta(minutes=30))
    second = drift.run_window(known, now=T0 + timedelta(hours=2), log_to_mlflow=False)
    assert second["n_records"] == 120 and second["n_skipped"] == 0 and second["model_version"] == "3"


def test_a_down_mlflow_is_an_error_not_a_skip(known, monkeypatch):
    """Version 5 may well have a pack: with MLflow unreachable the window fails (and the DAG retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast on the dead port
    ship(known, 60, "5", seed=5, when=T0)
    with pytest.raises(Exception) as error:
        drift.run_window(known, now=T0 + timedelta(hours=1), log_to_mlflow=False)
    assert not isinstance(error.value, ReferenceMissing)
    assert not open_store(known).exists(layout.WATERMARK)
