"""ImageNet mapping file (generated from WordNet) and the ResNet50 labeler with weights=None."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from ml.imagenet import ImageNetLabeler, load_imagenet_classes, load_mapping, parse_mapping
from ml.imagenet.build_mapping import CLASS_ROOTS

INDEX = {wnid: i for i, (wnid, _) in enumerate(load_imagenet_classes())}


@pytest.fixture(scope="module")
def mapping() -> dict[int, str]:
    return load_mapping()


@pytest.mark.parametrize("wnid, expected", [
    ("n04552348", "airplane"),  # warplane
    ("n02123045", "cat"),  # tabby
    ("n07747607", "fruit_and_vegetables"),  # orange
    ("n02206856", "insects"),  # bee
    ("n04398044", "food_containers"),  # teapot
    ("n03770679", "automobile"),  # minivan: claimed by car and van, resolved to automobile
    ("n02099601", "dog"),  # golden retriever
    ("n09472597", None),  # volcano
    ("n03930630", None),  # pickup: CIFAR-10 excludes it from both vehicle classes
    ("n02129604", None),  # tiger: a big cat, not a house cat
])
def test_mapping_cases(mapping, wnid, expected):
    assert mapping.get(INDEX[wnid]) == expected


def test_every_class_has_imagenet_counterparts_and_file_covers_1000_classes(mapping):
    assert len(INDEX) == 1000
    assert set(mapping.values()) == set(CLASS_ROOTS)
    assert 200 < len(mapping) < 400


def test_committed_mapping_matches_the_generator(shared_datasets, tmp_path):
    from ml.imagenet.build_mapping import main
    from ml.imagenet.mapping import MAPPING_PATH

    main(["--source", str(shared_datasets / "imagenet"), "--out", str(tmp_path / "mapping.txt")])
    assert (tmp_path / "mapping.txt").read_text() == MAPPING_PATH.read_text()


def test_parser_reads_depth_markers_and_rejects_lines_outside_a_class():
    text = "# class: airplane\nn02691156: airplane\n---n02690373: airliner\n------n0000001: x, y\n"
    assert parse_mapping(text) == {"n02691156": "airplane", "n02690373": "airplane", "n0000001": "airplane"}
    with pytest.raises(ValueError, match="line 1"):
        parse_mapping("n02691156: airplane\n")


@pytest.fixture(scope="module")
def untrained() -> ImageNetLabeler:
    return ImageNetLabeler(weights=None).load()


def test_network_runs_on_an_original_size_image_with_weights_none(untrained):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 410, 3), dtype=np.uint8))
    probs = untrained.predict(image)
    assert probs.shape == (1000,) and probs.sum() == pytest.approx(1.0, abs=1e-3)
    suggestion = untrained.suggest(image)
    assert set(suggestion) >= {"label", "imagenet_label", "wnid", "confidence"}


def test_suggestion_maps_top_classes_to_ours_or_none(untrained):
    probs = np.zeros(1000)
    probs[INDEX["n02123045"]], probs[INDEX["n02123159"]] = 0.5, 0.3  # tabby, tiger cat
    assert untrained.suggest_from_probs(probs) | {"label_confidence": 0} == {
        "label": "cat", "label_confidence": 0, "imagenet_label": "tabby", "wnid": "n02123045", "confidence": 0.5}
    probs[:] = 0
    probs[INDEX["n09472597"]] = 0.9  # volcano
    assert untrained.suggest_from_probs(probs)["label"] is None


def test_try_load_reports_unavailable_without_raising(monkeypatch, caplog):
    import keras

    def offline(**_):
        raise OSError("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with caplog.at_level(logging.WARNING):
        assert ImageNetLabeler.try_load() is None
    assert "ImageNet labeler unavailable" in caplog.text
