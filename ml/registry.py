"""The gated model registry: register every run, promote to `champion` only when it is no worse.

The gate compares champion and candidate on images neither trained on (the
candidate snapshot's test split and held-out corrections, minus the champion's
training images), fails closed (any MLflow or store error raises, nothing is
promoted) and is idempotent per run (a retry reuses the run's version).
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml import layout
from ml.config import Settings

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
OOD_METRIC = "ood_heldout_auroc"
# Tag order: gate.promoted goes last, so its presence marks a finished gate (see register_and_gate).
TAGS = ("reasons", "notes", "test_accuracy", "champion_version", "champion_accuracy",
        "clean_accuracy", "champion_clean_accuracy", "clean_n",
        "corrections_accuracy", "champion_corrections_accuracy", "corrections_n",
        "excluded_n", "excluded_clean_n", "excluded_corrections_n",
        "worst_recall_drop", "worst_recall_class", "ood_heldout_auroc", "champion_ood_heldout_auroc",
        "dataset_version", "champion_dataset_version", "run_id", "bundle_sha256", "model_sha256", "promoted")


class GateError(RuntimeError):
    """The gate could not compare the candidate with the champion; nothing was promoted."""


def _client(settings: Settings) -> MlflowClient:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


def aliases(client: MlflowClient, settings: Settings) -> dict[str, str]:
    """{alias: version}; empty when the model is not registered yet. Any other error raises."""
    try:
        model = client.get_registered_model(settings.model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise  # a down server is not "no champion"
    return {alias: str(version) for alias, version in model.aliases.items()}


def alias_version(settings: Settings, alias: str) -> str | None:
    """Version behind an alias, or None when the alias (or the registered model) does not exist."""
    return aliases(_client(settings), settings).get(alias)


def champion_version(settings: Settings) -> str | None:
    return alias_version(settings, CHAMPION)


def version_of_run(client: MlflowClient, settings: Settings, run_id: str) -> ModelVersion | None:
    """The version already registered from this run (a gate retry), if any."""
    found = client.search_model_versions(f"name='{settings.model_name}' and run_id='{run_id}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def run_facts(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The run's dataset version and OOD metric (None when OOD fitting did not log it)."""
    run = client.get_run(run_id)
    dataset = run.data.params.get("dataset_version")
    if not dataset:
        raise GateError(f"run {run_id} has no dataset_version param: it was not made by train_model")
    return {"dataset_version": dataset, "ood": run.data.metrics.get(OOD_METRIC)}


def artifact_digests(settings: Settings, run_id: str, workdir: str) -> dict[str, str]:
    """tree_digest of the run's `bundle` and `model` folders (serving checks them before a swap), and their paths."""
    import mlflow

    from ml.digests import tree_digest

    digests = {}
    for name in ("bundle", "model"):
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{name}", dst_path=workdir,
                                                   tracking_uri=settings.mlflow_tracking_uri)
        digests[f"{name}_sha256"] = tree_digest(path)
        digests[f"{name}_path"] = path
    return digests


def measure(settings: Settings, client: MlflowClient, run_id: str, champion: str | None,
            workdir: str) -> dict[str, Any]:
    """Every number the gate decides on: both models scored on images neither trained on."""
    from ml.evaluate import gate_sets, score_sets
    from ml.model import load_keras_model, load_model_version

    facts = run_facts(client, run_id)
    champ_facts = run_facts(client, client.get_model_version(settings.model_name, champion).run_id) \
        if champion else None
    sets = gate_sets(settings, facts["dataset_version"], champ_facts and champ_facts["dataset_version"])
    if not len(sets.clean[1]) and champion:
        raise GateError(f"no test image of {facts['dataset_version']} is unseen by champion v{champion} "
                        f"(all {sets.excluded['clean']} are in its training data): cannot compare them")
    if not len(sets.clean[1]):
        raise GateError(f"dataset {facts['dataset_version']} has an empty test split: nothing to gate on")
    digests = artifact_digests(settings, run_id, workdir)
    numbers = {"candidate": score_sets(load_keras_model(digests["model_path"]), sets), "champion": None,
               "facts": facts, "champion_facts": champ_facts, "excluded": sets.excluded, **digests}
    if champion:
        numbers["champion"] = score_sets(load_model_version(settings.model_name, champion), sets)
    return numbers


