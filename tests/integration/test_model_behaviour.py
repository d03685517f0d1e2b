"""Behavioural tests of the served model (Made-With-ML style): invariance, direction, minimum function.

A small airnet is trained here on real images (CIFAR-10 and the three superclasses from
../shared/datasets, 150 per class) with the product's recipe (`ml.train.fit`, patch whitening,
flip augmentation), given the fallback OOD detector (`fused`: KNN + energy, conformally
calibrated) and served through `ServingBundle.classify`, the call behind `/classify`. The smoke
champion trains on synthetic stripes, which says nothing about photos. The model reaches about
0.43 accuracy on held-out images (chance: 1/13); the thresholds below are set for a model of
that quality, with margins from the measurements quoted beside them.

Every invariance check is also held against a random relabelling (the same answers, shuffled):
a model that answers one class for everything agrees with itself under any perturbation, and
with a shuffled copy of itself too, so it fails the margin.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 150, 30, 30
ARCHIVES = ("cifar10_train_jpg.tar.gz", "extra_superclasses_train.tar.gz")
# Measured in three runs (seed 0, but CPU threads make runs differ slightly; 2 busy cores, ~40 s of
# training): training accuracy 0.47-0.50, held-out 0.43-0.45; agreement with the unperturbed answers:
# flip 1.00 (the service averages each image with its mirror; without that 0.82), shifts 0.84-0.96
# (1 px, 1 px, 2+2 px), JPEG q75 0.90-0.93; a random relabelling of the same answers agrees 0.11 (an
# untrained model, answering almost one class: 0.94).
MIN_TRAIN_ACCURACY = 0.35  # 4.5x chance
MIN_AGREEMENT = {"flip": 0.97, "shift": 0.75, "jpeg75": 0.75}
MIN_MARGIN_OVER_RELABELLING = 0.45
# ood_score is 1 - a conformal p-value, so ~0.5 on average for unseen real images (0.48-0.52 measured). Flat
# grey in 19 trainings (seeds 0-14, three of them twice, and one CI run): 0.75-0.96, except two at 0.61 (one
# was seed 12, which gave 0.93 on its next run: CPU-thread nondeterminism, not the seed). A detector blind to
# content scores ~0.5 and an inverted one below the photos; both still fail this margin.
MIN_OOD_RAISE = 0.10
MIN_CONFIDENCE_DROP = 0.05  # measured ~0.37 -> ~0.21 at a quarter of the light; an untrained model: 0.001


@dataclass
class Behaviour:
    bundle: object  # ml.bundle.ServingBundle
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_real_images(datasets: Path, classes: list[str], per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first per_class images of each class, through the service's own decoding and resizing."""
    from ml import imaging
    from ml.data.tarstream import iter_tar

    found: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    for archive in ARCHIVES:
        for name, data in iter_tar(datasets / archive):
            label = name.split("/")[-2]
            if label in found and len(found[label]) < per_class:
                found[label].append(imaging.prepare(data, preview=False).pixels)
    assert all(len(v) == per_class for v in found.values()), {c: len(v) for c, v in found.items()}
    return np.stack([x for c in classes for x in found[c]]), np.repeat(np.arange(len(classes)), per_class)


def make_behaviour(datasets: Path, train: bool = True, seed: int = 0) -> Behaviour:
    """Train (or not: `train=False` keeps the random initial weights) and wrap in a ServingBundle."""
    import keras

    from ml.bundle import ServingBundle
    from ml.config import Settings
    from ml.hparams import get_profile
    from ml.inference import Predictor
    from ml.model import build_model, init_whitening
    from ml.ood import OODFeatures
    from ml.ood.fused import FusedDetector
    from ml.train import fit

    classes = list(Settings.from_env().classes)
    per_class = TRAIN_PER_CLASS + VAL_PER_CLASS + TEST_PER_CLASS
    x, y = load_real_images(datasets, classes, per_class)
    position = np.tile(np.arange(per_class), len(classes))
    rng = np.random.default_rng(seed)
    train_rows = rng.permutation(np.flatnonzero(position < TRAIN_PER_CLASS))
    val_rows = np.flatnonzero((position >= TRAIN_PER_CLASS) & (position < TRAIN_PER_CLASS + VAL_PER_CLASS))
    test_rows = np.flatnonzero(position >= TRAIN_PER_CLASS + VAL_PER_CLASS)
    keras.utils.set_random_seed(seed)
    hp = get_profile("smoke").with_(width=16, epochs=8, batch_size=64, learning_rate=0.1, early_stopping_patience=99)
    model = build_model("airnet", len(classes), width=hp.width)
    init_whitening(model, x[train_rows])
    if train:
        fit(model, {"train": (x[train_rows], y[train_rows]), "val": (x[val_rows], y[val_rows])}, hp)
    predictor = Predictor(model)
    train_out, val_out = predictor.predict(x[train_rows]), predictor.predict(x[val_rows])
    detector = FusedDetector().fit(OODFeatures.from_prediction(train_out), y[train_rows])
    val_features = OODFeatures.from_prediction(val_out)
    detector.calibrate(val_features, val_features.predicted, target_tpr=0.95, per_class=False)
    bundle = ServingBundle(version="behaviour", run_id="", classes=tuple(classes), predictor=predictor,
                           detector=detector)
    return Behaviour(bundle, x[train_rows], y[train_rows], x[test_rows], y[test_rows])


_TRAINED: dict[Path, Behaviour] = {}


@pytest.fixture
def behaviour(shared_datasets) -> Behaviour:
    """The trained model, once per session (shared_datasets is function-scoped, so no scoped fixture here)."""
    if shared_datasets not in _TRAINED:
        _TRAINED[shared_datasets] = make_behaviour(shared_datasets)
    return _TRAINED[shared_datasets]


