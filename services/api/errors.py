"""Error responses: `error_response` builds the `{"detail", "problems"?}` body (schemas.Problem, the one error
body of the API), and `add_exception_handlers` maps the service's exceptions to status codes (404 unknown run,
409 conflicts and refused transitions, 422 refused input with every problem listed, 503 Redis unreachable).
FastAPI's own request validation errors and HTTPExceptions are rendered as a Problem too: a 422 for a bad
parameter or body lists each problem as `"<location>: <message>"` instead of FastAPI's list of objects."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sparring.services.pools import PoolRejected
from sparring.services.runs import Conflict, RequestError
from sparring.shared.store import InvalidTransition, RunNotFound


def error_response(status: int, detail: str, problems: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(status_code=status, content=body)


def validation_problems(err: RequestValidationError) -> list[str]:
    """`"query.limit: Input should be greater than or equal to 1"`, one per error (never the refused value)."""
    return [
        f"{'.'.join(str(part) for part in e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}" for e in err.errors()
    ]


def add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = validation_problems(err)
        return error_response(422, f"invalid request: {len(problems)} problem(s), each listed", problems)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        response = error_response(err.status_code, str(err.detail))
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, err: RunNotFound) -> JSONResponse:
        return error_response(404, f"run {err.args[0]!r} not found")

    @app.exception_handler(InvalidTransition)
    async def _transition(request: Request, err: InvalidTransition) -> JSONResponse:
        return error_response(409, str(err))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, err: Conflict) -> JSONResponse:
        return error_response(409, str(err), err.problems)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        return error_response(422, str(err), err.problems)

    @app.exception_handler(PoolRejected)
    async def _pool_rejected(request: Request, err: PoolRejected) -> JSONResponse:
        return error_response(422, str(err), err.problems)

    @app.exception_handler(redis.ConnectionError)
    async def _redis_down(request: Request, err: redis.ConnectionError) -> JSONResponse:
        return error_response(503, "Redis is unreachable; retry later")
