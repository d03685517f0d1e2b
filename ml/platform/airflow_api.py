"""A small client for the Airflow 3 REST API: token, unpause, trigger, runs, task logs."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = ("success", "failed")
ACTIVE = ("queued", "running")
READ_RETRY_WAITS_S = (2.0, 5.0, 10.0)  # then one last try


class AirflowApiError(RuntimeError):
    """The Airflow API refused a request or did not answer."""


class AirflowClient:
    """Bearer-token client; the token comes from POST /auth/token with the admin password."""

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 15.0):
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._token: str | None = None

    def _login(self) -> str:
        response = self.http.post("/auth/token", json={"username": self.username, "password": self.password})
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"Airflow login as {self.username!r} failed: HTTP {response.status_code}")
        return response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; logs in on first use and again when the token has expired."""
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._login()
            headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
            response = self._send(method, path, headers=headers, **kwargs)
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            return response
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Reads are retried when the server is slow to answer (a busy api-server on a loaded host);
        writes are not, so a trigger never runs twice."""
        for wait_s in READ_RETRY_WAITS_S:
            try:
                return self.http.request(method, path, **kwargs)
            except (httpx.TimeoutException, httpx.NetworkError):
                if method != "GET":
                    raise
                time.sleep(wait_s)
        return self.http.request(method, path, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def dag_exists(self, dag_id: str) -> bool:
        return self.request("GET", f"/api/v2/dags/{dag_id}").status_code == 200

    def import_errors(self) -> list[dict]:
        """DAG files the DAG processor could not import: `filename` and `stack_trace`."""
        return self._json("GET", "/api/v2/importErrors").get("import_errors", [])

    def wait_for_dags(self, dag_ids: tuple[str, ...], timeout_s: float) -> list[str]:
        """Wait until the DAG processor has parsed every DAG; return those still missing."""
        deadline = time.monotonic() + timeout_s
        missing = list(dag_ids)
        while missing and time.monotonic() < deadline:
            missing = [d for d in missing if not self.dag_exists(d)]
            if missing:
                time.sleep(3)
        return missing

    def unpause(self, dag_id: str) -> None:
        self._json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> dict:
        """Start a manual run now; Airflow 3 needs the `logical_date` key, null meaning "now"."""
        return self._json("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                          json={"logical_date": None, "conf": conf or {}})

    def runs(self, dag_id: str, limit: int = 5) -> list[dict]:
        """The newest runs first."""
        body = self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                          params={"order_by": "-id", "limit": limit})
        return body.get("dag_runs", [])

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        body = self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return body.get("task_instances", [])

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[dict]:
        """The structured log lines of one try (each a dict with at least `event`)."""
        body = self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                          params={"full_content": True}, headers={"Accept": "application/json"})
        lines = body.get("content", [])
        return [line if isinstance(line, dict) else {"event": str(line)} for line in lines]

    def close(self) -> None:
        self.http.close()


def error_line(log: list[dict]) -> str:
    """The most telling line of a failed task's log: the exception, else the last error."""
    for entry in reversed(log):
        for detail in entry.get("error_detail") or []:
            if isinstance(detail, dict) and detail.get("exc_type"):
                return f"{detail['exc_type']}: {detail.get('exc_value', '')}".strip()
    for entry in reversed(log):
        if str(entry.get("level", "")).lower() in ("error", "critical"):
            return str(entry.get("event", "")).strip()
    return str(log[-1].get("event", "")).strip() if log else "(empty log)"
