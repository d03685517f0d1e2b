"""OpenVINO runtime: an exported tiny airnet answers like the TensorFlow Predictor, and bad exports fail clearly."""

from __future__ import annotations

import json
import threading

import keras
import numpy as np
import pytest

from ml.inference import Predictor
from ml.model import build_model, init_whitening
from ml.runtime import (
    META,
    XML,
    OpenVINOPredictor,
    RuntimeLoadError,
    choose_precision,
    export_openvino,
    meets_parity,
    parity,
    serving_predictor,
)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(images):
    """A tiny airnet with confident, varied outputs, so a runtime that drifts changes labels."""
    keras.utils.set_random_seed(0)
    model = build_model("airnet", 13, width=16)
    init_whitening(model, images[:200])
    predictor = Predictor(model)  # shares the model's variables: weights set below are what it runs
    emb = predictor.predict(images[:200]).embeddings
    kernel = np.random.default_rng(1).normal(size=(emb.shape[1], 13)) / emb.std(0)[:, None]
    mean = emb.mean(0)
    kernel -= np.outer(mean, mean @ kernel) / (mean @ mean)  # the average image scores 0 for every class
    model.get_layer("logits").set_weights([kernel])
    scale = 4 / predictor.predict(images[:200]).logits.std()  # the net scales logits after the layer
    model.get_layer("logits").set_weights([kernel * scale])  # logits vary by ~4 between images
    return predictor


@pytest.fixture(scope="module")
def exported(predictor, tmp_path_factory):
    directory = tmp_path_factory.mktemp("openvino")
    return directory, export_openvino(predictor, directory)


def test_export_writes_ir_and_metadata_without_pickles(predictor, exported):
    directory, meta = exported
    assert sorted(p.name for p in directory.iterdir()) == ["model.bin", "model.xml", "openvino.json"]
    assert json.loads((directory / META).read_text()) == meta
    assert (meta["n_classes"], meta["embedding_dim"], meta["tta"]) == (13, predictor.embedding_dim, True)
    for path in directory.iterdir():
        assert b"\x80\x04\x95" not in path.read_bytes()[:4096] and not path.name.endswith((".pkl", ".pickle"))
    assert (directory / XML).read_text().lstrip().startswith("<?xml")


def test_f32_openvino_meets_the_parity_rule(predictor, exported, images):
    result = parity(predictor, OpenVINOPredictor.load(exported[0], precision="f32"), images)
    reference = predictor.predict(images).probs
    # Confident (uniform would be 0.08), varied outputs, so the label and probability checks have teeth.
    assert reference.max(1).mean() > 0.3 and len(np.unique(reference.argmax(1))) >= 5
    assert meets_parity(result), result
    assert result["n"] == 400


def test_bf16_is_a_compile_option_that_parity_judges(predictor, exported, images):
    f32 = OpenVINOPredictor.load(exported[0], precision="f32")
    bf16 = OpenVINOPredictor.load(exported[0], precision="bf16")
    assert f32.effective_precision == "f32"
    if bf16.effective_precision != "bf16":
        pytest.skip("this CPU has no bf16 support; OpenVINO runs bf16 requests as f32")
    result = parity(predictor, bf16, images)
    assert result["label_agreement"] > 0.9  # same model, coarser arithmetic
    assert result["max_prob_diff"] > parity(predictor, f32, images)["max_prob_diff"]  # the hint took effect


def test_export_with_a_check_set_records_both_precisions_and_picks_one_that_passes(predictor, images, tmp_path):
    labels = predictor.predict(images[:200]).probs.argmax(1)
    outliers = np.random.default_rng(5).integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    meta = export_openvino(predictor, tmp_path, check=(images[:200], labels), outliers=outliers)
    assert json.loads((tmp_path / META).read_text()) == meta
    f32, bf16 = meta["checks"]["f32"], meta["checks"]["bf16"]
    assert f32["meets_parity"] and f32["accuracy"] == 1.0 and f32["n"] == 200
    assert 0.0 <= f32["ood_auroc"] <= 1.0 and "ood_auroc" in bf16
    assert (meta["precision_hint"], meta["precision_reason"]) == choose_precision(meta["checks"])
    assert OpenVINOPredictor.load(tmp_path).precision == meta["precision_hint"]


F32 = {"meets_parity": True, "accuracy": 0.9001, "ood_auroc": 0.9500}


