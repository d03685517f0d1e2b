#!/bin/sh
# One-shot before the Airflow services: migrate the metadata DB and fix the admin password,
# so the UI and the REST API (POST /auth/token) accept the credentials from .env.
set -eu
airflow db migrate
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
mkdir -p "$(dirname "$passwords")"
python - "$passwords" <<'PY'
import json, os, sys
path = sys.argv[1]
json.dump({"admin": os.environ.get("AIRFLOW_ADMIN_PASSWORD", "admin")}, open(path, "w"))
PY
echo "Airflow ready: user admin, password from AIRFLOW_ADMIN_PASSWORD"