def gate(settings: Settings, cand: dict[str, Any], champ: dict[str, Any] | None,
         ood: tuple[float | None, float | None] = (None, None)) -> tuple[list[str], list[str]]:
    """(reasons to reject, notes on rules that were skipped); no reasons = promote."""
    reasons, notes = [], []
    if cand["clean_accuracy"] < settings.gate_min_accuracy:
        reasons.append(f"clean test accuracy {cand['clean_accuracy']:.4f} < floor {settings.gate_min_accuracy:.4f}")
    if champ is None:
        return reasons, notes
    if cand["clean_accuracy"] < champ["clean_accuracy"] - settings.gate_epsilon:
        reasons.append(f"clean test accuracy {cand['clean_accuracy']:.4f} < champion "
                       f"{champ['clean_accuracy']:.4f} - {settings.gate_epsilon}")
    worst, drop = worst_recall_drop(cand["recall"], champ["recall"])
    if drop > settings.gate_max_recall_drop:
        reasons.append(f"recall of {worst} drops {drop:.4f} > {settings.gate_max_recall_drop}")
    if cand["corrections_n"]:
        gain = cand["corrections_accuracy"] - champ["corrections_accuracy"]
        if not gain > settings.gate_min_corrections_gain:
            reasons.append(f"corrections accuracy {cand['corrections_accuracy']:.4f} is not better than "
                           f"champion {champ['corrections_accuracy']:.4f} + {settings.gate_min_corrections_gain}"
                           f" (on {cand['corrections_n']} held-out corrections)")
    else:
        notes.append("corrections rule skipped: no held-out corrections unseen by both models")
    reasons.extend(ood_rule(settings, *ood, notes))
    return reasons, notes


def worst_recall_drop(recall: dict[str, float], champion: dict[str, float]) -> tuple[str, float]:
    drops = {c: champion[c] - recall.get(c, 0.0) for c in champion}
    if not drops:
        return "", 0.0
    worst = max(drops, key=drops.get)
    return worst, drops[worst]


def ood_rule(settings: Settings, candidate: float | None, champion: float | None, notes: list[str]) -> list[str]:
    """Refuse a candidate whose held-out OOD AUROC fell by more than the allowed drop."""
    if candidate is None or champion is None:
        who = "candidate" if candidate is None else "champion"
        notes.append(f"OOD rule skipped: the {who} run has no {OOD_METRIC} metric")
        return []
    if candidate < champion - settings.gate_max_ood_auroc_drop:
        return [f"{OOD_METRIC} {candidate:.4f} < champion {champion:.4f} - {settings.gate_max_ood_auroc_drop}"]
    return []


def decide(settings: Settings, run_id: str, champion: str | None, numbers: dict[str, Any]) -> dict[str, Any]:
    """The decision record: the verdict, its reasons and every number behind it."""
    cand, champ = numbers["candidate"], numbers["champion"]
    champ_facts = numbers["champion_facts"] or {}
    ood = (numbers["facts"]["ood"], champ_facts.get("ood"))
    reasons, notes = gate(settings, cand, champ, ood)
    worst, drop = worst_recall_drop(cand["recall"], champ["recall"]) if champ else ("", 0.0)
    verdict = [f"better than or equal to champion v{champion}" if champion else "first model: no champion yet"]
    return {"run_id": run_id, "promoted": not reasons, "reasons": reasons or verdict, "notes": notes,
            "test_accuracy": cand["clean_accuracy"], "champion_version": champion,
            "champion_accuracy": champ and champ["clean_accuracy"],
            "clean_accuracy": cand["clean_accuracy"], "champion_clean_accuracy": champ and champ["clean_accuracy"],
            "clean_n": cand["clean_n"], "corrections_accuracy": cand["corrections_accuracy"],
            "champion_corrections_accuracy": champ and champ["corrections_accuracy"],
            "corrections_n": cand["corrections_n"], "excluded_n": sum(numbers["excluded"].values()),
            "excluded_clean_n": numbers["excluded"]["clean"],
            "excluded_corrections_n": numbers["excluded"]["corrections"],
            "worst_recall_drop": drop, "worst_recall_class": worst,
            "ood_heldout_auroc": ood[0], "champion_ood_heldout_auroc": ood[1],
            "dataset_version": numbers["facts"]["dataset_version"],
            "champion_dataset_version": champ_facts.get("dataset_version"),
            "bundle_sha256": numbers["bundle_sha256"], "model_sha256": numbers["model_sha256"]}


