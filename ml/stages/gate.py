"""Stage `gate`: register every run, promote it to `champion` only when it is no worse; the registry's aliases.

The gate compares champion and candidate on images neither trained on (the
candidate snapshot's test split and held-out corrections, minus the champion's
training images; rules in `ml.gate_rules`), fails closed (any MLflow or store error
raises, nothing is promoted) and is idempotent per run (a retry reuses the run's version).
The registered artefact is the pyfunc that answers like `/classify` (`ml.stages.pyfunc`).
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.config import Settings
from ml.evaluate import GateSets, score_sets, unseen
from ml.gate_rules import OOD_METRIC, TAGS, decide, recorded_decision, tag_value
from ml.stages import snapshots, tracking
from ml.stages.tracking import CHALLENGER, CHAMPION, PREVIOUS

log = logging.getLogger(__name__)


class GateError(RuntimeError):
    """The gate could not compare the candidate with the champion; nothing was promoted."""


def version_of_run(client: MlflowClient, settings: Settings, run_id: str) -> ModelVersion | None:
    """The version already registered from this run (a gate retry), if any."""
    found = client.search_model_versions(f"name='{settings.model_name}' and run_id='{run_id}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def run_facts(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The run's dataset version and OOD metric (None when OOD fitting did not log it)."""
    run = client.get_run(run_id)
    dataset = run.data.params.get("dataset_version")
    if not dataset:
        raise GateError(f"run {run_id} has no dataset_version param: it was not made by the train stage")
    return {"dataset_version": dataset, "ood": run.data.metrics.get(OOD_METRIC)}


def gate_sets(settings: Settings, dataset_version: str, champion_dataset: str | None) -> GateSets:
    """The candidate's test and corrections splits minus anything in the champion's training split."""
    from ml.data.identity import content_ids

    seen = None
    if champion_dataset:  # identities, and pixel hashes for pre-stable snapshots
        train = snapshots.split_arrays(settings, champion_dataset, "train")
        seen = np.unique(train.ids), np.unique(content_ids(train.x))
    parts, excluded = {}, {}
    for name, split in (("clean", "test"), ("corrections", "corrections")):
        arrays = snapshots.split_arrays(settings, dataset_version, split)
        keep = unseen(arrays.ids, arrays.x, seen)
        parts[name], excluded[name] = (arrays.x[keep], arrays.y[keep]), int((~keep).sum())
    classes = list(snapshots.manifest(settings, dataset_version).get("classes") or settings.classes)
    return GateSets(parts["clean"], parts["corrections"], excluded, classes)


def artifact_digests(settings: Settings, run_id: str, workdir: str) -> dict[str, str]:
    """tree_digest of the run's `bundle` and `model` folders (serving checks them before a swap), and their paths."""
    from ml.digests import tree_digest

    digests = {}
    for name in ("bundle", "model"):
        path = tracking.download(settings, run_id, name, workdir)
        digests[f"{name}_sha256"] = tree_digest(path)
        digests[f"{name}_path"] = str(path)
    return digests


def measure(settings: Settings, client: MlflowClient, run_id: str, champion: str | None,
            workdir: str) -> dict[str, Any]:
    """Every number the gate decides on: both models scored on images neither trained on."""
    facts = run_facts(client, run_id)
    champ_facts = run_facts(client, tracking.run_id_of_version(settings, champion)) if champion else None
    sets = gate_sets(settings, facts["dataset_version"], champ_facts and champ_facts["dataset_version"])
    if not len(sets.clean[1]) and champion:
        raise GateError(f"no test image of {facts['dataset_version']} is unseen by champion v{champion} "
                        f"(all {sets.excluded['clean']} are in its training data): cannot compare them")
    if not len(sets.clean[1]):
        raise GateError(f"dataset {facts['dataset_version']} has an empty test split: nothing to gate on")
    digests = artifact_digests(settings, run_id, workdir)
    numbers = {"candidate": score_sets(tracking.load_keras(digests["model_path"]), sets), "champion": None,
               "facts": facts, "champion_facts": champ_facts, "excluded": sets.excluded, **digests}
    if champion:
        numbers["champion"] = score_sets(tracking.load_version_model(settings, champion), sets)
    return numbers


