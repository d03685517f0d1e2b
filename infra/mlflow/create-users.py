"""One-shot for compose: an MLflow user per service, created by the admin (idempotent).

Reads MLFLOW_TRACKING_URI and the admin's MLFLOW_TRACKING_USERNAME/PASSWORD, then one
`<NAME>_USER`/`<NAME>_PASSWORD` pair per service in MLFLOW_SERVICE_USERS (e.g. "MLFLOW_TRAINING,
MLFLOW_SERVING"). Users get the server's default permission (READ); what a user creates
(experiments, registered models) it manages, so training can write and serving can only read.
"""

from __future__ import annotations

import os
import sys

from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient


def ensure_user(client: AuthServiceClient, username: str, password: str) -> str:
    """Create the user, or reset its password to the configured one."""
    try:
        client.get_user(username)
    except RestException:
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    return "password updated"


def main() -> int:
    client = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
    for prefix in filter(None, (p.strip() for p in os.environ.get("MLFLOW_SERVICE_USERS", "").split(","))):
        username, password = os.environ.get(f"{prefix}_USER"), os.environ.get(f"{prefix}_PASSWORD")
        if not (username and password):
            print(f"error: set {prefix}_USER and {prefix}_PASSWORD", file=sys.stderr)
            return 2
        try:
            print(f"MLflow user {username}: {ensure_user(client, username, password)}")
        except RestException as exc:  # e.g. a password under MLflow's 12-character minimum
            print(f"error: MLflow refused user {username} ({prefix}_USER/{prefix}_PASSWORD): {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
