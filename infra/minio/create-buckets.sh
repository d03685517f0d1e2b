#!/bin/sh
# One-shot (idempotent): the data bucket, the MLflow artifact bucket, and one MinIO user per
# service with a policy limited to what that service reads and writes (least privilege):
#   mlflow   read/write the MLflow bucket (artifacts are proxied: no other service touches it)
#   airflow  read the data bucket; write datasets/, staging/ (and delete it), monitoring/
#   serving  write requests/, request-ids/, feedback/; read those and datasets/ (similar images)
# Only this container and MinIO itself see the root credentials.
set -eu
data="${VISIONLOOP_S3_BUCKET:-visionloop}"
artifacts="${MLFLOW_BUCKET:-mlflow}"
mc alias set local "http://minio:9000" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$data"
mc mb --ignore-existing "local/$artifacts"

# bucket_statement BUCKET: listing and location, which every client's bucket check needs.
bucket_statement() {
  printf '{"Effect":"Allow","Action":["s3:ListBucket","s3:GetBucketLocation"],"Resource":["arn:aws:s3:::%s"]}' "$1"
}
# objects_statement ACTIONS BUCKET PREFIX...: ACTIONS (comma-separated s3: actions) on BUCKET/PREFIX*.
objects_statement() {
  actions=$1 bucket=$2
  shift 2
  resources=""
  for prefix in "$@"; do resources="$resources${resources:+,}\"arn:aws:s3:::$bucket/$prefix*\""; done
  printf '{"Effect":"Allow","Action":[%s],"Resource":[%s]}' "$actions" "$resources"
}
READ='"s3:GetObject"'
WRITE='"s3:PutObject"'
DELETE='"s3:DeleteObject"'

# add_service USER PASSWORD POLICY_NAME STATEMENTS: create or update the user, its policy, attach it.
add_service() {
  user=$1 password=$2 name=$3 statements=$4
  policy="${TMPDIR:-/tmp}/$name.json"
  printf '{"Version":"2012-10-17","Statement":[%s]}\n' "$statements" >"$policy"
  mc admin user add local "$user" "$password" >/dev/null
  mc admin policy create local "$name" "$policy" >/dev/null
  # attach fails when the policy is already attached (a re-run): check the result instead.
  mc admin policy attach local "$name" --user "$user" >/dev/null 2>&1 || true
  mc admin user info local "$user" | grep -q "$name" || { echo "policy $name not attached to $user" >&2; exit 1; }
  echo "MinIO user $user: policy $name"
}

add_service "${MINIO_MLFLOW_USER:?}" "${MINIO_MLFLOW_PASSWORD:?}" visionloop-mlflow \
  "$(bucket_statement "$artifacts"),$(objects_statement "$READ,$WRITE,$DELETE" "$artifacts" "")"
add_service "${MINIO_AIRFLOW_USER:?}" "${MINIO_AIRFLOW_PASSWORD:?}" visionloop-airflow \
  "$(bucket_statement "$data"),$(objects_statement "$READ" "$data" ""),$(objects_statement "$WRITE" "$data" datasets/ staging/ monitoring/),$(objects_statement "$DELETE" "$data" staging/)"
add_service "${MINIO_SERVING_USER:?}" "${MINIO_SERVING_PASSWORD:?}" visionloop-serving \
  "$(bucket_statement "$data"),$(objects_statement "$READ" "$data" datasets/ requests/ request-ids/ feedback/),$(objects_statement "$WRITE" "$data" requests/ request-ids/ feedback/)"
echo "buckets and service users ready"
