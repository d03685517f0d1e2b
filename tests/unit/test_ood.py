"""OOD detectors on seeded synthetic features: in-distribution passes at the target rate, a shifted cluster fails;
served scores are conformal, one scale for every class; detectors are stored without pickle."""

from __future__ import annotations

import numpy as np
import pytest

from ml.ood import (
    MahalanobisDetector,
    OODFeatures,
    load_default_detector,
    load_detector,
    make_detectors,
    pick_default,
    save_detectors,
)

C, D = 4, 16


def gaussian_features(n_per_class: int, seed: int, shift: bool = False, spreads=None) -> tuple[OODFeatures, np.ndarray]:
    """Class c is N(6 e_c, s_c^2 I); logits are the Gaussian log-posteriors, so they agree with the embeddings.

    shift=True draws one cluster around (3, ..., 3), equally far from every class: the OOD set.
    """
    rng = np.random.default_rng(seed)
    spreads = spreads or [1.0] * C
    means = 6.0 * np.eye(C + 1, D)[:C]
    if shift:
        labels = rng.integers(0, C, n_per_class * C)
        emb = 3.0 + rng.normal(size=(len(labels), D))  # equally far from every class mean
    else:
        labels = np.repeat(np.arange(C), n_per_class)
        emb = means[labels] + rng.normal(size=(len(labels), D)) * np.array(spreads)[labels, None]
    logits = -0.5 * ((emb[:, None, :] - means[None]) ** 2).sum(-1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    colour = (40 + 50 * (labels if not shift else np.full(len(labels), C)))[:, None, None, None]
    pixels = np.clip(colour + rng.normal(0, 10, size=(len(labels), 32, 32, 3)), 0, 255).astype(np.uint8)
    return OODFeatures(emb.astype(np.float32), logits, probs, pixels), labels


def fitted(name: str, train, labels, val) -> object:
    detector = make_detectors(seed=0)[name]
    if name.startswith("other_"):
        outliers, _ = gaussian_features(30, seed=9, shift=True)
        both = OODFeatures(np.r_[train.embeddings, outliers.embeddings], np.r_[train.logits, outliers.logits],
                           np.r_[train.probs, outliers.probs])
        detector.fit(both, np.r_[labels, np.full(len(outliers), C)])
    else:
        detector.fit(train, labels)
    return detector.calibrate(val, val.predicted, target_tpr=0.95)


@pytest.fixture(scope="module")
def data():
    train, labels = gaussian_features(150, seed=1)
    val, _ = gaussian_features(100, seed=2)
    test, _ = gaussian_features(100, seed=3)
    ood, _ = gaussian_features(50, seed=4, shift=True)
    return train, labels, val, test, ood


@pytest.mark.parametrize("name", sorted(make_detectors()))
def test_accepts_in_distribution_at_target_rate_and_rejects_shifted_cluster(name, data):
    train, labels, val, test, ood = data
    detector = fitted(name, train, labels, val)
    id_result, ood_result = detector.score(test), detector.score(ood)
    assert 0.0 < id_result.is_ood.mean() <= 0.12, "about 5 % of unseen ID images should be rejected"
    assert ood_result.is_ood.mean() >= 0.9
    assert ood_result.scores.mean() > id_result.scores.mean()
    assert id_result.detector == name and id_result.scores.shape == (len(test),)


def test_thresholds_are_per_class_from_each_class_own_scores():
    spreads = [0.5, 1.0, 2.0, 1.0]  # class 2 is wide: a pooled threshold would reject most of it
    train, labels = gaussian_features(200, seed=1, spreads=spreads)
    val, _ = gaussian_features(200, seed=2, spreads=spreads)
    detector = MahalanobisDetector().fit(train, labels).calibrate(val, val.predicted, target_tpr=0.9)
    assert detector.thresholds_[2] > 2 * detector.thresholds_[0]
    result = detector.score(val)
    for c in range(C):
        rows = val.predicted == c
        assert result.is_ood[rows].mean() == pytest.approx(0.1, abs=0.02)
        assert np.all(result.raw_thresholds[rows] == detector.thresholds_[c])


def test_target_rate_is_a_parameter_not_a_constant(data):
    train, labels, val, test, _ = data
    strict = MahalanobisDetector().fit(train, labels).calibrate(val, val.predicted, target_tpr=0.7)
    assert strict.score(test).is_ood.mean() == pytest.approx(0.3, abs=0.08)


def test_default_target_comes_from_settings(data, monkeypatch):
    train, labels, val, _, _ = data
    monkeypatch.setenv("VISIONLOOP_OOD_TARGET_TPR", "0.8")
    detector = MahalanobisDetector().fit(train, labels).calibrate(val, val.predicted)
    assert detector.target_tpr_ == 0.8


def test_class_with_few_calibration_images_uses_pooled_threshold(data):
    train, labels, val, _, _ = data
    keep = (val.predicted != 3) | (np.arange(len(val)) % 20 == 0)  # ~5 images left for class 3
    small = val.subset(keep)
    detector = MahalanobisDetector().fit(train, labels).calibrate(small, small.predicted, target_tpr=0.95)
    global_ = MahalanobisDetector().fit(train, labels).calibrate(small, small.predicted, 0.95, per_class=False)
    assert detector.thresholds_[3] == pytest.approx(global_.thresholds_[3])
    assert detector.thresholds_[0] != pytest.approx(global_.thresholds_[0])


def test_score_before_calibrate_is_an_error(data):
    train, labels, _, test, _ = data
    with pytest.raises(RuntimeError, match="not calibrated"):
        MahalanobisDetector().fit(train, labels).score(test)


def test_save_and_load_round_trip(tmp_path, data):
    train, labels, val, test, _ = data
    detectors = {name: fitted(name, train, labels, val) for name in sorted(make_detectors())}
    summary = {"default_detector": "knn", "detectors": {n: {"auroc": 0.9} for n in detectors}}
    save_detectors(tmp_path, detectors, summary)
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".npz"}
    loaded = load_default_detector(tmp_path)
    assert loaded.name == "knn"
    for name, detector in detectors.items():
        again, before = load_detector(tmp_path, name).score(test), detector.score(test)
        np.testing.assert_allclose(again.scores, before.scores, err_msg=name)
        np.testing.assert_array_equal(again.is_ood, before.is_ood, err_msg=name)
    with pytest.raises(FileNotFoundError):
        load_detector(tmp_path, "nope")


