"""The synthetic-noise sanity set vetoes a broken detector but never chooses among the sound ones."""

from __future__ import annotations

import numpy as np

from ml.ood.base import OODFeatures
from ml.ood.fitting import OODData, select_default, summarise


def _data(real: bool) -> OODData:
    tiny = OODFeatures(np.zeros((2, 4)), np.zeros((2, 3)), np.full((2, 3), 1 / 3))
    return OODData(train=tiny, train_labels=np.zeros(2, dtype=int), val=tiny,
                   ood_sets={"heldout": tiny} if real else {}, sanity_sets={"synthetic_noise": tiny},
                   real_outliers_configured=real)


def _rows(heldout: dict[str, float], noise: dict[str, float]) -> dict[str, dict]:
    return {name: {"sets": {"heldout": {"auroc": heldout[name]}, "synthetic_noise": {"auroc": noise[name]}}}
            for name in heldout}


def test_a_detector_that_ranks_noise_as_in_distribution_is_not_served():
    rows = _rows({"energy": 0.90, "knn": 0.80}, {"energy": 0.10, "knn": 0.99})
    assert select_default(rows, _data(real=True)) == ("knn", "heldout")
    assert summarise(rows, {}, _data(real=True), 0.95)["sanity_vetoed"] == ["energy"]


def test_noise_never_ranks_the_sound_detectors():
    rows = _rows({"energy": 0.90, "knn": 0.80}, {"energy": 0.60, "knn": 0.99})
    assert select_default(rows, _data(real=True)) == ("energy", "heldout")


def test_without_real_outliers_a_broken_fallback_is_replaced():
    assert select_default(_rows({"msp": 0.5, "fused": 0.5}, {"msp": 0.9, "fused": 0.9}), _data(False))[0] == "fused"
    assert select_default(_rows({"msp": 0.5, "fused": 0.5}, {"msp": 0.9, "fused": 0.2}), _data(False))[0] == "msp"


def test_no_veto_when_every_detector_fails_the_sanity_set():
    rows = _rows({"energy": 0.90, "knn": 0.80}, {"energy": 0.10, "knn": 0.20})
    assert select_default(rows, _data(real=True)) == ("energy", "heldout")
