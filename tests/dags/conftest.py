"""Airflow needs its tables and the DAGs folder before dag.test() can run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.resetdb()
    yield


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    import sys

    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "dags"))  # Airflow does this for the DAG processor
    return DagBag(dag_folder=str(REPO / "dags"))
