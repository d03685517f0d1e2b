"""The pixel-statistics guard: far-OOD images the feature-space detector calls ordinary get flagged,
the near-OOD ranking and the in-distribution reject rate survive, and the pair round-trips without pickle."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.ood import OODFeatures, fitting
from ml.ood.guarded import GuardedDetector, tail_p_values
from ml.ood.persist import load_default_detector, save_detectors
from ml.ood.pixel_stats import PixelStatsDetector, image_statistics

C, D = 3, 8


def photos(n: int, seed: int) -> np.ndarray:
    """Colourful textured stand-ins for photos: 4x4 random colours upsampled, plus sensor noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        out.append(np.clip(np.asarray(small, np.int16) + rng.integers(-20, 21, (32, 32, 3)), 0, 255))
    return np.stack(out).astype(np.uint8)


def scans(n: int, seed: int) -> np.ndarray:
    """Grey strokes on black: no colour and no texture, unlike every training image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        row = int(rng.integers(8, 24))
        out[i, row - 2:row + 2, 6:26] = 200
    return out


def features(pixels: np.ndarray, seed: int, centre: float | None = None) -> tuple[OODFeatures, np.ndarray]:
    """Embeddings that say nothing about the pixels: class c around 5 e_c (or every row around centre)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(len(pixels)) % C
    means = 5.0 * np.eye(C, D)
    emb = (means[labels] if centre is None else np.full((len(pixels), D), centre)) + rng.normal(size=(len(pixels), D))
    logits = emb[:, :C] * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return OODFeatures(emb.astype(np.float32), logits, probs, pixels), labels


def test_image_statistics_see_colour_and_texture():
    stats = image_statistics(np.concatenate([photos(5, 0), scans(5, 1)]))
    assert stats.shape == (10, 10) and np.isfinite(stats).all()
    saturation = stats[:, 6]
    assert saturation[:5].min() > 0.1 and np.allclose(saturation[5:], 0.0)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        image_statistics(np.zeros((2, 32, 32), np.uint8))


def test_pixel_stats_scores_scans_above_photos_and_needs_pixels():
    train, labels = features(photos(300, 1), 1)
    detector = PixelStatsDetector().fit(train, labels)
    photo_scores = detector.score_samples(features(photos(100, 2), 2)[0])
    scan_scores = detector.score_samples(features(scans(100, 3), 3)[0])
    assert np.median(scan_scores) > np.quantile(photo_scores, 0.99)
    with pytest.raises(ValueError, match="pixels"):
        detector.score_samples(OODFeatures(train.embeddings, train.logits, train.probs))


def guarded_setup():
    train, labels = features(photos(300, 1), 1)
    val, _ = features(photos(300, 2), 2)
    primary = fitting.make_detectors()["knn"].fit(train, labels)
    guard = PixelStatsDetector().fit(train, labels)
    return GuardedDetector("knn_guarded").combine(primary, guard, val), primary, val


def test_guard_flags_far_ood_the_primary_calls_ordinary_and_keeps_near_ood():
    guarded, primary, val = guarded_setup()
    primary.calibrate(val, val.predicted, 0.95, per_class=False)
    guarded.calibrate(val, val.predicted, 0.95, per_class=False)
    far = features(scans(100, 4), 4)[0]  # in-distribution embeddings, alien pixels
    near = features(photos(100, 5), 5, centre=2.5)[0]  # photo pixels, embeddings between classes
    unseen = features(photos(300, 6), 6)[0]
    assert primary.score(far).is_ood.mean() < 0.15 and guarded.score(far).is_ood.mean() > 0.95
    assert guarded.score(near).is_ood.mean() >= 0.9 * primary.score(near).is_ood.mean()
    assert guarded.score(unseen).is_ood.mean() <= 0.10  # the target's 5 % plus sampling noise


def test_tail_p_values_are_conformal_ranks():
    reference = np.array([1.0, 2.0, 3.0])
    assert tail_p_values(reference, np.array([0.0, 2.0, 9.0])).tolist() == [1.0, 0.75, 0.25]


def test_guarded_detector_round_trips_without_pickle(tmp_path):
    guarded, _, val = guarded_setup()
    guarded.calibrate(val, val.predicted, 0.95)
    save_detectors(tmp_path, {"knn_guarded": guarded}, {"default_detector": "knn_guarded"})
    loaded = load_default_detector(tmp_path)
    probe = features(np.concatenate([photos(20, 7), scans(20, 8)]), 7)[0]
    assert np.array_equal(loaded.score(probe).is_ood, guarded.score(probe).is_ood)
    np.testing.assert_allclose(loaded.score(probe).scores, guarded.score(probe).scores)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.joblib"))


def ood_data(with_pixels: bool = True) -> fitting.OODData:
    def part(pixels, seed, centre=None):
        feats, labels = features(pixels, seed, centre)
        if not with_pixels:
            feats.pixels = None
        return feats, labels

    train, labels = part(photos(240, 1), 1)
    outliers = part(photos(60, 5), 5, centre=2.5)[0]
    return fitting.OODData(train, labels, part(photos(240, 2), 2)[0], part(photos(120, 3), 3)[0],
                           {"heldout": part(photos(90, 4), 4, centre=2.5)[0]}, outlier_fit=outliers,
                           outlier_calibrate=outliers, sanity_sets={"synthetic_noise": part(scans(60, 6), 6)[0]},
                           real_outliers_configured=True, heldout_classes=["n1"])


def test_run_serves_the_guarded_pair_when_it_keeps_heldout_auroc():
    detectors, summary = fitting.run(ood_data(), target_tpr=0.95, only=("msp", "knn", "pixel_stats"))
    default = summary["default_detector"]
    assert default.endswith("_guarded") and isinstance(detectors[default], GuardedDetector)
    chosen = default.removesuffix("_guarded")
    rows = summary["detectors"]
    assert rows[default]["auroc"] >= rows[chosen]["auroc"] - fitting.AUROC_TIE
    assert rows[default]["sets"]["synthetic_noise"]["auroc"] > rows[chosen]["sets"]["synthetic_noise"]["auroc"]


def test_run_without_pixels_has_no_guard():
    detectors, summary = fitting.run(ood_data(with_pixels=False), target_tpr=0.95, only=("msp", "knn", "pixel_stats"))
    assert "pixel_stats" not in detectors and not summary["default_detector"].endswith("_guarded")


def test_a_guard_that_costs_heldout_auroc_is_not_served(monkeypatch):
    monkeypatch.setattr(fitting, "AUROC_TIE", -1.0)  # any AUROC cost at all counts as a loss
    _, summary = fitting.run(ood_data(), target_tpr=0.95, only=("msp", "knn", "pixel_stats"))
    assert not summary["default_detector"].endswith("_guarded")
    assert any(name.endswith("_guarded") for name in summary["detectors"])  # evaluated and reported
