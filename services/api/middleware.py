"""ASGI middleware of the API besides the token gate (services/auth.py): `BodyLimit` caps request bodies
(413), and `request_counter` counts every request by method, route template and status for /metrics."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import Counter

from sparring.services.settings import ServiceSettings


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over the cap with 413 (uploads have their own, larger cap)."""

    def __init__(self, app: Any, settings: ServiceSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_upload_bytes if scope["path"] == "/v1/pools" else self.settings.max_body_bytes
        what = "upload" if scope["path"] == "/v1/pools" else "request body"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_413(send, what, limit)
                return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_413(send, what, limit)


async def _send_413(send: Any, what: str, limit: int) -> None:
    body = json.dumps({"detail": f"{what} too large: the limit is {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


Dispatch = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def request_counter(requests_total: Counter) -> Dispatch:
    """An `@app.middleware("http")` function incrementing `requests_total{method, route, status}`."""

    async def count_requests(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        requests_total.labels(request.method, getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    return count_requests
