"""The gate's rules on numbers (`ml.gate_rules`): each rule rejects on its own, and skipped rules say why."""

from __future__ import annotations

import pytest

from ml.gate_rules import reasons, tag_value, worst_recall_drop
from ml.monitoring.reference import expected_ood_rate


def scores(clean: float, recall: float = 0.9, corrections: float | None = None, n: int = 0) -> dict:
    return {"clean_accuracy": clean, "recall": {"cat": recall, "dog": 0.9}, "corrections_accuracy": corrections,
            "corrections_n": n}


@pytest.fixture
def rules(settings):
    return settings.with_(gate_min_accuracy=0.5, gate_epsilon=0.01, gate_max_recall_drop=0.1,
                          gate_min_corrections_gain=0.0, gate_max_ood_auroc_drop=0.02)


def test_first_model_needs_only_the_floor(rules):
    assert reasons(rules, scores(0.6), None) == ([], [])
    assert "floor" in reasons(rules, scores(0.4), None)[0][0]


@pytest.mark.parametrize("cand, champ, rejected", [
    (scores(0.80), scores(0.805), None),  # within epsilon
    (scores(0.78), scores(0.80), "clean test accuracy"),
    (scores(0.85, recall=0.6), scores(0.80, recall=0.9), "recall of cat drops"),
    (scores(0.80, corrections=0.5, n=10), scores(0.80, corrections=0.5, n=10), "corrections accuracy"),
])
def test_each_rule_rejects_on_its_own(rules, cand, champ, rejected):
    found, _ = reasons(rules, cand, champ, (0.9, 0.9))
    assert (found == []) if rejected is None else (len(found) == 1 and rejected in found[0])


def test_skipped_rules_leave_notes(rules):
    found, notes = reasons(rules, scores(0.8), scores(0.8), (None, 0.9))
    assert not found and any("corrections rule skipped" in n for n in notes)
    assert any("the candidate run has no ood_heldout_auroc" in n for n in notes)
    found, _ = reasons(rules, scores(0.8), scores(0.8), (0.85, 0.9))
    assert found == ["ood_heldout_auroc 0.8500 < champion 0.9000 - 0.02"]


def test_worst_recall_drop_and_tag_values():
    assert worst_recall_drop({"cat": 0.5, "dog": 0.9}, {"cat": 0.9, "dog": 0.9}) == ("cat", pytest.approx(0.4))
    assert worst_recall_drop({}, {}) == ("", 0.0)
    assert [tag_value(v) for v in (["a", "b"], 0.123456, None, True)] == ["a; b", "0.1235", "", "True"]


def test_expected_ood_rate_reads_the_summary_or_falls_back_to_the_target():
    summary = {"default_detector": "knn", "detectors": {"knn": {"id_reject_rate": 0.07}}}
    assert expected_ood_rate(summary, 0.95) == 0.07
    assert expected_ood_rate({"id_reject_rate": 0.03, **summary}, 0.95) == 0.03
    assert expected_ood_rate(None, 0.95) == pytest.approx(0.05)
