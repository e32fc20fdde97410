"""The API's OpenAPI document, checked without a server: it validates against the OpenAPI meta-schema; every
4xx (and every Redis-down 503) a route documents is the one error body, `Problem`; every route with
parameters or a body documents 422, every token-gated route 401/403/503; FastAPI's own validation-error
schema appears nowhere; non-JSON successes are documented as their real media types only. And the errors the
app really answers (FastAPI's 422, the token gate's 401/403, a Redis-down 503) match that Problem schema.

The app is built around a Redis client that is never reachable (nothing here needs one, and a request that
does touch Redis gets the documented 503). Live conformance under fuzzing: tests/integration/test_api_fuzz.py.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sparring.services.api.app import create_app
from sparring.services.settings import ServiceSettings

UNREACHABLE = "redis://127.0.0.1:1/0"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
OPEN = {"/healthz", "/readyz"}
NON_JSON = {
    "/metrics": "text/plain",
    "/v1/runs/{run_id}/events": "text/event-stream",
    "/v1/runs/{run_id}/pairs/export": ["application/x-ndjson", "application/vnd.apache.parquet"],  # file_format
    "/v1/runs/{run_id}/checkpoints/{version}/archive": "application/x-tar",
    "/v1/runs/{run_id}/checkpoints/{version}/files/{name}": "application/octet-stream",
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = ServiceSettings(
        api_tokens=["adm"], readonly_tokens=["ro"], data_dir=str(tmp_path_factory.mktemp("contract"))
    )
    client = redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=0.5)
    return create_app(settings, client, UNREACHABLE, scheduler=False)


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    with TestClient(app) as c:  # the document clients download, not just app.openapi()
        r = c.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, item in spec["paths"].items() for m, op in item.items()]


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(spec)
    schema.validate()  # the OpenAPI 3.1 meta-schema; raises on any violation
    assert len(operations(spec)) >= 20


def test_every_documented_error_is_a_problem(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "ValidationError" not in spec["components"]["schemas"]
    wrong = []
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if status.startswith("4") or (status == "503" and path not in OPEN):
                content = response.get("content", {})
                if content != {"application/json": {"schema": PROBLEM_REF}}:
                    wrong.append(f"{method} {path} {status}: {content}")
    assert not wrong, "\n".join(wrong)


def test_every_route_documents_the_errors_it_can_answer(spec: dict[str, Any]) -> None:
    missing = []
    for method, path, op in operations(spec):
        documented = set(op["responses"])
        if path not in OPEN:
            missing += [f"{method} {path}: {s}" for s in ("401", "403", "503") if s not in documented]
        if (op.get("parameters") or op.get("requestBody")) and "422" not in documented:
            missing.append(f"{method} {path}: 422")
    assert not missing, "\n".join(missing)


def test_non_json_successes_document_their_media_type_only(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        success = [s for s in op["responses"] if s.startswith("2")]
        for status in success:
            types = list(op["responses"][status].get("content", {}))
            expected = NON_JSON.get(path, "application/json")
            assert types == (expected if isinstance(expected, list) else [expected]), (method, path, status, types)
    events = spec["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert events["schema"]["properties"]["data"]["type"] == "string"  # one event, as SSE clients parse it


def test_the_errors_actually_answered_match_the_problem_schema(app: FastAPI, spec: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(spec["components"]["schemas"]["Problem"])  # no $refs in it
    adm, ro = {"Authorization": "Bearer adm"}, {"Authorization": "Bearer ro"}
    with TestClient(app, raise_server_exceptions=False) as c:
        answers = {
            "missing token": (c.get("/v1/runs"), 401),
            "bad token": (c.get("/metrics", headers={"Authorization": "Bearer nope"}), 401),
            "read-only write": (c.post("/v1/runs/x/stop", headers=ro), 403),
            "bad query": (c.get("/v1/runs/x/pairs", params={"limit": 0, "iteration": "two"}, headers=adm), 422),
            "bad path": (c.get("/v1/runs/bad id!/iterations", headers=adm), 422),
            "bad body": (c.post("/v1/runs", json={"config": [], "extra": 1}, headers=adm), 422),
            "not JSON": (c.post("/v1/runs", content=b"{", headers={**adm, "content-type": "application/json"}), 422),
            "redis down": (c.get("/v1/runs", headers=adm), 503),
        }
    for what, (r, status) in answers.items():
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", what
        validator.validate(r.json())
    bad_query = answers["bad query"][0].json()
    assert bad_query["detail"] == "invalid request: 2 problem(s), each listed"
    assert bad_query["problems"] == [
        "query.limit: Input should be greater than or equal to 1",
        "query.iteration: Input should be a valid integer, unable to parse string as an integer",
    ]
    assert "body.extra: Extra inputs are not permitted" in answers["bad body"][0].json()["problems"]


def test_metrics_is_documented_as_prometheus_text(spec: dict[str, Any]) -> None:
    ok = spec["paths"]["/metrics"]["get"]["responses"]["200"]
    assert ok["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert "Prometheus" in ok["description"]
