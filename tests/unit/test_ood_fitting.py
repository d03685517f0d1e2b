"""OOD evaluation plumbing: metrics, outliers split by class, threshold modes and the honest selector."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ml.config import Settings
from ml.ood import OODFeatures, fitting
from ml.ood.evaluate import auroc, fpr_at_tpr, markdown_table
from ml.ood.outlier_data import (
    OutlierImages,
    class_groups,
    configured_sources,
    load_folder,
    split_by_class,
)
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


def test_outlier_archive_flat_and_foldered_decode_like_training_images(tmp_path):
    archive = tmp_path / "ood.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, colour in [("ood_dev/n001_1.JPEG", 10), ("ood_dev/n001_2.JPEG", 20), ("ood_dev/n002_1.JPEG", 30),
                             ("ood_dev/readme.txt", 0)]:
            data = jpeg(colour) if name.endswith("JPEG") else b"not an image"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loaded = load_folder(archive)
    assert loaded.images.shape == (3, 32, 32, 3) and loaded.images.dtype == np.uint8
    assert sorted(loaded.classes) == ["n001", "n001", "n002"] and loaded.name == "ood"
    for folder in ("chairs", "lamps"):
        (tmp_path / "dir" / folder).mkdir(parents=True)
        (tmp_path / "dir" / folder / "a_1.png").write_bytes(jpeg(50))
    (tmp_path / "dir" / "chairs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    loaded = load_folder(tmp_path / "dir")
    assert list(loaded.classes) == ["chairs", "lamps"] and len(loaded) == 2
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "missing.tar.gz")


def test_split_is_by_class_deterministic_and_disjoint():
    names = [f"n{i:08d}" for i in range(40)]
    groups = class_groups(names)
    assert groups == class_groups(list(reversed(names)))  # a hash of the name, not the order seen
    counts = {g: sum(v == g for v in groups.values()) for g in ("fit", "calibrate", "evaluate")}
    assert counts == {"fit": 16, "calibrate": 8, "evaluate": 16}
    rng = np.random.default_rng(0)
    a = OutlierImages("a", rng.integers(0, 255, (200, 32, 32, 3), dtype=np.uint8), rng.choice(names[:25], 200))
    b = OutlierImages("b", rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8), rng.choice(names[20:], 100))
    parts = split_by_class([a, b])
    seen = {g: {c for p in parts[g] for c in p.classes} for g in parts}
    assert not seen["fit"] & seen["evaluate"] and not seen["calibrate"] & seen["evaluate"]
    assert not seen["fit"] & seen["calibrate"]
    assert sum(len(p) for g in parts for p in parts[g]) == 300  # every image lands in exactly one group
    assert set(class_groups(["x", "y", "z"]).values()) == {"fit", "calibrate", "evaluate"}


def test_outlier_sources_setting(tmp_path):
    settings = Settings.from_env({"VISIONLOOP_OUTLIER_SOURCES": f"folder:{tmp_path},cifar100-unchosen"})
    assert configured_sources(settings) == (f"folder:{tmp_path}", "cifar100-unchosen")
    with pytest.raises(ValueError, match="none of folder"):
        configured_sources(settings.with_(outlier_sources=("imagenet",)))


def test_outlier_sources_default_to_the_unchosen_cifar100_superclasses_when_cifar100_is_used():
    default = Settings.from_env({})
    assert default.outlier_sources == ("auto",) and "cifar100" in default.data_sources
    assert configured_sources(default) == ("cifar100-unchosen",)
    assert configured_sources(default.with_(data_sources=("folder:/photos", "feedback"))) == ()
    assert configured_sources(Settings.from_env({"VISIONLOOP_OUTLIER_SOURCES": ""})) == ()  # empty: none
    both = default.with_(outlier_sources=("auto", "cifar100-unchosen", "folder:/x"))
    assert configured_sources(both) == ("cifar100-unchosen", "folder:/x")


def test_synthetic_ood_has_val_colours_but_no_structure():
    x_val = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    out = synthetic_ood(x_val, seed=0)
    assert out.shape == (500, 32, 32, 3) and out.dtype == np.uint8


def ood_data(real: bool = True, configured: bool = True) -> fitting.OODData:
    train, labels = features(120, seed=1)
    val, _ = features(80, seed=2)
    test, _ = features(80, seed=3)
    far, _ = features(40, seed=4, centre=2.5)
    noise, _ = features(40, seed=6, centre=30.0)
    outliers, _ = features(20, seed=5, centre=2.5)
    return fitting.OODData(train, labels, val, test, {"heldout": far} if real else {}, outlier_fit=outliers,
                           outlier_calibrate=outliers, sanity_sets={"synthetic_noise": noise},
                           real_outliers_configured=configured, heldout_classes=["n1"] if real else [])


def test_run_fits_calibrates_evaluates_and_picks_a_default_on_heldout_classes():
    detectors, summary = fitting.run(ood_data(), target_tpr=0.95)
    assert {"msp", "energy", "knn", "mahalanobis", "vim", "fused", "other_class"} <= set(detectors)
    assert summary["primary_ood_set"] == "heldout" and summary["heldout_classes"] == ["n1"]
    row = summary["detectors"][summary["default_detector"]]
    assert row["auroc"] == row["sets"]["heldout"]["auroc"] >= 0.95 and row["id_reject_rate"] <= 0.12
    assert row["threshold_mode"] in ("global", "per_class") and len(row["thresholds"]) == C
    assert "synthetic_noise" in row["sets"]
    assert "| heldout |" in markdown_table(summary["detectors"], summary["default_detector"])


def test_selector_refuses_synthetic_only_evaluation_when_real_outliers_are_configured():
    data = ood_data(real=False, configured=True)
    with pytest.raises(fitting.SelectionError, match="synthetic"):
        fitting.run(data, target_tpr=0.95, only=("msp", "knn"))
    data.ood_sets = {"synthetic_noise": data.sanity_sets["synthetic_noise"]}  # noise dressed as an OOD set
    with pytest.raises(fitting.SelectionError):
        fitting.run(data, target_tpr=0.95, only=("msp", "knn"))


def test_without_real_outliers_noise_never_chooses(caplog):
    data = ood_data(real=False, configured=False)
    with caplog.at_level("WARNING"):
        _, summary = fitting.run(data, target_tpr=0.95, only=("msp", "energy", "fused"))
    # These features put noise at huge logits, which energy and fused rank as in-distribution:
    # the sanity veto leaves the simplest sound detector, not the one best on noise.
    assert summary["primary_ood_set"] == "none" and summary["sanity_vetoed"] == ["energy", "fused"]
    assert summary["default_detector"] == "msp"
    assert summary["detectors"]["msp"]["auroc"] is None and "never chooses" in caplog.text


def spread_features(n: int, seed: int, spreads, around: int | None = None) -> OODFeatures:
    """Class c around 8 e_c with its own spread; `around` puts every row near that class at spread 1.6."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n) if around is None else np.full(n * C, around)
    scale = np.array(spreads)[labels, None] if around is None else 1.6
    emb = 8.0 * np.eye(C, D)[labels] + rng.normal(size=(len(labels), D)) * scale
    logits = emb[:, :C] * 2.0
    return OODFeatures(emb.astype(np.float32), logits, np.exp(logits) / np.exp(logits).sum(1, keepdims=True))


