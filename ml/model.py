"""Keras architectures by name (`seed_cnn`, `airnet`) and their initialisers (whitening, dirac).

Every model takes raw 0..255 images (N, 32, 32, 3), rescales inside, exposes a
layer named "embedding" (penultimate features) and a Dense layer named "logits",
and outputs softmax probabilities.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

ARCHS = ("seed_cnn", "airnet")
# Archs whose Predictor averages the image and its mirror (flip test-time augmentation).
TTA_ARCHS = ("airnet",)
IMAGE_SHAPE = (32, 32, 3)


def _seed_block(x, filters: int):
    """Conv(same)-ReLU-BN-Conv(valid)-ReLU-BN-MaxPool-Dropout, as in the reference design."""
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(filters, 3, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D(2)(x)
    return layers.Dropout(0.25)(x)


def build_seed_cnn(n_classes: int, **_: Any) -> keras.Model:
    """The reference CNN, layer for layer (2.6 M parameters for 13 classes)."""
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Rescaling(1 / 255)(inputs)
    x = _seed_block(x, 64)
    x = _seed_block(x, 128)
    x = layers.Flatten()(x)
    x = layers.Dense(512, kernel_regularizer=keras.regularizers.L2(1e-3))(x)
    x = layers.Activation("relu", name="embedding")(x)
    x = layers.Dropout(0.5)(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    probs = layers.Activation("softmax", name="probs", dtype="float32")(logits)
    return keras.Model(inputs, probs, name="seed_cnn")


def _conv_bn(x, filters: int, pool: bool, activation: str, bn_momentum: float):
    """Conv (no bias) [-MaxPool] -BN (shift only, as airbench) -act; pooling before BN quarters its cost."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    if pool:
        x = layers.MaxPooling2D(2)(x)
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, scale=False)(x)
    return layers.Activation(activation)(x)


def build_airnet(n_classes: int, width: int = 64, activation: str = "gelu", bn_momentum: float = 0.4,
                 **_: Any) -> keras.Model:
    """airbench94-style net: 2x2 stem, three conv-pool-conv blocks (w, 4w, 4w), global max pool.

    Around 1/3 of the FLOPs of Myrtle's ResNet-9 for ~94 % on CIFAR-10 on GPU budgets.
    bn_momentum is Keras' (keep fraction): 0.4 is airbench's fast 0.6 in PyTorch's convention.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    # Per-channel standardisation with CIFAR-like statistics keeps the stem well conditioned.
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Normalization(mean=[0.49, 0.48, 0.45], variance=[0.0625, 0.0576, 0.0676])(x)
    # 2x2 stem with 24 = 2 x (2*2*3) channels: room for +/- patch-whitening filters (init_whitening).
    x = layers.Conv2D(24, 2, padding="valid", name="stem")(x)
    x = layers.Activation(activation)(x)
    for filters in (width, 4 * width, 4 * width):
        x = _conv_bn(x, filters, True, activation, bn_momentum)
        x = _conv_bn(x, filters, False, activation, bn_momentum)
    x = layers.GlobalMaxPooling2D(name="embedding")(x)
    x = layers.Rescaling(1 / 8)(x)  # small initial logits (Myrtle ResNet-9 scales them by 0.125)
    logits = layers.Dense(n_classes, use_bias=False, name="logits")(x)
    probs = layers.Activation("softmax", name="probs", dtype="float32")(logits)
    return keras.Model(inputs, probs, name="airnet")


def build_model(arch: str, n_classes: int, **hparams: Any) -> keras.Model:
    """Build an architecture by name; extra hyperparameters the arch does not use are ignored."""
    builders = {"seed_cnn": build_seed_cnn, "airnet": build_airnet}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return builders[arch](n_classes, **hparams)


def init_whitening(model: keras.Model, images: np.ndarray, eps: float = 5e-4) -> None:
    """Set the 2x2 stem to +/- the whitening filters of the images' patch covariance (airbench trick).

    Starting from decorrelated inputs cut the epochs to 94 % on CIFAR-10 by ~38 % in airbench's ablation.
    """
    stem = model.get_layer("stem")
    feed = keras.Model(model.input, stem.input)
    x = keras.ops.convert_to_numpy(feed(images[:5000].astype("float32"), training=False))
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))  # N,31,31,C,2,2
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)
    eigvals, eigvecs = np.linalg.eigh(np.cov(patches, rowvar=False))
    filters = (eigvecs / np.sqrt(eigvals + eps)).T.reshape(12, 2, 2, 3)  # one filter per eigenvector
    kernel = np.concatenate([filters, -filters]).transpose(1, 2, 3, 0)  # kh, kw, cin, 24
    stem.set_weights([kernel.astype("float32"), np.zeros(24, "float32")])


def init_dirac(model: keras.Model) -> None:
    """Start each 3x3 conv after the stem as a partial identity: its first c_in filters pass inputs through.

    airbench's "dirac" init; it cut the epochs to 94 % on CIFAR-10 by a seventh.
    """
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.name != "stem":
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            kh, kw, cin, cout = kernel.shape
            n = min(cin, cout)
            kernel[..., :n] = 0
            kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1
            layer.kernel.assign(kernel)


def flops_per_image(model: keras.Model) -> int:
    """Forward FLOPs per image (2 x multiply-adds of conv and dense layers), counted analytically."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * kh * kw * cin * cout * h * w
        elif isinstance(layer, layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2 * cin * cout
    return int(total)
