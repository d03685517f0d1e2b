"""The upload page in headless Chromium: upload, read the answer, click a similar image, see it stored."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ml import layout
from ml.records import NONE_OF_THESE, FeedbackRecord
from ml.storage import open_store
from tests.fixtures.serving import png_bytes, serving_bundle_dir, start_service  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.e2e


@pytest.fixture
def page_url(serving_bundle_dir, tmp_path):  # noqa: F811
    directory, settings = serving_bundle_dir
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "11",
           "VISIONLOOP_HOME": str(settings.home), "VISIONLOOP_REQUEST_LOG_INTERVAL_S": "0.2"}
    server, url = start_service(env, tmp_path / "serve.log")
    yield url, settings
    server.stop()


@contextmanager
def uploaded(url: str, image: Path):
    """Headless Chromium on the page, with `image` uploaded and its answer shown."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.set_input_files("#file", str(image))
            expect(page.locator("#result")).to_be_visible(timeout=20_000)
            yield page
        finally:
            browser.close()


def stored_feedback(settings, request_id: str) -> FeedbackRecord:
    """The correction once the service has shipped it to the store."""
    store = open_store(settings)
    key = layout.feedback_record(request_id)
    deadline = time.monotonic() + 20
    while not store.exists(key) and time.monotonic() < deadline:
        time.sleep(0.2)
    return FeedbackRecord.from_json(store.get_bytes(key))


def test_upload_then_correct_via_a_similar_image(page_url, tmp_path):
    from playwright.sync_api import expect

    url, settings = page_url
    image = tmp_path / "upload.png"
    image.write_bytes(png_bytes((200, 150), seed=42))
    with uploaded(url, image) as page:
        expect(page.locator("#probabilities li")).to_have_count(len(settings.classes))
        expect(page.locator("#version")).to_have_text("11")
        request_id = page.locator("#request-id").inner_text()
        thumbs = page.locator("button.similar-choice img")
        expect(thumbs).to_have_count(4)
        page.wait_for_function("[...document.querySelectorAll('button.similar-choice img')]"
                               ".every(img => img.complete && img.naturalWidth === 128)", timeout=10_000)
        choice = page.locator("button.similar-choice").first
        label = choice.get_attribute("data-label")
        choice.click()
        expect(page.locator("#thanks")).to_contain_text("Thank you", timeout=10_000)
    record = stored_feedback(settings, request_id)
    assert (record.label, record.source, record.model_version) == (label, "web", "11")
    assert open_store(settings).get_bytes(record.image_key) == image.read_bytes()
    assert os.path.basename(record.image_key) == f"{request_id}.png"


def test_none_of_these_is_stored_with_the_reserved_label(page_url, tmp_path):
    from playwright.sync_api import expect

    url, settings = page_url
    image = tmp_path / "upload.png"
    image.write_bytes(png_bytes((64, 64), seed=7))
    with uploaded(url, image) as page:
        request_id = page.locator("#request-id").inner_text()
        page.select_option("#label-select", label="None of these")
        page.get_by_role("button", name="Send correction").click()
        expect(page.locator("#thanks")).to_contain_text('recorded "none of these"', timeout=10_000)
    record = stored_feedback(settings, request_id)
    assert (record.label, record.source) == (NONE_OF_THESE, "web")
    assert open_store(settings).get_bytes(record.image_key) == image.read_bytes()