class Planted:
    """Unpickling this writes a file: proof that some code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_planted_in_the_bundle_is_never_loaded(tmp_path, data):
    import pickle

    train, labels, val, test, _ = data
    ood = tmp_path / "ood"
    save_detectors(ood, {"knn": fitted("knn", train, labels, val)}, {"default_detector": "knn", "detectors": {}})
    marker = tmp_path / "code-ran"
    (ood / "knn.joblib").write_bytes(pickle.dumps(Planted(marker)))  # what an old loader would have read
    (ood / "knn.pkl").write_bytes(pickle.dumps(Planted(marker)))
    assert load_default_detector(ood).score(test).scores.shape == (len(test),)
    np.savez(ood / "knn.npz", bank_=np.array([Planted(marker)], dtype=object))  # an object array in the npz
    with pytest.raises(ValueError, match="pickle"):
        load_default_detector(ood)
    assert not marker.exists()
    for stale in ("knn.npz", "knn.json"):  # an old bundle: only the pickle is there
        (ood / stale).unlink()
    with pytest.raises(FileNotFoundError, match="never loaded"):
        load_default_detector(ood)
    assert not marker.exists()


def test_only_whitelisted_kinds_and_plain_attributes_load(tmp_path, data):
    import json

    train, labels, val, _, _ = data
    save_detectors(tmp_path, {"msp": fitted("msp", train, labels, val)}, {"default_detector": "msp", "detectors": {}})
    spec = json.loads((tmp_path / "msp.json").read_text())
    (tmp_path / "msp.json").write_text(json.dumps({**spec, "kind": "os.system"}))
    with pytest.raises(ValueError, match="unknown OOD detector kind"):
        load_detector(tmp_path, "msp")
    (tmp_path / "msp.json").write_text(json.dumps({**spec, "scalars": {"__class__": 1}}))
    with pytest.raises(ValueError, match="not a learned attribute"):
        load_detector(tmp_path, "msp")
    with pytest.raises(ValueError, match="may only hold"):
        load_detector(tmp_path, "../msp")


def test_served_score_is_one_scale_for_every_class():
    spreads = [0.5, 1.0, 2.0, 1.0]  # raw distances differ 4x between classes 0 and 2
    train, labels = gaussian_features(200, seed=1, spreads=spreads)
    val, _ = gaussian_features(200, seed=2, spreads=spreads)
    test, _ = gaussian_features(200, seed=3, spreads=spreads)
    result = MahalanobisDetector().fit(train, labels).calibrate(val, val.predicted, target_tpr=0.9).score(test)
    assert np.all((result.scores >= 0) & (result.scores < 1)) and np.all(result.thresholds == 0.9)
    np.testing.assert_array_equal(result.is_ood, result.scores >= result.thresholds - 1e-9)
    np.testing.assert_allclose(result.scores, 1 - result.p_values)
    for c in (0, 2):  # the same share of each class's unseen ID images lies above any served score level
        rows = test.predicted == c
        assert np.mean(result.scores[rows] >= 0.5) == pytest.approx(0.5, abs=0.12)
        assert result.is_ood[rows].mean() == pytest.approx(0.1, abs=0.06)
    raw_gap = np.median(result.raw_scores[test.predicted == 2]) / np.median(result.raw_scores[test.predicted == 0])
    assert raw_gap > 1.5, "the raw units differ between classes; the served score does not"


def test_default_is_best_auroc_and_ties_go_to_the_simpler():
    assert pick_default({"knn": 0.95, "msp": 0.90, "isolation_forest": 0.80}) == "knn"
    assert pick_default({"knn": 0.951, "msp": 0.949}) == "msp"
    assert pick_default({"fused": 0.90, "knn": 0.80, "msp": 0.70}) == "fused"
