#!/bin/sh
# One Postgres, three databases: Airflow's metadata, MLflow's tracking/registry store and
# the users of MLflow's basic-auth app.
set -eu
for db in "${AIRFLOW_DB:-airflow}" "${MLFLOW_DB:-mlflow}" "${MLFLOW_AUTH_DB:-mlflow_auth}"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
SELECT 'CREATE DATABASE "$db"' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\gexec
SQL
done
