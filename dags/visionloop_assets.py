"""Airflow Assets that chain the VisionLoop DAGs (see docs/architecture.md).

Not a DAG file: `.airflowignore` keeps the DAG processor from parsing it, and
DAG files import it (Airflow puts the DAGs folder on sys.path).
"""

from airflow.sdk import Asset

# Updated by drift_monitoring when drift is real or enough corrections arrived; schedules dataset_build.
RETRAIN_REQUEST = Asset(name="visionloop_retrain_request", uri="visionloop://retrain-request")
# Updated by dataset_build with extra={"version": ...}; schedules training_pipeline.
DATASET = Asset(name="visionloop_dataset", uri="visionloop://dataset")
# Updated by training_pipeline with extra={"version": ...} when the champion alias moves.
CHAMPION = Asset(name="visionloop_champion", uri="visionloop://champion")
