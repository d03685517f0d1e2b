"""ServingBundle: one classify call gives every field the request log and the API need."""

from __future__ import annotations

import numpy as np
import pytest

from ml.answers import sniff_format
from ml.bundle import ServingBundle
from ml.stages.snapshots import TrainingImages
from ml.storage import open_store
from tests.fixtures.serving import png_bytes, serving_bundle_dir  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def bundle(serving_bundle_dir):  # noqa: F811
    directory, _ = serving_bundle_dir
    return ServingBundle.from_dir(directory, version="9")


def test_classify_returns_the_contract_fields(bundle):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    results = bundle.classify(images)
    assert len(results) == 3
    for res in results:
        assert res["label"] == bundle.classes[res["class_id"]]
        assert len(res["probabilities"]) == 13 and abs(sum(res["probabilities"]) - 1) < 1e-4
        assert res["confidence"] == pytest.approx(max(res["probabilities"]))
        assert isinstance(res["is_ood"], bool) and res["ood_detector"] == "msp"
        assert 0 <= res["hist_distance"] <= 1 and 0 <= res["pixel_entropy"] <= 8
        assert len(res["similar"]) == 4
        assert all(s["url"] == f"/similar/{s['id']}" and s["label"] in bundle.classes for s in res["similar"])


def test_batch_and_single_agree(bundle):
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    batch = bundle.classify(images)
    single = bundle.classify(images[2:3])[0]
    np.testing.assert_allclose(batch[2]["probabilities"], single["probabilities"], atol=1e-5)
    assert [s["id"] for s in batch[2]["similar"]] == [s["id"] for s in single["similar"]]


def test_flat_image_is_far_from_its_class_histogram(bundle):
    flat = np.full((1, 32, 32, 3), 255, dtype=np.uint8)  # one luma bin: far from any class mean
    assert bundle.classify(flat)[0]["hist_distance"] > 0.5


def test_training_images_by_id(serving_bundle_dir, tmp_path):  # noqa: F811
    _, settings = serving_bundle_dir
    images = TrainingImages(open_store(settings), tmp_path)
    assert images.get("serve0001:train:0").shape == (32, 32, 3)
    for bad in ("serve0001:train:99999", "nope", "other:train:0"):
        with pytest.raises(KeyError):
            images.get(bad)


@pytest.mark.parametrize("fmt,expected", [("PNG", ("PNG", "png")), ("JPEG", ("JPEG", "jpg")),
                                          ("GIF", ("GIF", "gif")), ("WEBP", ("WEBP", "webp"))])
def test_sniff_format(fmt, expected):
    assert sniff_format(png_bytes(fmt=fmt)) == expected
    assert sniff_format(b"hello") == ("UNKNOWN", "bin")


def test_training_images_concurrent_first_reads(serving_bundle_dir, tmp_path):  # noqa: F811
    """The page asks for four images at once; the first download must happen once, not race."""
    from concurrent.futures import ThreadPoolExecutor

    _, settings = serving_bundle_dir
    images = TrainingImages(open_store(settings), tmp_path)
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda i: images.get(f"serve0001:train:{i}").shape, range(8)))
    assert shapes == [(32, 32, 3)] * 8


def test_bundle_whose_classes_do_not_match_the_model_is_refused(serving_bundle_dir, tmp_path):  # noqa: F811
    from ml.bundle import BundleRejected
    from tests.fixtures.serving import mismatched_copy

    directory, _ = serving_bundle_dir
    ServingBundle.from_dir(directory, version="1", imagenet=False).smoke_test()  # the good one passes
    bad = ServingBundle.from_dir(mismatched_copy(directory, tmp_path / "bad"), version="2", imagenet=False)
    with pytest.raises(BundleRejected, match="outputs 13 probabilities but the bundle lists 12 classes") as err:
        bad.smoke_test()
    assert err.value.reason == "smoke"


