"""schemathesis against the server's own OpenAPI spec (in-process ASGI, tiny model): whatever it generates for each
route gets no 5xx, and every 4xx names the problem in an "error" message."""

import collections
import os

import pytest
import schemathesis
from conftest import make_pipeline
from hypothesis import HealthCheck, given, settings

from server import ServerSettings, create_app

# SCHEMATHESIS_EXAMPLES=2000 for the long run the README reports (about 10,000 requests)
EXAMPLES_PER_ROUTE = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "40"))


@schemathesis.check
def four_xx_names_the_problem(ctx, response, case) -> None:
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and body.get("error"), f"{response.status_code} without a message: {body}"


@pytest.fixture(scope="module")
def api_schema(tiny_models):
    app = create_app(make_pipeline(tiny_models["main"]), ServerSettings())
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_generated_requests_never_get_a_5xx(api_schema):
    # schemathesis' pytest plugin does not run under pytest 9; its strategies and checks do
    from schemathesis.checks import not_a_server_error

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/v1/audio/transcriptions", "/health"}
    statuses = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(checks=[not_a_server_error, four_xx_names_the_problem])
            statuses.append(response.status_code)

        run()
    print(f"schemathesis: {len(statuses)} requests, statuses {dict(collections.Counter(statuses))}")
    assert len(statuses) >= len(operations) * 5 and not [s for s in statuses if s >= 500]
