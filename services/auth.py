"""Bearer-token authentication: full-access tokens and read-only tokens, compared in constant time.

`TokenGate` (ASGI middleware) refuses every request to /v1/* and /metrics without a valid token with 401,
and every non-GET request with a read-only token with 403, before anything else looks at it (no body is
read, no parameter validated); /healthz, /readyz, the OpenAPI schema and the dashboard's static shell are
open. Routes also declare `require_read` / `require_write` (the same rules, checked again). Each refusal
says why.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import HTTPException, Request

Access = Literal["write", "read"]


class TokenTable:
    """The configured tokens. `check` compares against every token of both kinds, whatever matches."""

    def __init__(self, write: Iterable[str], read: Iterable[str]) -> None:
        self._tokens = [(t.encode(), "write") for t in write if t] + [(t.encode(), "read") for t in read if t]
        if not self._tokens:
            raise ValueError("no API tokens configured (SPARRING_API_TOKENS / SPARRING_READONLY_TOKENS)")

    def check(self, presented: str) -> Access | None:
        """The access `presented` grants, or None. Constant time in the token's content."""
        candidate = presented.encode()
        found: Access | None = None
        for token, access in self._tokens:  # no early exit: timing does not depend on which token matched
            if hmac.compare_digest(candidate, token) and found is None:
                found = access  # type: ignore[assignment]
        return found


PROTECTED_PREFIXES = ("/v1/", "/metrics")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sparring"'}


def check_header(tokens: TokenTable, header: str | None) -> tuple[Access | None, str]:
    """(access, "") for a valid `Authorization` header, else (None, why not)."""
    if not header:
        return None, "missing Authorization header: send 'Authorization: Bearer <token>'"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, "malformed Authorization header: expected 'Bearer <token>'"
    access = tokens.check(token.strip())
    return (access, "") if access is not None else (None, "invalid token")


READ_METHODS = ("GET", "HEAD", "OPTIONS")
READ_ONLY = "read-only token: this request changes state and needs a full-access token"


async def _refuse(send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


class TokenGate:
    """401 for any protected path without a valid token, before routing, parsing or body reads."""

    def __init__(self, app: Any, tokens: TokenTable) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES):
            headers = dict(scope.get("headers", []))
            raw = headers.get(b"authorization")
            access, why = check_header(self.tokens, raw.decode("latin-1") if raw is not None else None)
            if access is None:
                await _refuse(send, 401, why, [(b"www-authenticate", CHALLENGE["WWW-Authenticate"].encode())])
                return
            if access == "read" and scope["method"] not in READ_METHODS:
                await _refuse(send, 403, READ_ONLY)
                return
            scope.setdefault("state", {})["access"] = access
        await self.app(scope, receive, send)


def access_of(request: Request) -> Access:
    access, why = check_header(request.app.state.tokens, request.headers.get("authorization"))
    if access is None:  # only reachable for a route outside PROTECTED_PREFIXES that asks for a token
        raise HTTPException(status_code=401, detail=why, headers=CHALLENGE)
    return access


def require_read(request: Request) -> Access:
    return access_of(request)


def require_write(request: Request) -> Access:
    access = access_of(request)
    if access != "write":
        raise HTTPException(status_code=403, detail=READ_ONLY)
    return access
