"""Property-based API test: schemathesis generates requests from the service's own OpenAPI document.

Every route the document declares is called with generated valid and invalid input against a real
`bentoml serve`; none may answer 5xx, and answers must match the declared schemas.
"""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.serving import serving_bundle_dir, start_service  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OUR_ROUTES = {"/classify", "/feedback", "/model_info", "/similar/{image_id}", "/classify_batch"}


@pytest.fixture(scope="module")
def served(serving_bundle_dir, tmp_path_factory):  # noqa: F811
    directory, settings = serving_bundle_dir
    home = tmp_path_factory.mktemp("schema-home")
    env = {"VISIONLOOP_BUNDLE_DIR": str(directory), "VISIONLOOP_BUNDLE_VERSION": "3",
           "VISIONLOOP_HOME": str(home), "VISIONLOOP_LOCAL_STORE": str(settings.home / "store"),
           "VISIONLOOP_FEEDBACK_BURST": "100000", "VISIONLOOP_FEEDBACK_RATE_PER_S": "1000"}
    server, url = start_service(env, tmp_path_factory.mktemp("schema") / "serve.log")
    yield url
    server.stop()


def test_openapi_declares_a_schema_for_every_route(served):
    document = httpx.get(f"{served}/docs.json").json()
    assert OUR_ROUTES <= set(document["paths"])
    for path in OUR_ROUTES:
        for method, operation in document["paths"][path].items():
            ok = operation["responses"].get("200") or operation["responses"].get("201")
            assert ok and ok.get("content"), f"{method.upper()} {path} declares no response schema"


def test_generated_requests_never_get_a_server_error(served):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{served}/docs.json")
    failures, calls = [], {}
    for result in schema.include(path=list(OUR_ROUTES)).get_all_operations():
        operation = result.ok()

        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case):
            response = case.call(base_url=served, timeout=30)
            calls[case.operation.path] = calls.get(case.operation.path, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")
            elif response.status_code < 300:
                case.validate_response(response, checks=[response_schema_conformance])

        call()
    assert not failures, "\n".join(failures[:10])
    # Routes with inputs get many generated cases; /model_info has none to vary.
    assert set(calls) == OUR_ROUTES and min(n for p, n in calls.items() if p != "/model_info") >= 10, calls
