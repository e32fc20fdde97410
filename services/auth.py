"""Bearer-token authentication: full-access tokens and read-only tokens, compared in constant time.

Every /v1 route and /metrics depend on `require_read` or `require_write`; only /healthz and /readyz are
open. A missing or unknown token is 401, a read-only token on a write route is 403, each with a reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Literal

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


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status_code=401, detail=reason, headers={"WWW-Authenticate": 'Bearer realm="sparring"'})


def access_of(request: Request) -> Access:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    access = request.app.state.tokens.check(token.strip())
    if access is None:
        raise _unauthorized("invalid token")
    return access


def require_read(request: Request) -> Access:
    return access_of(request)


def require_write(request: Request) -> Access:
    access = access_of(request)
    if access != "write":
        raise HTTPException(status_code=403, detail="read-only token: this request changes state and needs a full-access token")
    return access
