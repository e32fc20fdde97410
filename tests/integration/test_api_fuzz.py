"""Property-based fuzzing of the API's own OpenAPI schema (schemathesis) against the real service.

Every operation gets generated requests three ways: with a full-access token, with no token, and with a
wrong token. Properties: no response is a 5xx; without a valid token nothing but /healthz and /readyz
answers anything other than 401; with a token every response, to valid and invalid requests alike,
conforms to the contract /openapi.json documents (schemathesis' not_a_server_error,
status_code_conformance, content_type_conformance and response_schema_conformance: 0 failures), so a
client generated from it works. The service runs with `max_active_runs=0` so runs the fuzzer manages to
create are queued, never executed.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sparring.tasks.arena.rules import arena_prompts
from tests.integration.conftest import SMALL_ARENA_RUN, ApiServer, launch_api_server, shut_down

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


def fuzz(server: ApiServer, check, examples: int = 12) -> int:  # type: ignore[no-untyped-def]
    """Run `check(case)` on generated valid and invalid requests for every operation; returns the count."""
    calls = 0
    for op in operations(server):
        for mode in MODES:

            @settings(FUZZ, max_examples=examples)
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


CONTRACT = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
POOL = "".join(json.dumps({"id": p.prompt_id, "prompt": p.prompt}) + "\n" for p in arena_prompts("train")[:4]).encode()
CONTRACT_EXAMPLES = 30  # per operation and mode: ~1000 requests, well under a minute
RUN = {"config": {**SMALL_ARENA_RUN, "policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}}}


def seeded_cases(ops: dict[str, object], pool_id: str, run_id: str, key: str) -> list:  # type: ignore[type-arg]
    """Requests naming a real pool and a real (queued, then stopped) run: generated ids never exist, so
    without these the documented 200/202/409 bodies of the one-resource routes would go unchecked."""
    ids = {"run_id": run_id, "pool_id": pool_id, "version": 0, "name": "config.json"}
    cases = [
        ops["POST /v1/pools"].Case(body=POOL.decode(), media_type="application/x-ndjson"),  # 200: seen before
        ops["POST /v1/runs"].Case(body={**RUN, "pool_id": pool_id}, headers={"Idempotency-Key": key}),  # 200
        ops["POST /v1/runs"].Case(body=RUN, headers={"Idempotency-Key": key}),  # 409: key reused
        ops["POST /v1/runs/{run_id}/pause"].Case(path_parameters=ids),  # 202: a queued run pauses at once
        ops["POST /v1/runs/{run_id}/stop"].Case(path_parameters=ids),  # 202
        ops["POST /v1/runs/{run_id}/resume"].Case(path_parameters=ids),  # 409: a stopped run cannot resume
    ]
    for label, op in ops.items():
        method, path = label.split(" ", 1)
        if method == "GET" and "{" in path:
            names = [n for n in ids if "{" + n + "}" in path]
            query = {"max_seconds": 5} if path.endswith("/events") else {}
            cases.append(op.Case(path_parameters={n: ids[n] for n in names}, query=query))  # type: ignore[attr-defined]
    return cases


def test_every_response_conforms_to_the_openapi_contract(fuzz_server: ApiServer) -> None:
    """The four checks on every operation, valid and invalid requests, plus requests naming a real pool and
    run: statuses, media types and bodies (errors included: every one a Problem) are the documented ones.
    Collects every failure, then asserts there are none."""
    auth = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    failures: dict[tuple[str, int], str] = {}
    statuses: dict[int, int] = {}

    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=fuzz_server.url, headers=auth, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CONTRACT, headers=auth)
        except (AssertionError, FailureGroup) as err:  # every failure is collected, then reported at once
            failures.setdefault((case.operation.label, response.status_code), f"{err}\n{response.text[:300]}")

    started = time.monotonic()
    with fuzz_server.admin as c:
        pool = c.post("/v1/pools", params={"name": "contract"}, content=POOL)
        assert pool.status_code in (200, 201), pool.text
        key = f"contract-{secrets.token_hex(8)}"
        run = c.post("/v1/runs", json={**RUN, "pool_id": pool.json()["pool_id"]}, headers={"Idempotency-Key": key})
        assert run.status_code == 201, run.text
    ops = {op.label: op for op in operations(fuzz_server)}
    seeded = seeded_cases(ops, pool.json()["pool_id"], run.json()["run_id"], key)
    for case in seeded:
        check(case)
    assert statuses.get(200, 0) >= 10 and statuses.get(202) == 2 and statuses.get(409) == 2, statuses
    calls = fuzz(fuzz_server, check, examples=CONTRACT_EXAMPLES) + len(seeded)
    sys.stderr.write(
        f"contract: {len(ops)} operations, {calls} requests, {len(failures)} failures, "
        f"statuses {dict(sorted(statuses.items()))}, {time.monotonic() - started:.1f} s\n"
    )
    assert not failures, "\n\n".join(f"{label} -> {status}:\n{why}" for (label, status), why in failures.items())
    assert calls > 200 and statuses.get(422, 0) > 0


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
