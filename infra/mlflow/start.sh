#!/bin/sh
# MLflow tracking server for compose: Postgres backend, artifacts proxied to MinIO.
# The local launcher runs the same command with SQLite and a local directory.
set -eu
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # 7 huey consumers otherwise; VisionLoop runs no MLflow jobs
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "s3://${MLFLOW_BUCKET:-mlflow}/artifacts" \
  --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-1}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}"
