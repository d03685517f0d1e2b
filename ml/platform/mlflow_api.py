"""The two MLflow questions the launcher asks, over MLflow's REST API.

These are the endpoints `MlflowClient.get_model_version_by_alias` and
`search_runs` call; plain HTTP keeps `status` fast (importing mlflow takes ~3 s).
"""

from __future__ import annotations

import os

import httpx

# ml.train logs Keras' per-epoch logs as epoch_<name>; the first one present counts the epochs done.
EPOCH_METRICS = ("epoch_val_accuracy", "epoch_accuracy", "epoch_loss", "epoch_val_loss")


def _auth() -> httpx.BasicAuth | None:
    """MLflow's own client variables, for a server run with `--app-name basic-auth`."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return httpx.BasicAuth(user, password or "") if user else None


def _get(url: str, **kwargs) -> httpx.Response:
    return httpx.get(url, auth=_auth(), **kwargs)


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, auth=_auth(), **kwargs)


def champion_version(tracking_uri: str, model_name: str, alias: str = "champion") -> str | None:
    """The registry version behind the alias, or None when there is none (or MLflow is down)."""
    try:
        response = _get(f"{tracking_uri}/api/2.0/mlflow/registered-models/alias",
                        params={"name": model_name, "alias": alias}, timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return str(response.json().get("model_version", {}).get("version") or "") or None


def latest_run(tracking_uri: str, experiment: str) -> dict | None:
    """The newest run of the experiment (MLflow's run JSON), or None."""
    try:
        got = _get(f"{tracking_uri}/api/2.0/mlflow/experiments/get-by-name",
                   params={"experiment_name": experiment}, timeout=5)
        if got.status_code != 200:
            return None
        exp_id = got.json()["experiment"]["experiment_id"]
        found = _post(f"{tracking_uri}/api/2.0/mlflow/runs/search", timeout=5, json={
            "experiment_ids": [exp_id], "order_by": ["attributes.start_time DESC"], "max_results": 1})
        runs = found.json().get("runs", []) if found.status_code == 200 else []
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return runs[0] if runs else None


def epoch_progress(tracking_uri: str, run: dict) -> str:
    """'epoch 3/20, val_accuracy 0.712' from the run's metric history; '' when nothing is logged yet."""
    data = run.get("data", {})
    metrics = {m["key"]: m for m in data.get("metrics", [])}
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    key = next((k for k in EPOCH_METRICS if k in metrics), None)
    if key is None:
        return ""
    try:
        history = _get(f"{tracking_uri}/api/2.0/mlflow/metrics/get-history", timeout=5,
                       params={"run_id": run["info"]["run_id"], "metric_key": key})
        done = len(history.json().get("metrics", []))
    except (httpx.HTTPError, ValueError, KeyError):
        return ""
    total = params.get("epochs")
    of = f"/{total}" if total else ""
    return f"epoch {done}{of}, {key.removeprefix('epoch_')} {metrics[key]['value']:.3f}"
