"""OOD evaluation plumbing: metrics, outlier archives split by group, and the fit/calibrate/evaluate run."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ml.ood import OODFeatures, fitting
from ml.ood.evaluate import auroc, fpr_at_tpr, markdown_table
from ml.ood.outliers import load_outlier_images, split_by_group
from ml.ood.pipeline import synthetic_ood

C, D = 3, 8


def features(n: int, seed: int, centre: float | None = None) -> tuple[OODFeatures, np.ndarray]:
    """Class c around 5 e_c; with centre set, every row around (centre, ..., centre) instead (OOD)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n)
    means = 5.0 * np.eye(C, D)
    emb = (means[labels] if centre is None else np.full((len(labels), D), centre)) + rng.normal(size=(len(labels), D))
    logits = emb[:, :C] * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return OODFeatures(emb.astype(np.float32), logits, probs), labels


def jpeg(colour: int, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (colour, 255 - colour, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_metrics_on_known_scores():
    id_scores, ood_scores = np.arange(100.0), np.arange(100.0) + 1000
    assert auroc(id_scores, ood_scores) == 1.0
    assert fpr_at_tpr(id_scores, ood_scores) == 0.0
    assert auroc(id_scores, id_scores) == pytest.approx(0.5)
    assert fpr_at_tpr(id_scores, id_scores.copy(), 0.95) == pytest.approx(0.95, abs=0.01)


def test_outlier_archive_flat_and_foldered(tmp_path):
    archive = tmp_path / "ood.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, colour in [("ood_dev/n001_1.JPEG", 10), ("ood_dev/n001_2.JPEG", 20), ("ood_dev/n002_1.JPEG", 30),
                             ("ood_dev/readme.txt", 0)]:
            data = jpeg(colour) if name.endswith("JPEG") else b"not an image"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    images, groups = load_outlier_images(archive)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert sorted(groups) == ["n001", "n001", "n002"]
    for folder in ("chairs", "lamps"):
        (tmp_path / "dir" / folder).mkdir(parents=True)
        (tmp_path / "dir" / folder / "a_1.png").write_bytes(jpeg(50))
    (tmp_path / "dir" / "chairs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    images, groups = load_outlier_images(tmp_path / "dir")
    assert list(groups) == ["chairs", "lamps"] and len(images) == 2


def test_split_by_group_keeps_groups_whole():
    groups = np.repeat([f"g{i}" for i in range(10)], 5)
    train, evaluate = split_by_group(groups, holdout_fraction=0.3, seed=1)
    assert not (train & evaluate).any() and (train | evaluate).all()
    assert len(set(groups[train])) == 3 and not set(groups[train]) & set(groups[evaluate])


def test_synthetic_ood_has_val_colours_but_no_structure():
    x_val = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    out = synthetic_ood(x_val, seed=0)
    assert out.shape == (500, 32, 32, 3) and out.dtype == np.uint8


def test_run_fits_calibrates_evaluates_and_picks_a_default():
    train, labels = features(120, seed=1)
    val, _ = features(80, seed=2)
    test, _ = features(80, seed=3)
    far, _ = features(40, seed=4, centre=2.5)
    outliers, _ = features(20, seed=5, centre=2.5)
    data = fitting.OODData(train, labels, val, test, {"far": far}, outliers)
    detectors, summary = fitting.run(data, target_tpr=0.95)
    assert "other_class" in detectors and "iforest_pixels" not in detectors  # no pixels given
    row = summary["detectors"][summary["default_detector"]]
    assert row["auroc"] >= 0.95 and row["id_reject_rate"] <= 0.12
    assert summary["primary_ood_set"] == "far" and len(row["thresholds"]) == C
    assert "| far |" in markdown_table(summary["detectors"], summary["default_detector"])


def test_run_without_outliers_skips_the_other_class(caplog):
    train, labels = features(60, seed=1)
    val, _ = features(40, seed=2)
    far, _ = features(20, seed=4, centre=2.5)
    with caplog.at_level("INFO"):
        detectors, _ = fitting.run(fitting.OODData(train, labels, val, None, {"far": far}), 0.95, only=("msp", "knn"))
    assert sorted(detectors) == ["knn", "msp"] and "skipping other_class" in caplog.text
