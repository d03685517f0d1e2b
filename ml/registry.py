"""The gated model registry: register every run, promote to `champion` only when it is no worse."""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.config import Settings

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"


def _client(settings: Settings) -> MlflowClient:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


def alias_version(settings: Settings, alias: str) -> str | None:
    """Version behind an alias, or None when the alias (or the registered model) does not exist."""
    try:
        return str(_client(settings).get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


def champion_version(settings: Settings) -> str | None:
    return alias_version(settings, CHAMPION)


def run_scores(client: MlflowClient, run_id: str) -> tuple[str, float | None, dict[str, float]]:
    """(dataset_version, test_accuracy, recall per class) as logged by evaluate_run."""
    run = client.get_run(run_id)
    metrics = run.data.metrics
    recall = {k.removeprefix("test_recall_"): v for k, v in metrics.items() if k.startswith("test_recall_")}
    return run.data.params.get("dataset_version", ""), metrics.get("test_accuracy"), recall


def champion_scores(settings: Settings, client: MlflowClient, version: str,
                    dataset_version: str) -> tuple[float, dict[str, float]]:
    """The champion's test numbers on the candidate's test split (re-evaluated if its snapshot differs)."""
    mv = client.get_model_version(settings.model_name, version)
    champ_dataset, accuracy, recall = run_scores(client, mv.run_id)
    if champ_dataset == dataset_version and accuracy is not None:
        return accuracy, recall
    from ml.evaluate import score_on_test
    from ml.model import load_model_version

    log.info("champion v%s was tested on %s: re-evaluating it on %s", version, champ_dataset, dataset_version)
    result = score_on_test(load_model_version(settings.model_name, version), settings, dataset_version)
    return result["accuracy"], result["recall"]


def gate(settings: Settings, accuracy: float, recall: dict[str, float],
         champion: tuple[float, dict[str, float]] | None) -> tuple[list[str], dict[str, Any]]:
    """Reasons to reject (empty = promote) and the numbers behind the decision."""
    reasons, numbers = [], {"champion_accuracy": None, "worst_recall_drop": 0.0, "worst_recall_class": ""}
    if accuracy < settings.gate_min_accuracy:
        reasons.append(f"test accuracy {accuracy:.4f} < floor {settings.gate_min_accuracy:.4f}")
    if champion is not None:
        champ_acc, champ_recall = champion
        numbers["champion_accuracy"] = champ_acc
        if accuracy < champ_acc - settings.gate_epsilon:
            reasons.append(f"test accuracy {accuracy:.4f} < champion {champ_acc:.4f} - {settings.gate_epsilon}")
        drops = {c: champ_recall[c] - recall.get(c, 0.0) for c in champ_recall}
        if drops:
            worst = max(drops, key=drops.get)
            numbers.update(worst_recall_drop=drops[worst], worst_recall_class=worst)
            if drops[worst] > settings.gate_max_recall_drop:
                reasons.append(f"recall of {worst} drops {drops[worst]:.4f} > {settings.gate_max_recall_drop}")
    return reasons, numbers


def register_and_gate(settings: Settings, run_id: str) -> dict[str, Any]:
    """Register the run's model, alias it `challenger`, and promote it to `champion` if it passes the gate."""
    import mlflow

    client = _client(settings)
    dataset_version, accuracy, recall = run_scores(client, run_id)
    if accuracy is None:
        from ml.evaluate import evaluate_run

        evaluate_run(settings, run_id)  # the gate needs test numbers; evaluate if the caller skipped it
        dataset_version, accuracy, recall = run_scores(client, run_id)
    version = str(mlflow.register_model(f"runs:/{run_id}/model", settings.model_name).version)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    current = champion_version(settings)
    champion = champion_scores(settings, client, current, dataset_version) if current else None
    reasons, numbers = gate(settings, accuracy, recall, champion)
    promoted = not reasons
    decision = {"version": version, "run_id": run_id, "promoted": promoted,
                "reasons": reasons or ([f"better than or equal to champion v{current}"] if current
                                       else ["first model: no champion yet"]),
                "test_accuracy": accuracy, "champion_version": current, "dataset_version": dataset_version,
                **numbers}
    for key in ("promoted", "reasons", "test_accuracy", "champion_version", "champion_accuracy",
                "worst_recall_drop", "worst_recall_class", "dataset_version"):
        client.set_model_version_tag(settings.model_name, version, f"gate.{key}", _tag(decision[key]))
    if promoted:
        promote(settings, version)
    log.info("model v%s %s: %s", version, "promoted" if promoted else "rejected", "; ".join(decision["reasons"]))
    return decision


def _tag(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def promote(settings: Settings, version: str | int) -> dict[str, Any]:
    """Make a version `champion`; the one it replaces becomes `previous_champion`."""
    client, version = _client(settings), str(version)
    try:
        client.get_model_version(settings.model_name, version)
    except MlflowException:
        raise ValueError(f"{settings.model_name} has no version {version!r}") from None
    current = champion_version(settings)
    if current and current != version:
        client.set_registered_model_alias(settings.model_name, PREVIOUS, current)
    client.set_registered_model_alias(settings.model_name, CHAMPION, version)
    return {"champion": version, "previous_champion": alias_version(settings, PREVIOUS)}


def rollback(settings: Settings) -> dict[str, Any]:
    """Swap `champion` and `previous_champion` (a second rollback undoes the first)."""
    previous = alias_version(settings, PREVIOUS)
    if previous is None:
        raise ValueError(f"no previous champion of {settings.model_name!r} to roll back to")
    return promote(settings, previous)


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version, newest first, with its aliases and gate numbers."""
    client = _client(settings)
    try:
        aliases = client.get_registered_model(settings.model_name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise  # a down server is not "no versions"
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{settings.model_name}'"):
        rows.append({"version": str(mv.version), "run_id": mv.run_id,
                     "aliases": sorted(by_version.get(str(mv.version), [])),
                     "test_accuracy": mv.tags.get("gate.test_accuracy", ""),
                     "promoted": mv.tags.get("gate.promoted", ""), "reasons": mv.tags.get("gate.reasons", ""),
                     "created": mv.creation_timestamp})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
