"""The HTTP contract in-process (BentoML `to_asgi()` + Starlette TestClient) with a smoke bundle."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from ml import layout
from ml.records import RequestRecord
from ml.storage import open_store
from tests.fixtures.serving import forget_service_metrics, png_bytes, serving_bundle_dir  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def api(serving_bundle_dir, tmp_path_factory):  # noqa: F811
    """A TestClient running the service's lifespan; the store is the snapshot's local store."""
    from starlette.testclient import TestClient

    directory, settings = serving_bundle_dir
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "7",
           "VISIONLOOP_HOME": str(settings.home), "VISIONLOOP_MAX_UPLOAD_MB": "0.5",
           "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from serving.service import VisionLoop

    try:
        with TestClient(VisionLoop.to_asgi(), raise_server_exceptions=False) as client:
            client.settings = settings
            yield client
    finally:
        forget_service_metrics()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def classify(api, data: bytes, name: str = "x.png", content_type: str = "image/png"):
    return api.post("/classify", files={"image": (name, data, content_type)})


def test_classify_answers_the_contract(api):
    response = classify(api, png_bytes((640, 480), fmt="JPEG"), "photo.jpg", "image/jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "7"
    assert set(body["probabilities"]) == set(api.settings.classes)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["message"] == ("Sorry, your image label is not in our training set" if body["is_ood"]
                               else f"This looks like a {body['label']}.")
    assert len(body["similar"]) == 4 and body["imagenet"] is None
    image = api.get(body["similar"][0]["url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (128, 128)


def test_large_photo_within_the_byte_limit_is_accepted(api):
    """Any pixel size is fine as long as the bytes fit the limit: a smooth 12-megapixel JPEG."""
    import numpy as np

    ramp = np.linspace(0, 255, 4000, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (3000, 1))] * 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=50)
    assert len(buffer.getvalue()) < 0.5 * 1024 * 1024
    response = classify(api, buffer.getvalue(), "big.jpg", "image/jpeg")
    assert response.status_code == 200, response.text


def test_request_is_logged_with_its_original_bytes(api):
    data = png_bytes((50, 70), seed=3)
    request_id = classify(api, data).json()["request_id"]
    store = open_store(api.settings)
    deadline_ok = False
    for _ in range(100):
        keys = [k for k in store.list(layout.REQUESTS) if layout.is_request_batch(k)]
        rows = [RequestRecord.from_json(line) for k in keys for line in store.get_bytes(k).decode().splitlines()]
        mine = [r for r in rows if r.request_id == request_id]
        if mine:
            deadline_ok = True
            break
        import time

        time.sleep(0.1)
    assert deadline_ok, "the record never reached the store"
    record = mine[0]
    assert (record.width, record.height, record.image_format, record.model_version) == (50, 70, "PNG", "7")
    assert store.get_bytes(record.image_key) == data
    assert record.embedding.ndim == 1 and record.embedding.size > 0


def test_feedback_roundtrip_and_errors(api):
    request_id = classify(api, png_bytes(seed=5)).json()["request_id"]
    ok = api.post("/feedback", json={"request_id": request_id, "label": "insects", "source": "web"})
    assert ok.status_code == 201 and ok.json()["label"] == "insects" and ok.json()["source"] == "web"
    unknown = api.post("/feedback", json={"request_id": "f" * 32, "label": "cat"})
    assert unknown.status_code == 404 and "error" in unknown.json()
    bad_label = api.post("/feedback", json={"request_id": request_id, "label": "unicorn"})
    assert bad_label.status_code == 422 and "cat" in bad_label.json()["valid_labels"]
    assert api.post("/feedback", content=b"not json").status_code == 422


def bomb(side: int = 40000) -> bytes:
    """A 100-byte PNG whose header declares side x side pixels (PIL's own bomb limit is 2 x 89 Mpx)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


BAD_INPUT = [
    ("empty body", dict(content=b"", headers={"content-type": "multipart/form-data; boundary=x"}), (400, 422)),
    ("missing field", dict(files={"other": ("a.png", png_bytes(), "image/png")}), (422,)),
    ("not an image", dict(files={"image": ("a.png", b"hello world", "image/png")}), (422,)),
    ("truncated", dict(files={"image": ("a.png", png_bytes((64, 64))[:200], "image/png")}), (422,)),
    ("too big", dict(files={"image": ("a.png", os.urandom(600_000), "image/png")}), (413,)),
    ("bomb", dict(files={"image": ("a.png", bomb(), "image/png")}), (413,)),
    # 144 Mpx (0.4 GB decoded) is under PIL's own limit: VISIONLOOP_MAX_IMAGE_PIXELS refuses it from the header
    ("12k bomb", dict(files={"image": ("a.png", bomb(12000), "image/png")}), (413,)),
    ("tiff", dict(files={"image": ("a.tif", png_bytes(fmt="TIFF"), "image/tiff")}), (415,)),
    ("ppm", dict(files={"image": ("a.ppm", png_bytes(fmt="PPM"), "image/x-portable-pixmap")}), (415,)),
    ("text part", dict(files={"image": ("a.txt", b"hello", "text/plain")}), (415,)),
    ("json body", dict(json={"image": "abc"}), (415,)),
]


@pytest.mark.parametrize("case,kwargs,statuses", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_reason_never_a_500(api, case, kwargs, statuses):
    response = api.post("/classify", **kwargs)
    assert response.status_code in statuses, (case, response.status_code, response.text)
    assert response.json()["error"]
    assert classify(api, png_bytes()).status_code == 200  # and the service still works


def test_classify_batch_and_pages(api):
    files = [("images", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]
    files.append(("images", ("bad.png", b"nope", "image/png")))
    response = api.post("/classify_batch", files=files)
    assert response.status_code == 200, response.text
    items = response.json()
    assert [("error" in item) for item in items] == [False, False, False, True]
    assert items[3]["status"] == 422
    assert api.get("/similar/nope:train:1").status_code == 404
    assert api.get("/similar/garbage").status_code == 404
    assert "Give us another chance" in api.get("/").text
    assert api.get("/static/app.js").status_code == 200
    info = api.get("/model_info").json()
    assert info["model_version"] == "7" and info["ready"]
    assert api.get("/readyz").status_code == 200
    doc = json.loads(api.get("/docs.json").text)
    assert {"/classify", "/classify_batch", "/feedback"} <= set(doc["paths"])
    assert {"ClassifyOut", "BatchItemOut", "FeedbackOut", "ModelInfoOut", "ErrorOut"} <= set(doc["components"]["schemas"])
    ok = doc["paths"]["/classify"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ClassifyOut"}
    body = doc["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["request_id", "label"]
    assert "swagger" in api.get("/docs").text.lower()