def test_reference_images_must_score_as_at_training(serving_bundle_dir, tmp_path):  # noqa: F811
    """A bundle whose model no longer gives its logged val images their training-time scores is refused."""
    import shutil

    from ml.bundle import SMOKE_FILE, BundleRejected

    directory, _ = serving_bundle_dir
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    bundle = ServingBundle.from_dir(copy, version="1", imagenet=False)
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    probs = bundle.predictor.predict(images).probs.astype(np.float64)
    smoke = (copy / "bundle" if (copy / "bundle").is_dir() else copy) / SMOKE_FILE
    np.savez(smoke, images=images, probs=probs)
    ServingBundle.from_dir(copy, version="1", imagenet=False).smoke_test()  # scores as logged: accepted
    confident = np.eye(probs.shape[1])[probs.argmin(axis=1)]  # another model's, sure of the least likely class
    np.savez(smoke, images=images, probs=confident)
    with pytest.raises(BundleRejected, match="reference images score differently"):
        ServingBundle.from_dir(copy, version="2", imagenet=False).smoke_test()


def test_a_bf16_forward_pass_is_held_to_twice_what_its_export_check_saw(serving_bundle_dir, tmp_path):  # noqa: F811
    """bf16 rounds (export accepted on accuracy and OOD AUROC), so 2e-3 would refuse a good model; a shift
    beyond twice the val split's worst difference still is refused."""
    import shutil
    from dataclasses import replace

    from ml.bundle import SMOKE_FILE, BundleRejected

    class Rounded:  # the bundle's own model, its probabilities moved by `shift` (after renormalising)
        effective_precision = "bf16"

        def __init__(self, inner, shift, seen):
            self.inner, self.shift, self.meta = inner, shift, {"checks": {"bf16": {"max_prob_diff": seen}}}

        def predict(self, images):
            pred = self.inner.predict(images)
            probs = pred.probs.copy()
            probs[:, 0] += self.shift
            probs[:, 1] -= self.shift
            return replace(pred, probs=probs)

    directory, _ = serving_bundle_dir
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    probs = ServingBundle.from_dir(copy, version="1", imagenet=False).predictor.predict(images).probs
    np.savez((copy / "bundle" if (copy / "bundle").is_dir() else copy) / SMOKE_FILE, images=images,
             probs=probs.astype(np.float64))
    for shift, accepted in ((0.02, True), (0.07, False)):
        bundle = ServingBundle.from_dir(copy, version="1", imagenet=False)
        bundle.predictor = Rounded(bundle.predictor, shift, seen=0.03)
        if accepted:
            bundle._check_reference_images()
        else:
            with pytest.raises(BundleRejected, match="score differently"):
                bundle._check_reference_images()


def test_digest_mismatch_is_refused_and_drops_the_cached_copy(serving_bundle_dir, tmp_path, caplog):  # noqa: F811
    import shutil

    from ml.bundle import BundleRejected, verify_digests
    from ml.digests import tree_digest

    directory, _ = serving_bundle_dir
    target = tmp_path / "run"
    shutil.copytree(directory / "bundle", target / "bundle")
    (target / "model").mkdir()
    shutil.copy(directory / "model.keras", target / "model" / "model.keras")
    good = {"gate.bundle_sha256": tree_digest(target / "bundle"), "gate.model_sha256": tree_digest(target / "model")}
    verify_digests(target, good, "4")
    with pytest.raises(BundleRejected, match="no gate.bundle_sha256 tag: it did not pass the gate"):
        verify_digests(target, {}, "4")  # a version that never passed the gate is refused...
    verify_digests(target, {}, "4", allow_untagged=True)  # ...unless the operator opts in
    assert "no gate.bundle_sha256 tag" in caplog.text
    (target / "model" / "model.keras").write_bytes(b"tampered")
    with pytest.raises(BundleRejected, match="model/ digest") as err:
        verify_digests(target, good, "4")
    assert err.value.reason == "digest" and not (target / "model").exists()