# -- perturbations and measures ------------------------------------------------------------------

def answers(bundle, images: np.ndarray) -> list[dict]:
    return bundle.classify(images)


def labels(bundle, images: np.ndarray) -> np.ndarray:
    return np.array([a["class_id"] for a in answers(bundle, images)])


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move the content by (dx, dy) pixels, repeating the edge into the gap."""
    pad = max(abs(dx), abs(dy))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[:, pad - dy:pad - dy + 32, pad - dx:pad - dx + 32]


def jpeg_roundtrip(images: np.ndarray, quality: int) -> np.ndarray:
    """Encode each image as a JPEG upload and decode it as the service does (ml.imaging.prepare)."""
    from ml import imaging

    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(imaging.prepare(buffer.getvalue(), preview=False).pixels)
    return np.stack(out)


def relabelling_agreement(base: np.ndarray, rounds: int = 20) -> float:
    """How often the answers agree with a random shuffle of themselves: what a perturbation-blind model scores."""
    rng = np.random.default_rng(0)
    return float(np.mean([np.mean(base == rng.permutation(base)) for _ in range(rounds)]))


def check_invariance(bundle, images: np.ndarray, perturbed: list[np.ndarray], kind: str) -> float:
    base = labels(bundle, images)
    agreement = float(np.mean([np.mean(labels(bundle, p) == base) for p in perturbed]))
    chance = relabelling_agreement(base)
    assert agreement >= MIN_AGREEMENT[kind], f"{kind}: answers agree on only {agreement:.2f} of the images"
    assert agreement - chance >= MIN_MARGIN_OVER_RELABELLING, (
        f"{kind}: agreement {agreement:.2f} is not meaningfully above a random relabelling ({chance:.2f})")
    return agreement


# -- minimum functionality -----------------------------------------------------------------------

def test_training_images_are_classified_well_above_chance(behaviour):
    accuracy = float(np.mean(labels(behaviour.bundle, behaviour.x_train) == behaviour.y_train))
    assert accuracy >= MIN_TRAIN_ACCURACY, f"training accuracy {accuracy:.2f} (chance {1 / 13:.2f})"
    held_out = float(np.mean(labels(behaviour.bundle, behaviour.x_test) == behaviour.y_test))
    assert held_out >= 3 / 13, f"held-out accuracy {held_out:.2f} (chance {1 / 13:.2f})"


# -- invariance ----------------------------------------------------------------------------------

def test_a_mirrored_photo_gets_the_same_answer(behaviour):
    check_invariance(behaviour.bundle, behaviour.x_test, [behaviour.x_test[:, :, ::-1]], "flip")


def test_a_one_or_two_pixel_shift_mostly_keeps_the_answer(behaviour):
    x = behaviour.x_test
    check_invariance(behaviour.bundle, x, [shifted(x, 1, 0), shifted(x, 0, -1), shifted(x, -2, 2)], "shift")


def test_jpeg_quality_75_upload_mostly_keeps_the_answer(behaviour):
    x = behaviour.x_test
    check_invariance(behaviour.bundle, x, [jpeg_roundtrip(x, 75)], "jpeg75")


# -- directional ---------------------------------------------------------------------------------

def destroyed(kind: str, images: np.ndarray) -> np.ndarray:
    """The images with their content destroyed: flat grey, or replaced by noise (uniform or the image's own pixels)."""
    rng = np.random.default_rng(1)
    if kind == "flat grey":
        return np.broadcast_to(np.linspace(96, 160, len(images)).astype(np.uint8)[:, None, None, None],
                               images.shape).copy()
    if kind == "shuffled pixels":
        return np.stack([im.reshape(-1, 3)[rng.permutation(32 * 32)].reshape(32, 32, 3) for im in images])
    return rng.integers(0, 256, images.shape, dtype=np.uint8)  # uniform noise


# High-frequency garbage drives this model's logits up (mean max logit ~10.8 on noise vs ~2.2 on photos,
# confidence ~0.7 vs ~0.33), and the fallback detector `fused` adds the energy of those logits to the KNN
# distance: its score says noise is MORE in-distribution than photos (ood_score ~0.0 vs ~0.48). KNN alone,
# Mahalanobis, ViM and `fused3` all score noise far above photos. Strict: the test fails once this is fixed.
# (Flat grey: see MIN_OOD_RAISE. A 4x4 blur raises it only to 0.55: too little to hold this model to.)
KNOWN_BLIND_SPOT = pytest.mark.xfail(strict=True, reason="fused (KNN + energy) scores high-frequency noise as "
                                     "in-distribution; see the comment above")


@pytest.mark.parametrize("kind", ["flat grey", pytest.param("uniform noise", marks=KNOWN_BLIND_SPOT),
                                  pytest.param("shuffled pixels", marks=KNOWN_BLIND_SPOT)])
def test_destroyed_content_looks_more_out_of_distribution(behaviour, kind):
    x = behaviour.x_test
    real = np.mean([a["ood_score"] for a in answers(behaviour.bundle, x)])
    score = np.mean([a["ood_score"] for a in answers(behaviour.bundle, destroyed(kind, x))])
    assert score >= real + MIN_OOD_RAISE, f"{kind}: mean ood_score {score:.2f} vs {real:.2f} for real images"


def test_darkening_a_photo_lowers_confidence(behaviour):
    x = behaviour.x_test
    dark = np.round(x.astype(np.float32) * 0.25).astype(np.uint8)
    bright = np.mean([a["confidence"] for a in answers(behaviour.bundle, x)])
    dimmed = np.mean([a["confidence"] for a in answers(behaviour.bundle, dark)])
    assert dimmed <= bright - MIN_CONFIDENCE_DROP, f"mean confidence {dimmed:.3f} in the dark vs {bright:.3f}"