@pytest.mark.parametrize("spreads, expected", [([0.5, 1.0, 2.5], "per_class"), ([1.0, 1.0, 1.0], "global")])
def test_per_class_thresholds_only_where_they_catch_more_calibrate_outliers(spreads, expected):
    train = spread_features(150, 1, spreads)
    data = fitting.OODData(train, np.repeat(np.arange(C), 150), spread_features(150, 2, spreads),
                           outlier_calibrate=spread_features(30, 3, spreads, around=0))  # blurred class-0 lookalikes
    detector = fitting.make_detectors()["knn"].fit(data.train, data.train_labels)
    facts = fitting.calibrate_best(detector, data, 0.95)
    assert facts["threshold_mode"] == expected and detector.per_class_ == (expected == "per_class")
    if expected == "per_class":  # a narrow class's own threshold catches lookalikes the pooled one lets through
        assert facts["calibrate_catch_per_class"] >= facts["calibrate_catch_global"] + fitting.PER_CLASS_MIN_GAIN
    data.outlier_calibrate = None
    assert fitting.calibrate_best(detector, data, 0.95) == {"threshold_mode": "global"} and not detector.per_class_


def test_run_without_outliers_skips_the_other_class(caplog):
    data = ood_data()
    data.outlier_fit = None
    with caplog.at_level("INFO"):
        detectors, _ = fitting.run(data, 0.95, only=("msp", "knn", "other_class"))
    assert sorted(detectors) == ["knn", "msp"] and "skipping other_class" in caplog.text
