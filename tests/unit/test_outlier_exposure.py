"""Outlier exposure in training: the model learns to be unsure on outliers, and only on fit-group classes."""

from __future__ import annotations

import numpy as np
import pytest

from ml.hparams import get_profile
from ml.ood.outlier_data import OutlierImages, class_groups
from ml.outlier_exposure import fit_group_images, loss_weights


def _tagged(name: str, classes: list[str], per_class: int, first_tag: int) -> OutlierImages:
    """Images whose pixel value is a tag per class, so a returned image names its class."""
    tags = np.repeat(np.arange(first_tag, first_tag + len(classes)), per_class)
    images = np.broadcast_to(tags[:, None, None, None], (len(tags), 32, 32, 3)).astype(np.uint8)
    return OutlierImages(name, images, np.repeat(np.array(classes), per_class))


def test_fit_group_images_are_only_fit_classes_plus_users_none_of_these():
    first = _tagged("ood_dev", [f"n{i:03d}" for i in range(12)], 3, 0)
    second = _tagged("ood_dev2", [f"w{i:03d}" for i in range(9)], 2, 12)
    user = _tagged("user_none_of_these", ["user:none_of_these"], 4, 200)
    tag_class = {**{int(t): c for t, c in zip(first.images[:, 0, 0, 0], first.classes, strict=True)},
                 **{int(t): c for t, c in zip(second.images[:, 0, 0, 0], second.classes, strict=True)},
                 200: "user:none_of_these"}
    images = fit_group_images({"configured": [first, second], "user": [user]})
    got = {tag_class[int(t)] for t in images[:, 0, 0, 0]}
    groups = class_groups([*first.classes, *second.classes])
    fit = {c for c, g in groups.items() if g == "fit"}
    assert got == fit | {"user:none_of_these"}
    assert not got & {c for c, g in groups.items() if g != "fit"}  # calibrate/evaluate: never trained on
    assert {g for g in groups.values()} == {"fit", "calibrate", "evaluate"}
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert len(images) == sum(3 if c.startswith("n") else 2 for c in fit) + 4


def test_no_outliers_means_none():
    assert fit_group_images(None) is None
    assert fit_group_images({"configured": [], "user": []}) is None


def test_mixed_batch_loss_is_the_usual_loss_plus_weight_times_cross_entropy_to_uniform():
    import keras

    n_classes, n_in, n_out, weight, smoothing = 4, 6, 3, 0.5, 0.2
    probs = np.random.default_rng(0).dirichlet(np.ones(n_classes), n_in + n_out).astype(np.float32)
    one_hot = np.eye(n_classes, dtype=np.float32)[np.arange(n_in) % n_classes]
    targets = np.concatenate([one_hot, np.full((n_out, n_classes), 1 / n_classes, np.float32)])
    w_in, w_out = loss_weights(n_in, n_out, weight)
    weights = np.array([w_in] * n_in + [w_out] * n_out, np.float32)
    got = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(targets, probs, sample_weight=weights)
    smoothed = one_hot * (1 - smoothing) + smoothing / n_classes
    log_p = np.log(probs)
    expected = -(smoothed * log_p[:n_in]).sum(1).mean() + weight * -log_p[n_in:].mean(1).mean()
    assert float(got) == pytest.approx(expected, rel=1e-4)  # label smoothing leaves the uniform target alone


def test_training_accuracy_counts_in_distribution_rows_only():
    from ml.train import InDistributionAccuracy

    metric = InDistributionAccuracy(name="accuracy")
    targets = np.concatenate([np.eye(3)[[0, 1]], np.full((2, 3), 1 / 3)])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    metric.update_state(targets, probs)
    assert float(metric.result()) == 1.0


def _training_batches(monkeypatch, hp, outliers, n_batches: int = 2) -> list[tuple[np.ndarray, ...]]:
    """The first batches `ml.train.fit` hands to Keras, seeded alike, without training."""
    import keras

    from ml.model import build_model
    from ml.train import fit

    keras.utils.set_random_seed(0)
    model = build_model("airnet", 3, width=4)
    seen = {}

    def record(dataset, **_):
        seen["batches"] = [tuple(t.numpy() for t in batch) for batch in dataset.take(n_batches)]
        return keras.callbacks.History()

    monkeypatch.setattr(model, "fit", record)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (40, 32, 32, 3)).astype(np.uint8), np.arange(40) % 3
    keras.utils.set_random_seed(0)
    fit(model, {"train": (x, y), "val": (x[:6], y[:6])}, hp, outliers=outliers)
    return seen["batches"]


def test_weight_zero_trains_on_exactly_the_same_batches_as_without_outliers(monkeypatch):
    # No random augmentation: parallel map calls draw it in no fixed order, even with a fixed seed.
    hp = get_profile("smoke").with_(batch_size=16, crop_pad=0, flip=False)
    outliers = np.full((10, 32, 32, 3), 7, np.uint8)
    today = _training_batches(monkeypatch, hp, None)
    off = _training_batches(monkeypatch, hp.with_(outlier_exposure_weight=0.0), outliers)
    assert len(today[0]) == len(off[0]) == 2  # (images, one-hot targets): no sample weights
    for a, b in zip(today, off, strict=True):
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    on = _training_batches(monkeypatch, hp.with_(outlier_exposure_weight=0.5, outlier_batch_ratio=0.25), outliers)
    images, targets, weights = on[0]
    assert len(images) == 16 + 4 and np.all(images[16:] == 7) and np.allclose(targets[16:], 1 / 3) and np.allclose(targets[:16].max(1), 1)
    assert np.allclose(weights, [20 / 16] * 16 + [0.5 * 20 / 4] * 4)


def _colour_images(rng, n: int, bright: list[int]) -> np.ndarray:
    """Noisy flat images with the given channels bright: three one-channel classes, outliers of two."""
    x = rng.normal(40, 25, (n, 32, 32, 3))
    x[..., bright] += 160
    return np.clip(x, 0, 255).astype(np.uint8)


def test_outlier_exposure_makes_the_model_less_confident_on_unseen_outlier_images():
    import keras

    from ml.inference import Predictor
    from ml.model import build_model
    from ml.train import fit

    rng = np.random.default_rng(0)
    x, y = np.concatenate([_colour_images(rng, 100, [c]) for c in range(3)]), np.repeat(np.arange(3), 100)
    val = np.concatenate([_colour_images(rng, 20, [c]) for c in range(3)]), np.repeat(np.arange(3), 20)
    kinds = ([0, 1], [0, 2], [0, 1, 2], [])  # yellow, magenta, grey and dark images are none of the classes
    outliers = np.concatenate([_colour_images(rng, 60, k) for k in kinds])
    unseen = np.concatenate([_colour_images(rng, 25, k) for k in kinds])  # new images, never trained on
    confidence, accuracy = {}, {}
    for weight in (0.0, 0.5):
        keras.utils.set_random_seed(0)
        model = build_model("airnet", 3, width=8)
        fit(model, {"train": (x, y), "val": val}, get_profile("smoke").with_(epochs=4, outlier_exposure_weight=weight),
            outliers=outliers)
        predictor = Predictor(model)
        confidence[weight] = float(predictor.predict(unseen).probs.max(1).mean())
        accuracy[weight] = float((predictor.predict(val[0]).probs.argmax(1) == val[1]).mean())
    assert confidence[0.5] < confidence[0.0] - 0.1, confidence
    assert accuracy[0.5] >= 0.9 and accuracy[0.0] >= 0.9, accuracy
