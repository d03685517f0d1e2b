"""The model card: a registered version's description in the MLflow UI, in markdown.

It says what a reviewer asks before trusting a version: which data (snapshot version,
sources, counts), how good (accuracy, recall per class), how well it refuses unknown
images (OOD metrics of the default detector), and what the registry gate decided and why.
"""

from __future__ import annotations

from typing import Any

MODEL_DESCRIPTION = (
    "VisionLoop's 13-class 32x32 image classifier. Each version is a pyfunc that answers like the "
    "service's POST /classify (label, flip-TTA probabilities, OOD verdict); its description is the "
    "model card: data, metrics, per-class recall, OOD metrics and the gate's decision.")


def model_card(run: Any, decision: dict, manifest: dict) -> str:
    """Markdown card from a training run (mlflow Run or {run_id, params, metrics, tags}), gate decision, manifest."""
    facts = run_facts(run)
    lines = [f"# VisionLoop classifier v{decision.get('version', '?')}", "",
             f"Run `{facts['run_id']}`: arch `{facts['params'].get('arch', '?')}`, "
             f"profile `{facts['params'].get('profile', '?')}`.", ""]
    lines += gate_section(decision) + data_section(manifest, facts) + metrics_section(facts) + ood_section(facts)
    return "\n".join(lines).rstrip() + "\n"


def run_facts(run: Any) -> dict:
    """run_id, params, metrics and tags of an mlflow Run or of a plain dict with those keys."""
    if hasattr(run, "data"):
        return {"run_id": run.info.run_id, "params": dict(run.data.params), "metrics": dict(run.data.metrics),
                "tags": dict(run.data.tags)}
    return {"run_id": run.get("run_id", ""), "params": dict(run.get("params", {})),
            "metrics": dict(run.get("metrics", {})), "tags": dict(run.get("tags", {}))}


def gate_section(decision: dict) -> list[str]:
    """Promoted or rejected, the reasons, and the numbers compared with the champion."""
    verdict = "promoted to champion" if decision.get("promoted") else "not promoted (stays challenger)"
    lines = ["## Gate decision", "", f"**{verdict}**", ""]
    lines += [f"- {r}" for r in _as_list(decision.get("reasons"))]
    lines += [f"- note: {n}" for n in _as_list(decision.get("notes"))]
    rows = [("clean test accuracy", decision.get("test_accuracy"), decision.get("champion_accuracy")),
            ("corrections accuracy", decision.get("corrections_accuracy"),
             decision.get("champion_corrections_accuracy")),
            ("held-out OOD AUROC", decision.get("ood_heldout_auroc"), decision.get("champion_ood_heldout_auroc"))]
    champion = decision.get("champion_version")
    lines += ["", f"| gate measure | this version | champion {f'v{champion}' if champion else '(none)'} |",
              "|---|---|---|"]
    lines += [f"| {name} | {_num(mine)} | {_num(theirs)} |" for name, mine, theirs in rows]
    if decision.get("worst_recall_class"):
        lines.append(f"\nWorst recall drop vs champion: {decision['worst_recall_class']} "
                     f"({_num(decision.get('worst_recall_drop'))}).")
    return lines + [""]


def data_section(manifest: dict, facts: dict) -> list[str]:
    """Snapshot version, creation time, sources and images per split."""
    version = manifest.get("version") or facts["params"].get("dataset_version", "?")
    lines = ["## Data", "", f"Dataset version `{version}`, created {manifest.get('created_at', '?')}.", "",
             "Sources:"]
    for src in manifest.get("sources", []):
        lines.append(f"- {src.get('name', '?')} ({src.get('kind', '?')}), checksum `{str(src.get('checksum', ''))[:16]}`")
    counts = manifest.get("counts", {})
    if counts:
        lines += ["", "| split | images |", "|---|---|"]
        lines += [f"| {split} | {sum(per.values())} |" for split, per in counts.items()]
    synthetic = sum((manifest.get("synthetic") or {}).values())
    if synthetic:
        lines.append(f"\n{synthetic} synthetic (rotated) training images balance the classes.")
    return lines + [""]


def metrics_section(facts: dict) -> list[str]:
    """Validation and test accuracy, then test recall per class (worst first)."""
    m = facts["metrics"]
    lines = ["## Metrics", "", f"- validation accuracy (flip TTA): {_num(m.get('val_accuracy'))}",
             f"- test accuracy: {_num(m.get('test_accuracy'))}"]
    recall = {k.removeprefix("test_recall_"): v for k, v in m.items() if k.startswith("test_recall_")}
    if recall:
        lines += ["", "| class | test recall |", "|---|---|"]
        lines += [f"| {c} | {_num(r)} |" for c, r in sorted(recall.items(), key=lambda kv: kv[1])]
    return lines + [""]


def ood_section(facts: dict) -> list[str]:
    """The default detector's held-out numbers and its AUROC per evaluation set."""
    m, tags = facts["metrics"], facts["tags"]
    det = tags.get("ood_default_detector")
    if not det:
        return ["## Out-of-distribution detection", "", "No OOD detector was fitted for this run.", ""]
    lines = ["## Out-of-distribution detection", "",
             f"Default detector `{det}` (primary OOD set `{tags.get('ood_primary_set', '?')}`):", "",
             f"- held-out AUROC: {_num(m.get('ood_heldout_auroc', m.get(f'ood_auroc_{det}')))}",
             f"- FPR at 95% TPR: {_num(m.get('ood_heldout_fpr95', m.get(f'ood_fpr95_{det}')))}",
             f"- in-distribution images rejected: {_num(m.get(f'ood_id_reject_{det}'))}"]
    per_set = {k.removeprefix(f"ood_auroc_{det}_"): v for k, v in m.items() if k.startswith(f"ood_auroc_{det}_")}
    if per_set:
        lines += ["", "| OOD set | AUROC |", "|---|---|"]
        lines += [f"| {s} | {_num(v)} |" for s, v in sorted(per_set.items())]
    return lines + [""]


def describe_version(client: Any, name: str, version: str | int, card: str) -> None:
    """Set the card as the version's description, and the registered model's description if it has none."""
    client.update_model_version(name, str(version), description=card)
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=MODEL_DESCRIPTION)


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [v for v in value.split("; ") if v] if isinstance(value, str) else [str(v) for v in value]


def _num(value: Any) -> str:
    if value is None or value == "":
        return "n/a"
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)
