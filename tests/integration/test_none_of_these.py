"""`POST /feedback` with the reserved label `none_of_these`: accepted, stored, documented."""

from __future__ import annotations

import json
import time

from ml import layout
from ml.records import NONE_OF_THESE, FeedbackRecord
from ml.storage import open_store
from tests.fixtures.serving import png_bytes, serving_bundle_dir  # noqa: F401  (fixture)
from tests.integration.test_serving_api import api, classify  # noqa: F401  (fixture)


def stored_feedback(settings, request_id: str, timeout_s: float = 20.0) -> FeedbackRecord:
    """The record the shipper writes to feedback/<request_id>.json (it ships every 0.2 s here)."""
    store, key = open_store(settings), layout.feedback_record(request_id)
    deadline = time.monotonic() + timeout_s
    while not store.exists(key) and time.monotonic() < deadline:
        time.sleep(0.2)
    return FeedbackRecord.from_json(store.get_bytes(key))


def test_none_of_these_is_accepted_and_stored(api):  # noqa: F811
    data = png_bytes((48, 40), seed=11)
    request_id = classify(api, data).json()["request_id"]
    response = api.post("/feedback", json={"request_id": request_id, "label": NONE_OF_THESE})
    assert response.status_code == 201, response.text
    assert response.json()["label"] == NONE_OF_THESE and response.json()["predicted_label"] in api.settings.classes
    record = stored_feedback(api.settings, request_id)
    assert record.label == NONE_OF_THESE and record.none_of_these and record.disagrees
    assert open_store(api.settings).get_bytes(record.image_key) == data


def test_unknown_label_lists_the_reserved_one(api):  # noqa: F811
    request_id = classify(api, png_bytes(seed=12)).json()["request_id"]
    for label in ("unicorn", "None of these", "__none__"):
        response = api.post("/feedback", json={"request_id": request_id, "label": label})
        assert response.status_code == 422
        assert response.json()["valid_labels"] == [*api.settings.classes, NONE_OF_THESE]


def test_openapi_documents_the_reserved_label(api):  # noqa: F811
    doc = json.loads(api.get("/docs.json").text)
    body = doc["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert NONE_OF_THESE in body["properties"]["label"]["description"]
    assert NONE_OF_THESE in doc["paths"]["/feedback"]["post"]["description"]
