"""Shared pytest fixtures: one Redis for the whole test session.

`redis_url` is env `REDIS_URL` when set, else a private `redis-server` (via `PrivateRedis`) in a session
tmp dir, shut down at the end. `redis_client` is a bytes-returning client to it. Tests sharing one Redis
must use unique run ids (`unique_run_id`) and never FLUSHALL: REDIS_URL may point at a shared server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from sparring.shared.redis_server import REDIS_URL_ENV, PrivateRedis, connect


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        yield url
        return
    with PrivateRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def unique_run_id(request: pytest.FixtureRequest) -> str:
    """A run id no other test uses: `test-<test name>-<random>`."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"test-{name}-{uuid.uuid4().hex[:8]}"
