#!/bin/sh
# One-shot: the data bucket and the MLflow artifact bucket (idempotent).
set -eu
mc alias set local "http://minio:9000" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "local/${VISIONLOOP_S3_BUCKET:-visionloop}"
mc mb --ignore-existing "local/${MLFLOW_BUCKET:-mlflow}"
echo "buckets ready"
