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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A chaos test repeats its failure CHAOS_REPETITIONS times in one test function, so its pytest-timeout
    (pyproject's `timeout`, sized for one repetition) is multiplied by that number; a test's own
    `@pytest.mark.timeout` stays as it is. (With 3 repetitions on a loaded 2-core box the poison test ran
    past the 900 s meant for one.)"""
    import os

    repetitions = int(os.environ.get("CHAOS_REPETITIONS", "1"))
    base = float(config.getini("timeout") or 0)
    if repetitions <= 1 or not base:
        return
    for item in items:
        if item.get_closest_marker("chaos") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(base * repetitions))