def gate(settings: Settings, run_id: str) -> dict[str, Any]:
    """Register the run's model as `challenger` and promote it to `champion` if it passes the gate.

    Fails closed: an MLflow or store error raises before anything is promoted. A retry
    reuses the version this run already has; a finished gate returns its recorded decision.
    """
    client = tracking.client(settings)
    existing = version_of_run(client, settings, run_id)
    if existing is not None and "gate.promoted" in existing.tags:
        return recorded_decision(existing)
    current = tracking.aliases(settings)
    champion = current.get(CHAMPION)
    crashed_after_promotion = existing is not None and champion == str(existing.version)
    if crashed_after_promotion:
        champion = current.get(PREVIOUS)  # compare with the champion it replaced
    with tempfile.TemporaryDirectory(prefix="visionloop-gate-") as workdir:
        numbers = measure(settings, client, run_id, champion, workdir)
        decision = decide(settings, run_id, champion, numbers)
        if existing is None:
            existing = register(settings, run_id, numbers["model_path"], numbers["bundle_path"])
    version = str(existing.version)
    decision["version"] = version
    describe(settings, client, run_id, version, decision)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    # Every number and digest is on the version before `champion` can point at it (serving
    # verifies the digests when it swaps); gate.promoted last: a retry after a crash re-runs the gate.
    for key in (k for k in TAGS if k != "promoted"):
        client.set_model_version_tag(settings.model_name, version, f"gate.{key}", tag_value(decision[key]))
    if decision["promoted"]:
        promote(settings, version)
    elif crashed_after_promotion:
        restore_champion(client, settings, champion)  # undo the promotion the failed attempt made
    client.set_model_version_tag(settings.model_name, version, "gate.promoted", tag_value(decision["promoted"]))
    log.info("model v%s %s: %s", version, "promoted" if decision["promoted"] else "rejected",
             "; ".join(decision["reasons"] + decision["notes"]))
    return decision


def register(settings: Settings, run_id: str, model_dir: str, bundle_dir: str) -> ModelVersion:
    """Log the run's pyfunc (the bundle is complete by now) and register it; serving keeps reading model/ and bundle/."""
    import mlflow

    from ml.stages.pyfunc import log_pyfunc

    uri = log_pyfunc(settings, run_id, model_dir, bundle_dir)
    return mlflow.register_model(uri, settings.model_name)


def describe(settings: Settings, client: MlflowClient, run_id: str, version: str, decision: dict) -> None:
    """The model card as the version's description; a card that cannot be written never blocks the gate."""
    from ml.model_card import describe_version, model_card

    try:
        manifest = snapshots.manifest(settings, decision["dataset_version"])
        card = model_card(client.get_run(run_id), decision, manifest)
        describe_version(client, settings.model_name, version, card)
    except Exception:  # noqa: BLE001  (the decision stands; the card is documentation)
        log.warning("model card for v%s could not be written", version, exc_info=True)


def promote(settings: Settings, version: str | int) -> dict[str, Any]:
    """Make a version `champion`; the one it replaces becomes `previous_champion`."""
    client, version = tracking.client(settings), str(version)
    try:
        client.get_model_version(settings.model_name, version)
    except MlflowException:
        raise ValueError(f"{settings.model_name} has no version {version!r}") from None
    current = tracking.champion_version(settings)
    if current and current != version:
        client.set_registered_model_alias(settings.model_name, PREVIOUS, current)
    client.set_registered_model_alias(settings.model_name, CHAMPION, version)
    return {"champion": version, "previous_champion": tracking.champion_version(settings, PREVIOUS)}


def restore_champion(client: MlflowClient, settings: Settings, champion: str | None) -> None:
    """Point `champion` back at the version a crashed gate replaced (or at nothing); `previous_champion` stays."""
    if champion:
        client.set_registered_model_alias(settings.model_name, CHAMPION, champion)
    else:
        client.delete_registered_model_alias(settings.model_name, CHAMPION)


def rollback(settings: Settings) -> dict[str, Any]:
    """Swap `champion` and `previous_champion` (a second rollback undoes the first)."""
    previous = tracking.champion_version(settings, PREVIOUS)
    if previous is None:
        raise ValueError(f"no previous champion of {settings.model_name!r} to roll back to")
    return promote(settings, previous)


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version, newest first, with its aliases and gate numbers."""
    current = tracking.aliases(settings)  # raises when the server is down: that is not "no versions"
    by_version: dict[str, list[str]] = {}
    for alias, version in current.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in tracking.client(settings).search_model_versions(f"name='{settings.model_name}'"):
        rows.append({"version": str(mv.version), "run_id": mv.run_id,
                     "aliases": sorted(by_version.get(str(mv.version), [])),
                     "test_accuracy": mv.tags.get("gate.test_accuracy", ""),
                     "corrections_accuracy": mv.tags.get("gate.corrections_accuracy", ""),
                     "promoted": mv.tags.get("gate.promoted", ""), "reasons": mv.tags.get("gate.reasons", ""),
                     "created": mv.creation_timestamp})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
