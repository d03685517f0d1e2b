"""The registry gate's rules, on numbers: when a candidate may replace the champion, and the decision record.

`ml.stages.gate` measures both models on images neither trained on and applies these;
they read thresholds from Settings and nothing else, so they are tested without MLflow.
"""

from __future__ import annotations

from typing import Any

from ml.config import Settings

OOD_METRIC = "ood_heldout_auroc"
# Tag order: gate.promoted goes last, so its presence marks a finished gate (see ml.stages.gate.gate).
TAGS = ("reasons", "notes", "test_accuracy", "champion_version", "champion_accuracy",
        "clean_accuracy", "champion_clean_accuracy", "clean_n",
        "corrections_accuracy", "champion_corrections_accuracy", "corrections_n",
        "excluded_n", "excluded_clean_n", "excluded_corrections_n",
        "worst_recall_drop", "worst_recall_class", "ood_heldout_auroc", "champion_ood_heldout_auroc",
        "dataset_version", "champion_dataset_version", "run_id", "bundle_sha256", "model_sha256", "promoted")


def reasons(settings: Settings, cand: dict[str, Any], champ: dict[str, Any] | None,
            ood: tuple[float | None, float | None] = (None, None)) -> tuple[list[str], list[str]]:
    """(reasons to reject, notes on rules that were skipped); no reasons = promote."""
    found, notes = [], []
    if cand["clean_accuracy"] < settings.gate_min_accuracy:
        found.append(f"clean test accuracy {cand['clean_accuracy']:.4f} < floor {settings.gate_min_accuracy:.4f}")
    if champ is None:
        return found, notes
    if cand["clean_accuracy"] < champ["clean_accuracy"] - settings.gate_epsilon:
        found.append(f"clean test accuracy {cand['clean_accuracy']:.4f} < champion "
                     f"{champ['clean_accuracy']:.4f} - {settings.gate_epsilon}")
    worst, drop = worst_recall_drop(cand["recall"], champ["recall"])
    if drop > settings.gate_max_recall_drop:
        found.append(f"recall of {worst} drops {drop:.4f} > {settings.gate_max_recall_drop}")
    if cand["corrections_n"]:
        gain = cand["corrections_accuracy"] - champ["corrections_accuracy"]
        if not gain > settings.gate_min_corrections_gain:
            found.append(f"corrections accuracy {cand['corrections_accuracy']:.4f} is not better than "
                         f"champion {champ['corrections_accuracy']:.4f} + {settings.gate_min_corrections_gain}"
                         f" (on {cand['corrections_n']} held-out corrections)")
    else:
        notes.append("corrections rule skipped: no held-out corrections unseen by both models")
    found.extend(ood_rule(settings, *ood, notes))
    return found, notes


def worst_recall_drop(recall: dict[str, float], champion: dict[str, float]) -> tuple[str, float]:
    """The class whose recall fell most against the champion's, and by how much."""
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
    rejected, notes = reasons(settings, cand, champ, ood)
    worst, drop = worst_recall_drop(cand["recall"], champ["recall"]) if champ else ("", 0.0)
    verdict = [f"better than or equal to champion v{champion}" if champion else "first model: no champion yet"]
    return {"run_id": run_id, "promoted": not rejected, "reasons": rejected or verdict, "notes": notes,
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


def recorded_decision(mv: Any) -> dict[str, Any]:
    """The decision a finished gate stored as tags on a model version (what a retry returns)."""
    tags = {k.removeprefix("gate."): v for k, v in mv.tags.items() if k.startswith("gate.")}
    return {**tags, "version": str(mv.version), "run_id": mv.run_id, "promoted": tags["promoted"] == "True",
            "reasons": tags.get("reasons", "").split("; "), "notes": [n for n in tags.get("notes", "").split("; ") if n],
            "test_accuracy": float(tags["test_accuracy"]) if tags.get("test_accuracy") else None,
            "reused": True}


def tag_value(value: Any) -> str:
    """A decision value as a version tag: lists joined by '; ', floats to 4 places, None empty."""
    if isinstance(value, list):
        return "; ".join(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
