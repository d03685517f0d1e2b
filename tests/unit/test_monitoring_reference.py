"""Reference pack: built from model outputs, saved and loaded without loss."""

from __future__ import annotations

import numpy as np

from ml import imaging
from ml.monitoring.reference import ReferencePack
from tests.fixtures.data import make_split


def test_from_outputs_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    x_train, y_train = make_split(6, rng)
    x_val, y_val = make_split(4, rng)
    n_classes = 13
    probs = rng.dirichlet(np.ones(n_classes), size=len(x_val)).astype(np.float32)
    embeddings = rng.normal(size=(len(x_val), 40)).astype(np.float32)
    hists = imaging.class_mean_histograms(x_train, y_train, n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    pack = ReferencePack.from_outputs(x_val, y_val, probs, embeddings, hists, classes, 0.07, n_components=32)

    assert pack.embeddings_pca.shape == (len(x_val), 32)
    assert pack.class_histograms.shape == (n_classes, imaging.HIST_BINS)
    assert np.allclose(pack.confidence, probs.max(1))
    assert np.all((pack.hist_distance >= 0) & (pack.hist_distance <= 1))
    assert 0 <= pack.meta["val_accuracy"] <= 1

    loaded = ReferencePack.load(pack.save(tmp_path / "ref"))
    assert loaded.expected_ood_rate == 0.07 and loaded.classes == classes
    assert np.allclose(loaded.pca_transform(embeddings), pack.embeddings_pca, atol=1e-4)
    assert np.array_equal(loaded.class_histograms, pack.class_histograms)
    assert (tmp_path / "ref" / "reference.npz").is_file() and (tmp_path / "ref" / "reference.json").is_file()


def test_pca_is_capped_by_the_number_of_images():
    rng = np.random.default_rng(1)
    x, y = make_split(1, rng)  # 13 images
    pack = ReferencePack.from_outputs(x, y, rng.dirichlet(np.ones(13), size=13), rng.normal(size=(13, 64)),
                                      np.full((13, 32), 1 / 32), [str(i) for i in range(13)], 0.05)
    assert pack.pca_components.shape == (12, 64)
