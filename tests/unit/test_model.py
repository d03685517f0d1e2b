"""Architectures, the Predictor and training augmentation: shapes, named layers, the reference layer list."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ml.inference import Predictor
from ml.model import ARCHS, build_model, flops_per_image, init_whitening

SEED_CNN_LAYERS = [
    "InputLayer", "Rescaling",
    "Conv2D", "BatchNormalization", "Conv2D", "BatchNormalization", "MaxPooling2D", "Dropout",
    "Conv2D", "BatchNormalization", "Conv2D", "BatchNormalization", "MaxPooling2D", "Dropout",
    "Flatten", "Dense", "Activation", "Dropout", "Dense", "Activation",
]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", ARCHS)
def test_models_output_probabilities_and_expose_named_layers(arch, images):
    model = build_model(arch, 13, width=16)
    probs = keras.ops.convert_to_numpy(model(images.astype("float32")))
    assert probs.shape == (6, 13) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert isinstance(model.get_layer("logits"), keras.layers.Dense)
    assert len(model.get_layer("embedding").output.shape) == 2  # a flat vector per image


def test_seed_cnn_is_the_reference_design_layer_for_layer():
    model = build_model("seed_cnn", 13)
    assert [type(layer).__name__ for layer in model.layers] == SEED_CNN_LAYERS
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.padding, c.activation.__name__) for c in convs] == [
        (64, "same", "relu"), (64, "valid", "relu"), (128, "same", "relu"), (128, "valid", "relu")]
    assert [d.rate for d in model.layers if isinstance(d, keras.layers.Dropout)] == [0.25, 0.25, 0.5]
    assert model.get_layer("embedding").output.shape[-1] == 512  # the ReLU after Dense(512)
    assert model.count_params() == 2_628_173  # the reference design's count for 13 classes
    assert flops_per_image(model) == 157_643_776


@pytest.mark.parametrize("arch", ARCHS)
def test_predictor_returns_probs_logits_and_embeddings(arch, images):
    model = build_model(arch, 13, width=16)
    pred = Predictor(model).predict(images)
    assert pred.probs.shape == pred.logits.shape == (6, 13)
    assert pred.embeddings.shape == (6, model.get_layer("embedding").output.shape[-1])
    assert all(a.dtype == np.float32 for a in (pred.probs, pred.logits, pred.embeddings))
    np.testing.assert_allclose(pred.probs, keras.ops.convert_to_numpy(keras.ops.softmax(pred.logits)), atol=1e-5)
    batched = Predictor(model).predict_batched(images, batch_size=4)
    np.testing.assert_allclose(batched.probs, pred.probs, atol=1e-5)


def test_airnet_predictor_averages_the_mirror_image(images):
    predictor = Predictor(build_model("airnet", 13, width=16))
    assert predictor.tta
    plain, mirrored = predictor.predict(images), predictor.predict(images[:, :, ::-1])
    np.testing.assert_allclose(plain.probs, mirrored.probs, atol=1e-5)
    assert not Predictor(build_model("seed_cnn", 13)).tta


def test_whitening_init_decorrelates_stem_patches(images):
    model = build_model("airnet", 13, width=16)
    x = np.random.default_rng(1).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    init_whitening(model, x)
    stem = keras.Model(model.input, model.get_layer("stem").output)
    out = keras.ops.convert_to_numpy(stem(x.astype("float32"))).reshape(-1, 24)[:, :12]
    cov = np.cov(out, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.05 * np.diag(cov).max()


def test_augmentation_translates_and_mirrors_without_changing_pixels(images):
    from ml.train import augment

    out = augment(images, pad=0, flip=True).numpy()
    for original, augmented in zip(images, out, strict=False):
        assert np.array_equal(augmented, original) or np.array_equal(augmented, original[:, ::-1])
    shifted = augment(images, pad=2, flip=False).numpy()
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    for i, augmented in enumerate(shifted):  # every output is one 32x32 window of the padded image
        assert any(np.array_equal(augmented, padded[i, dy:dy + 32, dx:dx + 32])
                   for dy in range(5) for dx in range(5))
