"""Hostile input against a real `bentoml serve`: bounded bodies, bombs, formats, isolation, rate limit, bad bundles."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.fixtures.serving import mismatched_copy, png_bytes, serving_bundle_dir, start_service  # noqa: F401
from tests.integration.test_serving_api import bomb

pytestmark = pytest.mark.integration
LIMIT_MB = 0.5


@pytest.fixture(scope="module")
def served(serving_bundle_dir, tmp_path_factory):  # noqa: F811
    """One service with a 0.5 MB upload limit and a tight correction rate (burst 4, one per 10 s)."""
    directory, settings = serving_bundle_dir
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "5",
           "VISIONLOOP_HOME": str(settings.home), "VISIONLOOP_MAX_UPLOAD_MB": str(LIMIT_MB),
           "VISIONLOOP_MAX_BATCH_UPLOAD_MB": "1", "VISIONLOOP_FEEDBACK_RATE_PER_S": "0.1",
           "VISIONLOOP_FEEDBACK_BURST": "4", "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.3"}
    server, url = start_service(env, tmp_path_factory.mktemp("limits") / "serve.log")
    yield url
    server.stop()


def test_corrections_are_rate_limited_per_client(served):
    """First in this module, so the bucket (burst 4) is full: calls five and six are refused."""
    request_id = httpx.post(f"{served}/classify", files={"image": ("a.png", png_bytes(seed=9), "image/png")}).json()[
        "request_id"]
    statuses = [httpx.post(f"{served}/feedback", json={"request_id": request_id, "label": "cat"}) for _ in range(6)]
    assert [r.status_code for r in statuses[:4]] == [201] * 4
    limited = statuses[4]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "too many corrections" in limited.json()["error"]
    assert "visionloop_feedback_rate_limited_total 2.0" in httpx.get(f"{served}/metrics").text


def chunks(total: int, size: int = 64 * 1024):
    """A body of `total` bytes sent with Transfer-Encoding: chunked (httpx sends no content-length)."""
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


def multipart_chunks(field: str, image_size: int):
    """A multipart body whose image part is image_size bytes, streamed in chunks."""
    yield (f"--b\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"a.png\"\r\n"
           "Content-Type: image/png\r\n\r\n").encode()
    yield from chunks(image_size)
    yield b"\r\n--b--\r\n"


@pytest.mark.parametrize("route,field,size_mb", [("/classify", "image", 4), ("/classify_batch", "images", 8)])
def test_chunked_body_over_the_limit_is_refused_while_streaming(served, route, field, size_mb):
    response = httpx.post(f"{served}{route}", content=multipart_chunks(field, size_mb * 1024 * 1024),
                          headers={"content-type": "multipart/form-data; boundary=b"}, timeout=30)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert "byte limit" in response.json()["error"]
    assert httpx.post(f"{served}/classify", files={"image": ("a.png", png_bytes(), "image/png")}).status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_json_to_feedback_is_refused(served, chunked):
    body = b'{"request_id": "' + b"a" * (2 * 1024 * 1024) + b'", "label": "cat"}'
    content = chunks(len(body)) if chunked else body
    response = httpx.post(f"{served}/feedback", content=content, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 413 and "16384 byte limit" in response.json()["error"]


def test_bomb_and_foreign_formats_get_a_reason(served):
    cases = {"bomb.png": (bomb(12000), 413, "12000x12000 pixels"),
             "a.tif": (png_bytes(fmt="TIFF"), 415, "TIFF images are not accepted"),
             "a.ppm": (png_bytes(fmt="PPM"), 415, "PPM images are not accepted")}
    for name, (data, status, reason) in cases.items():
        response = httpx.post(f"{served}/classify", files={"image": (name, data, "image/png")}, timeout=30)
        assert response.status_code == status and reason in response.json()["error"], (name, response.text)


def test_bad_uploads_in_a_concurrent_batch_fail_only_themselves(served):
    good = [png_bytes((40, 40), seed=i) for i in range(12)]
    bad = [bomb(12000), png_bytes(fmt="TIFF"), png_bytes((64, 64))[:150], b"GIF89a garbage", os.urandom(300)]
    uploads = good + bad

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{served}/classify", files={"image": ("x", d, "image/png")})
                                          for d in uploads))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses[:len(good)]] == [200] * len(good)
    assert all(400 <= r.status_code < 500 and r.json()["error"] for r in responses[len(good):])
    files = [("images", (f"{i}", d, "image/png")) for i, d in enumerate([good[0], bad[1], good[1], bad[0]])]
    items = httpx.post(f"{served}/classify_batch", files=files, timeout=60).json()
    assert [item.get("status", 200) for item in items] == [200, 415, 200, 413]


def test_bundle_whose_classes_do_not_match_the_model_never_serves(serving_bundle_dir, tmp_path):  # noqa: F811
    """The smoke test refuses it at start-up with a reason; the service never reports ready."""
    import time
    from pathlib import Path

    from tests.fixtures.servers import BIN, ServerProcess, free_port

    directory, _ = serving_bundle_dir
    bad, log, port = mismatched_copy(directory, tmp_path / "bad"), tmp_path / "serve.log", free_port()
    repo = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(repo), "VISIONLOOP_BUNDLE_DIR": str(bad), "VISIONLOOP_HOME": str(tmp_path / "home")}
    server = ServerProcess([str(BIN / "bentoml"), "serve", "serving.service:VisionLoop", "--host", "127.0.0.1",
                            "--port", str(port)], log, env=env, cwd=repo).start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "bundle lists" not in log.read_text():
            time.sleep(0.5)
        assert "outputs 13 probabilities but the bundle lists 12 classes" in log.read_text()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).raise_for_status()
    finally:
        server.stop()


def test_a_request_whose_record_cannot_be_made_durable_gets_503_never_200(serving_bundle_dir, tmp_path):  # noqa: F811
    """The request log's ENOSPC failpoint fires on the first spool write: that request is refused, the next served."""
    directory, _ = serving_bundle_dir
    (tmp_path / "marks").mkdir()
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_HOME": str(tmp_path / "home"),
           "VISIONLOOP_FAILPOINT": "enospc_on_write", "VISIONLOOP_FAILPOINT_MARK": str(tmp_path / "marks")}
    server, url = start_service(env, tmp_path / "serve.log")
    try:
        upload = {"image": ("a.png", png_bytes(seed=1), "image/png")}
        refused = httpx.post(f"{url}/classify", files=upload, timeout=30)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "request log unavailable" in refused.json()["error"]
        assert httpx.post(f"{url}/classify", files=upload, timeout=30).status_code == 200
        assert "visionloop_spool_refusals_total 1.0" in httpx.get(f"{url}/metrics").text
    finally:
        server.stop()
