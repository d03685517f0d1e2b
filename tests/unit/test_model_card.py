"""The model card: rendered from plain dicts, it states the data, metrics, recall, OOD numbers and the verdict."""

from __future__ import annotations

from types import SimpleNamespace

from ml.model_card import MODEL_DESCRIPTION, describe_version, model_card

RUN = {"run_id": "abc123", "params": {"arch": "airnet", "profile": "smoke", "dataset_version": "v20260101"},
       "metrics": {"val_accuracy": 0.8123, "test_accuracy": 0.7991, "test_recall_cat": 0.55,
                   "test_recall_dog": 0.91, "ood_heldout_auroc": 0.8765, "ood_heldout_fpr95": 0.4321,
                   "ood_id_reject_energy": 0.05, "ood_auroc_energy_noise": 0.99, "ood_auroc_energy_svhn": 0.71},
       "tags": {"ood_default_detector": "energy", "ood_primary_set": "heldout"}}
MANIFEST = {"version": "v20260101", "created_at": "2026-01-01T00:00:00Z",
            "sources": [{"kind": "cifar10", "name": "cifar-10-python", "checksum": "c58f30108f718f92721af3b95e74349a"},
                        {"kind": "feedback", "name": "feedback", "checksum": "0123"}],
            "counts": {"train": {"cat": 500, "dog": 450}, "val": {"cat": 50, "dog": 50}, "test": {"cat": 60, "dog": 40}},
            "synthetic": {"cat": 0, "dog": 50}}


def test_card_states_data_metrics_recall_ood_and_verdict():
    decision = {"version": "7", "promoted": False, "test_accuracy": 0.7991, "champion_version": "6",
                "champion_accuracy": 0.8200, "reasons": ["recall of cat drops 0.2000 > 0.05"],
                "notes": ["corrections rule skipped: no held-out corrections"],
                "worst_recall_class": "cat", "worst_recall_drop": 0.2, "ood_heldout_auroc": 0.8765}
    card = model_card(RUN, decision, MANIFEST)
    assert card.startswith("# VisionLoop classifier v7")
    assert "**not promoted (stays challenger)**" in card and "- recall of cat drops 0.2000 > 0.05" in card
    assert "| clean test accuracy | 0.7991 | 0.8200 |" in card and "champion v6" in card
    assert "Dataset version `v20260101`" in card and "cifar-10-python (cifar10)" in card and "feedback (feedback)" in card
    assert "| train | 950 |" in card and "| test | 100 |" in card and "50 synthetic" in card
    assert "validation accuracy (flip TTA): 0.8123" in card and "test accuracy: 0.7991" in card
    assert card.index("| cat | 0.5500 |") < card.index("| dog | 0.9100 |"), "worst recall first"
    assert "Default detector `energy`" in card and "held-out AUROC: 0.8765" in card
    assert "FPR at 95% TPR: 0.4321" in card and "| svhn | 0.7100 |" in card


def test_card_from_recorded_gate_tags_and_no_ood():
    """A retried gate returns its decision from tags (strings, '; '-joined reasons): the card still reads."""
    run = {**RUN, "tags": {}, "metrics": {"val_accuracy": 0.5}}
    decision = {"version": "1", "promoted": True, "reasons": "first model: no champion yet",
                "test_accuracy": "0.5000", "champion_version": ""}
    card = model_card(run, decision, {"sources": []})
    assert "**promoted to champion**" in card and "- first model: no champion yet" in card
    assert "champion (none)" in card and "| clean test accuracy | 0.5000 | n/a |" in card
    assert "Dataset version `v20260101`" in card, "falls back to the run's dataset_version param"
    assert "No OOD detector was fitted" in card and "test accuracy: n/a" in card


class FakeRegistry:
    """Records the client calls describe_version makes (the real server is covered by the parity test)."""

    def __init__(self, description: str = ""):
        self.model = SimpleNamespace(description=description)
        self.versions: dict[str, str] = {}

    def update_model_version(self, name, version, description):
        self.versions[version] = description

    def get_registered_model(self, name):
        return self.model

    def update_registered_model(self, name, description):
        self.model.description = description


def test_describe_version_sets_model_description_once():
    registry = FakeRegistry()
    describe_version(registry, "m", 3, "# card 3")
    assert registry.versions == {"3": "# card 3"} and registry.model.description == MODEL_DESCRIPTION
    registry.model.description = "edited by a person"
    describe_version(registry, "m", 4, "# card 4")
    assert registry.versions["4"] == "# card 4" and registry.model.description == "edited by a person"
