#!/bin/sh
# MLflow tracking server for compose: Postgres backend, artifacts proxied to MinIO.
# The local launcher runs the same command with SQLite and a local directory.
# With MLFLOW_AUTH=true (the compose default) it runs MLflow's basic-auth app: users live in
# MLFLOW_AUTH_DATABASE_URI, the admin is bootstrapped from MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD,
# clients send MLFLOW_TRACKING_USERNAME/PASSWORD (infra/mlflow/create-users.py adds one per service).
set -eu
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # 7 huey consumers otherwise; VisionLoop runs no MLflow jobs
auth=""
if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
  : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD in .env}"
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_SECRET_KEY in .env}"
  # basic_auth.ini takes no environment variables: write it from ours.
  config="${TMPDIR:-/tmp}/mlflow-basic-auth.ini"
  cat >"$config" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:?}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  export MLFLOW_AUTH_CONFIG_PATH="$config"
  auth="--app-name basic-auth"
fi
# shellcheck disable=SC2086  # $auth is two words or none
exec mlflow server $auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "s3://${MLFLOW_BUCKET:-mlflow}/artifacts" \
  --host "${MLFLOW_SERVER_HOST:-0.0.0.0}" --port "${MLFLOW_SERVER_PORT:-5000}" --workers "${MLFLOW_WORKERS:-1}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}"
