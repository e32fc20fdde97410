"""Fixtures of the chaos suite: the arena policy (built once, cached) and a local Ray per test module, so a
module's kills never reach another's actors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def arena_model() -> str:
    from sparring.tasks.arena.policy import build_arena_model

    return str(build_arena_model(0))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    import ray

    from sparring.services.launch import init_ray

    init_ray()
    yield ray
    ray.shutdown()
