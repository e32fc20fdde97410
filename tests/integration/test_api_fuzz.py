"""Property-based fuzzing of the API's own OpenAPI schema (schemathesis) against the real service.

Every operation gets generated requests three ways: with a full-access token, with no token, and with a
wrong token. Properties: no response is a 5xx; without a valid token nothing but /healthz and /readyz
answers anything other than 401; with a token every response conforms to the documented status codes
and schemas. The service runs with `max_active_runs=0` so runs the fuzzer manages to create are queued,
never executed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.integration.conftest import ApiServer, launch_api_server, shut_down

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPEN = {"/healthz", "/readyz"}


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:  # type: ignore[no-untyped-def]
    """Pool uploads are raw JSONL text: send the generated string (or anything else, JSON-encoded) as bytes."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


@pytest.fixture(scope="module")
def fuzz_server(
    redis_url: str, ray_head: str, ray_auth: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = launch_api_server(
        redis_url, ray_head, ray_auth, tmp_path_factory.mktemp("fuzz"), SPARRING_MAX_ACTIVE_RUNS="0"
    )
    yield server
    shut_down(server)


def operations(server: ApiServer) -> list:  # type: ignore[type-arg]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 20, [op.label for op in ops]
    return ops


FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def fuzz(server: ApiServer, check) -> int:  # type: ignore[no-untyped-def]
    """Run `check(case)` on generated valid and invalid requests for every operation; returns the count."""
    calls = 0
    for op in operations(server):
        for mode in MODES:

            @FUZZ
            @given(case=op.as_strategy(mode))
            def run(case) -> None:  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                check(case)

            try:
                run()
            except Unsatisfiable:  # nothing can be invalid about an operation without inputs (e.g. /healthz)
                assert mode is GenerationMode.NEGATIVE, op.label
    return calls


def test_authenticated_requests_never_fail_server_side(fuzz_server: ApiServer) -> None:
    auth = {"Authorization": f"Bearer {fuzz_server.admin_token}"}

    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=fuzz_server.url, headers=auth, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        if case.meta is None or "positive" in str(getattr(case.meta, "generation", "")).lower():
            case.validate_response(response, checks=[status_code_conformance])

    assert fuzz(fuzz_server, check) > 200


def test_without_a_valid_token_only_health_answers(fuzz_server: ApiServer) -> None:
    def check(case) -> None:  # type: ignore[no-untyped-def]
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": fuzz_server.admin_token}):
            response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])
            if case.path in OPEN:
                assert response.status_code in (200, 503)
            else:
                assert response.status_code == 401, (case.method, case.formatted_path, headers, response.text[:200])
                assert response.json()["detail"]

    assert fuzz(fuzz_server, check) > 200


def test_read_only_token_cannot_change_anything(fuzz_server: ApiServer) -> None:
    ro = {"Authorization": f"Bearer {fuzz_server.read_token}"}

    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=fuzz_server.url, headers=ro, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        if case.method.upper() != "GET":
            assert response.status_code == 403, (case.method, case.formatted_path, response.text[:200])

    assert fuzz(fuzz_server, check) > 200