def register_and_gate(settings: Settings, run_id: str) -> dict[str, Any]:
    """Register the run's model as `challenger` and promote it to `champion` if it passes the gate.

    Fails closed: an MLflow or store error raises before anything is promoted. A retry
    reuses the version this run already has; a finished gate returns its recorded decision.
    """
    import mlflow

    client = _client(settings)
    existing = version_of_run(client, settings, run_id)
    if existing is not None and "gate.promoted" in existing.tags:
        return recorded_decision(existing)
    current = aliases(client, settings)
    champion = current.get(CHAMPION)
    crashed_after_promotion = existing is not None and champion == str(existing.version)
    if crashed_after_promotion:
        champion = current.get(PREVIOUS)  # compare with the champion it replaced
    with tempfile.TemporaryDirectory(prefix="visionloop-gate-") as workdir:
        numbers = measure(settings, client, run_id, champion, workdir)
        decision = decide(settings, run_id, champion, numbers)
        if existing is None:
            # The registered artefact is the pyfunc that answers like /classify (the bundle is
            # complete by now); serving and the digests keep reading the run's model/ and bundle/.
            from ml.pyfunc_model import log_pyfunc

            uri = log_pyfunc(run_id, settings.mlflow_tracking_uri, numbers["model_path"], numbers["bundle_path"])
            existing = mlflow.register_model(uri, settings.model_name)
    version = str(existing.version)
    decision["version"] = version
    describe(settings, client, run_id, version, decision)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    # Every number and digest is on the version before `champion` can point at it (serving
    # verifies the digests when it swaps); gate.promoted last: a retry after a crash re-runs the gate.
    for key in (k for k in TAGS if k != "promoted"):
        client.set_model_version_tag(settings.model_name, version, f"gate.{key}", _tag(decision[key]))
    if decision["promoted"]:
        promote(settings, version)
    elif crashed_after_promotion:
        restore_champion(client, settings, champion)  # undo the promotion the failed attempt made
    client.set_model_version_tag(settings.model_name, version, "gate.promoted", _tag(decision["promoted"]))
    log.info("model v%s %s: %s", version, "promoted" if decision["promoted"] else "rejected",
             "; ".join(decision["reasons"] + decision["notes"]))
    return decision


def describe(settings: Settings, client: MlflowClient, run_id: str, version: str, decision: dict) -> None:
    """The model card as the version's description; a card that cannot be written never blocks the gate."""
    from ml.model_card import describe_version, model_card
    from ml.storage import open_store

    try:
        manifest = open_store(settings).get_json(layout.dataset_manifest(decision["dataset_version"]))
        card = model_card(client.get_run(run_id), decision, manifest)
        describe_version(client, settings.model_name, version, card)
    except Exception:  # noqa: BLE001  (the decision stands; the card is documentation)
        log.warning("model card for v%s could not be written", version, exc_info=True)


def recorded_decision(mv: ModelVersion) -> dict[str, Any]:
    """The decision a finished gate stored as tags (what a retry returns)."""
    tags = {k.removeprefix("gate."): v for k, v in mv.tags.items() if k.startswith("gate.")}
    return {**tags, "version": str(mv.version), "run_id": mv.run_id, "promoted": tags["promoted"] == "True",
            "reasons": tags.get("reasons", "").split("; "), "notes": [n for n in tags.get("notes", "").split("; ") if n],
            "test_accuracy": float(tags["test_accuracy"]) if tags.get("test_accuracy") else None,
            "reused": True}


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
    current = aliases(client, settings).get(CHAMPION)
    if current and current != version:
        client.set_registered_model_alias(settings.model_name, PREVIOUS, current)
    client.set_registered_model_alias(settings.model_name, CHAMPION, version)
    return {"champion": version, "previous_champion": alias_version(settings, PREVIOUS)}


def restore_champion(client: MlflowClient, settings: Settings, champion: str | None) -> None:
    """Point `champion` back at the version a crashed gate replaced (or at nothing); `previous_champion` stays."""
    if champion:
        client.set_registered_model_alias(settings.model_name, CHAMPION, champion)
    else:
        client.delete_registered_model_alias(settings.model_name, CHAMPION)


def rollback(settings: Settings) -> dict[str, Any]:
    """Swap `champion` and `previous_champion` (a second rollback undoes the first)."""
    previous = alias_version(settings, PREVIOUS)
    if previous is None:
        raise ValueError(f"no previous champion of {settings.model_name!r} to roll back to")
    return promote(settings, previous)


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version, newest first, with its aliases and gate numbers."""
    client = _client(settings)
    current = aliases(client, settings)  # raises when the server is down: that is not "no versions"
    by_version: dict[str, list[str]] = {}
    for alias, version in current.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{settings.model_name}'"):
        rows.append({"version": str(mv.version), "run_id": mv.run_id,
                     "aliases": sorted(by_version.get(str(mv.version), [])),
                     "test_accuracy": mv.tags.get("gate.test_accuracy", ""),
                     "corrections_accuracy": mv.tags.get("gate.corrections_accuracy", ""),
                     "promoted": mv.tags.get("gate.promoted", ""), "reasons": mv.tags.get("gate.reasons", ""),
                     "created": mv.creation_timestamp})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