@pytest.mark.parametrize(("bf16", "expected", "why"), [
    ({"effective_precision": "bf16", "meets_parity": True, "accuracy": 0.9001, "ood_auroc": 0.9490}, "bf16", "within"),
    # reduced precision is judged by its cost, not label for label
    ({"effective_precision": "bf16", "meets_parity": False, "accuracy": 0.8990, "ood_auroc": 0.9485}, "bf16", "within"),
    ({"effective_precision": "bf16", "meets_parity": True, "accuracy": 0.8980, "ood_auroc": 0.95}, "f32", "accuracy"),
    ({"effective_precision": "bf16", "meets_parity": True, "accuracy": 0.9001, "ood_auroc": 0.9470}, "f32", "AUROC"),
    ({"effective_precision": "bf16", "meets_parity": True, "accuracy": 0.9001}, "f32", "no held-out outlier"),
    ({"effective_precision": "f32", "meets_parity": True, "accuracy": 0.9001, "ood_auroc": 0.95}, "f32", "as f32"),
])
def test_bf16_is_chosen_only_within_a_fifth_of_a_point_of_f32_accuracy_and_ood_auroc(bf16, expected, why):
    precision, reason = choose_precision({"f32": F32, "bf16": bf16})
    assert precision == expected and why in reason


def test_openvino_predictor_has_the_predictor_interface(predictor, exported, images):
    ov = OpenVINOPredictor.load(exported[0])
    assert (ov.n_classes, ov.embedding_dim, ov.tta) == (predictor.n_classes, predictor.embedding_dim, True)
    one = ov.predict(images[0])  # a single HWC image is a batch of one
    assert one.probs.shape == (1, 13) and one.embeddings.shape == (1, predictor.embedding_dim)
    batched = ov.predict_batched(images[:37], batch_size=16)
    assert len(batched) == 37 and all(a.dtype == np.float32 for a in (batched.probs, batched.logits,
                                                                        batched.embeddings))
    np.testing.assert_allclose(batched.probs, ov.predict(images[:37]).probs, atol=1e-6)
    assert len(ov.predict_batched(images[:0])) == 0
    mirrored = ov.predict(images[:8, :, ::-1])  # flip TTA survived the export
    np.testing.assert_allclose(mirrored.probs, ov.predict(images[:8]).probs, atol=1e-5)
    with pytest.raises(ValueError, match="32, 32, 3"):
        ov.predict(np.zeros((2, 28, 28, 3), np.uint8))


def test_concurrent_callers_get_their_own_answers(exported, images):
    ov = OpenVINOPredictor.load(exported[0])
    expected = [ov.predict(images[i * 10:(i + 1) * 10]).probs for i in range(4)]
    got: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        for _ in range(5):
            got[i] = ov.predict(images[i * 10:(i + 1) * 10]).probs

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(got[i], expected[i], atol=1e-6)


def test_missing_or_corrupt_export_is_a_clear_error(exported, tmp_path):
    with pytest.raises(RuntimeLoadError, match="missing model.xml, model.bin, openvino.json"):
        OpenVINOPredictor.load(tmp_path)
    for name in ("model.xml", "openvino.json"):
        (tmp_path / name).write_bytes((exported[0] / name).read_bytes())
    (tmp_path / "model.bin").write_bytes((exported[0] / "model.bin").read_bytes()[:100])  # truncated weights
    with pytest.raises(RuntimeLoadError, match="could not be compiled"):
        OpenVINOPredictor.load(tmp_path)
    (tmp_path / "model.xml").write_text("<net>not a model")
    with pytest.raises(RuntimeLoadError, match="could not be compiled"):
        OpenVINOPredictor.load(tmp_path)
    (tmp_path / "openvino.json").write_text("{}")
    with pytest.raises(RuntimeLoadError, match="openvino.json is unreadable"):
        OpenVINOPredictor.load(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        OpenVINOPredictor.load(exported[0], precision="int4")


def test_telemetry_is_the_no_op_stub(exported):
    import openvino.tools.ovc.convert_impl as convert_impl
    import openvino.tools.ovc.telemetry_utils as telemetry_utils

    assert telemetry_utils.tm.__name__ == convert_impl.tm.__name__ == "openvino.tools.ovc.telemetry_stub"


def test_serving_uses_the_export_when_present_and_falls_back_with_a_reason(exported, tmp_path, caplog):
    directory = exported[0]
    assert serving_predictor(directory, "tensorflow") is None
    assert serving_predictor(tmp_path / "absent", "auto") is None
    assert serving_predictor(directory, "auto").precision == exported[1]["precision_hint"]
    assert isinstance(serving_predictor(directory, "openvino"), OpenVINOPredictor)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.xml", "openvino.json"):
        (broken / name).write_bytes((directory / name).read_bytes())
    (broken / "model.bin").write_bytes(b"\0" * 10)
    with caplog.at_level("WARNING", logger="ml.runtime"):
        assert serving_predictor(broken, "auto") is None
        assert serving_predictor(tmp_path / "absent", "openvino") is None
    assert "falling back to TensorFlow" in caplog.text and "could not be compiled" in caplog.text
    assert "missing model.xml" in caplog.text
