"""The fit_ood stage's data step (`ml.stages.fit_ood.build_data`) takes outliers from the snapshot when it has them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ml.stages.data import build as build_dataset
from ml.stages.fit_ood import build_data
from tests.unit.test_data_outliers import tiny  # noqa: F401  (fixture)


class ColourPredictor:
    """A deterministic stand-in for the network: features are the images' mean colours (numpy only)."""

    def predict_batched(self, images: np.ndarray) -> SimpleNamespace:
        """ml.inference.Prediction's fields (that module imports TensorFlow: 7 s)."""
        mean = images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32) / 255.0
        logits = np.tile(mean, (1, 5))[:, :13]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return SimpleNamespace(probs=probs.astype(np.float32), logits=logits.astype(np.float32), embeddings=mean)


def test_snapshot_outliers_are_used_and_user_ones_only_fit(tiny, tmp_path):  # noqa: F811
    settings, _ = tiny
    version = build_dataset(settings, workers=1)["version"]
    moved = settings.with_(outlier_sources=(f"folder:{tmp_path / 'gone'}",))  # settings no longer say where they were
    data = build_data(moved, version, ColourPredictor())
    assert data.real_outliers_configured
    # kites and mugs: one class fits, the other is held out; the 2 "none of these" always fit
    assert len(data.outlier_fit.embeddings) == 4 + 2 and data.outlier_calibrate is None
    assert len(data.heldout_classes) == 1 and data.heldout_classes[0] in ("kites", "mugs")
    assert len(data.ood_sets["heldout"].embeddings) == 4


def test_a_snapshot_without_outliers_falls_back_to_settings(tiny, tmp_path):  # noqa: F811
    settings, _ = tiny
    plain = settings.with_(outlier_sources=(), data_sources=settings.data_sources[:1])
    version = build_dataset(plain, workers=1)["version"]
    data = build_data(settings, version, ColourPredictor())
    assert len(data.outlier_fit.embeddings) == 4 and len(data.ood_sets["heldout"].embeddings) == 4
    with pytest.raises(FileNotFoundError):
        build_data(settings.with_(outlier_sources=(f"folder:{tmp_path / 'gone'}",)), version, ColourPredictor())


def test_only_user_outliers_train_the_exposure_heads_and_hold_nothing_out(tiny):  # noqa: F811
    from ml.ood import fitting

    settings, _ = tiny
    users_only = settings.with_(outlier_sources=())
    version = build_dataset(users_only, workers=1)["version"]
    data = build_data(users_only, version, ColourPredictor())
    assert len(data.outlier_fit.embeddings) == 2 and not data.ood_sets and not data.real_outliers_configured
    detectors, summary = fitting.run(data, settings.ood_target_tpr, settings.seed)
    assert "other_class" in detectors and summary["primary_ood_set"] == "none"
