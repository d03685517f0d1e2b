#!/bin/sh
# One Postgres, two databases: Airflow's metadata and MLflow's tracking/registry store.
set -eu
for db in "${AIRFLOW_DB:-airflow}" "${MLFLOW_DB:-mlflow}"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
SELECT 'CREATE DATABASE "$db"' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\gexec
SQL
done
