"""Chaos: a whole Ray node lost mid-iteration (issue 14 item 7), on the two-node local cluster of
tests/two_nodes.py (head `node_a`, worker `node_b`; real Ray, real Redis, the arena policy).

`test_worker_node_lost_mid_training_trainer_rescheduled`: generators and judges on `node_a`, the trainer pinned to
`node_b` (`resources.trainer.custom: {node_b: 1}`). While iteration 2 trains, the worker node is SIGKILLed as a
whole (its raylet, object store and the trainer's worker process: `TwoNodes.kill_worker`), then a new node with
`node_b` joins `REJOIN_AFTER_S` later (a replacement machine). The trainer's placement-group bundle is rescheduled
by Ray onto the new node once it registers, and `restart_trainer` starts the replacement trainer there from the
last checkpoint: the run completes every iteration with 0 prompts lost and 0 pairs trained twice, the restart in
the interrupted iteration's record and events. (Pinned to a resource only the lost node had, the replacement
cannot start anywhere else; until a node with it joins, `info` on the pending actor waits, and past
`resilience.stage_timeout_s.train` x `trainer_restarts` the run fails with `TrainerLost` naming the death.)

Prints one chaos-table row per call (docs/reliability.md); `make chaos` sets CHAOS_REPETITIONS=3.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import RunConfig
from sparring.shared.store import RunStore
from tests.chaos.test_trainer_kill import accounting, row
from tests.helpers import EventWatch, chaos_run_config
from tests.two_nodes import TwoNodes, node_of_actors, two_nodes  # noqa: F401 (fixture)

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

REPETITIONS = int(os.environ.get("CHAOS_REPETITIONS", "1"))
ITERATIONS = 2
KILL_ITERATION = 2
REJOIN_AFTER_S = 5.0


def node_loss_config(tmp_path: Path) -> RunConfig:
    return chaos_run_config(
        tmp_path, "node-loss", 24, generation={"prompts_per_request": 16},
        # several optimizer steps per iteration, so the kill lands while the trainer trains
        trainer={"epochs": 3, "batch_size": 4}, schedule={"iterations": ITERATIONS},
        storage={"weight_transport": "memory"},  # the default transport: weights cross the nodes in memory
        resilience={"restart_backoff_s": 1.0},
        resources={"generators": {"custom": {"node_a": 1}}, "judges": {"custom": {"node_a": 1}},
                   "trainer": {"custom": {"node_b": 1}}},
    )  # fmt: skip


def lose_node_mid_training(
    cluster: TwoNodes, store: RunStore, run_id: str, iteration: int, rejoin: bool = True
) -> dict[str, Any]:
    """In a thread: at `iteration`'s first optimizer step, SIGKILL the worker node (`killed_at`), then (with
    `rejoin`) start a new `node_b` node `REJOIN_AFTER_S` later (`rejoined_at`)."""
    out: dict[str, Any] = {}

    def on_event(kind: str, data: dict[str, Any]) -> bool:
        if (kind == "progress" and data.get("stage") == "train" and data.get("iteration") == iteration
                and str(data.get("message", "")).startswith("step")):  # fmt: skip
            out["killed_at"] = cluster.kill_worker()
            if rejoin:
                time.sleep(REJOIN_AFTER_S)
                cluster.start_worker()
                out["rejoined_at"] = time.time()
            return True
        return False

    out["thread"] = EventWatch(store, run_id).in_thread(on_event, 600)
    return out


def test_worker_node_lost_mid_training_trainer_rescheduled(
    two_nodes: TwoNodes, redis_url: str, redis_client: Any, tmp_path: Path  # noqa: F811
) -> None:
    import ray

    from sparring.tasks.arena.policy import build_arena_model
    from sparring.workers.controller import RunController

    model = str(build_arena_model(0))
    store = RunStore(redis_client)
    completed = lost = duplicates = 0
    recovery: list[float] = []
    for _ in range(REPETITIONS):
        cfg = node_loss_config(tmp_path)
        run_id = f"nodeloss-{time.time_ns()}"
        (tmp_path / run_id).mkdir()
        store.create_run(run_id, cfg.model_dump(mode="json"), str(tmp_path / run_id))
        controller = ray.remote(RunController).options(num_cpus=0, resources={"node_a": 0.01}).remote(
            run_id, cfg.model_dump_json(), redis_url, str(tmp_path / run_id), model
        )
        node_b_before = {n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_b" in n["Resources"]}
        loss = lose_node_mid_training(two_nodes, store, run_id, KILL_ITERATION)
        summary = ray.get(controller.run.remote(), timeout=900)
        loss["thread"].join(timeout=60)
        assert "killed_at" in loss and "rejoined_at" in loss, "the worker node was never lost and replaced"
        assert "interrupted" not in summary and store.get_run(run_id)["state"] == "completed"

        records = store.iterations(run_id)
        assert [r.iteration for r in records] == list(range(1, ITERATIONS + 1))
        assert [r.metrics["trainer/restarts"] >= 1 for r in records] == [r.iteration == KILL_ITERATION for r in records]
        restarted = [d for _, kind, d in store.events(run_id) if kind == "trainer_restarted"]
        died = [d for _, kind, d in store.events(run_id) if kind == "trainer_died"]
        assert restarted and died and died[0]["during"] == f"train of iteration {KILL_ITERATION}", died
        # the replacement trainer runs on the new node_b (a new node id), the generator never left node_a
        nodes = node_of_actors(run_id)
        assert {v for k, v in nodes.items() if ":gen-" in k} == {"node_a"}, nodes
        trainers = sorted((k for k in nodes if ":trainer:" in k), key=lambda k: int(k.rsplit(".", 1)[1]))
        assert len(trainers) >= 2 and nodes[trainers[-1]] == "node_b", nodes  # the replacement, on the new node
        node_b_after = {n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_b" in n["Resources"]}
        assert node_b_after and not node_b_after & node_b_before

        counts = accounting(redis_client, run_id)
        assert counts == {"iterations": ITERATIONS, "lost_prompts": 0, "duplicate_pairs": 0, "untrained_pairs": 0, "unacked_pairs": 0}
        completed += 1
        lost += counts["lost_prompts"]
        duplicates += counts["duplicate_pairs"]
        recovery.append(restarted[-1]["ts"] - loss["killed_at"])
    print("\n" + row(f"worker node lost mid-training, node_b back after {REJOIN_AFTER_S:g} s (trainer rescheduled)",  # noqa: T201
                     REPETITIONS, completed, lost, duplicates, recovery))  # fmt: skip


CAPACITY_WAIT_S = 10.0


def test_worker_node_lost_for_good_pauses_waiting_for_capacity_then_resumes(
    two_nodes: TwoNodes, redis_url: str, redis_client: Any, tmp_path: Path  # noqa: F811
) -> None:
    """The worker node dies and no node with `node_b` joins: the trainer's replacement cannot be placed, so
    after `resilience.capacity_wait_s` the run pauses with the reason (waiting for capacity, naming the missing
    resource) instead of waiting `stage_timeout_s.train` per restart. A node with `node_b` joins, the run is
    resumed from its last recorded iteration and completes with nothing lost or trained twice."""
    import ray

    from sparring.tasks.arena.policy import build_arena_model
    from sparring.workers.controller import RunController

    model = str(build_arena_model(0))
    store = RunStore(redis_client)
    base = node_loss_config(tmp_path)
    cfg = base.model_copy(update={"resilience": base.resilience.model_copy(update={"capacity_wait_s": CAPACITY_WAIT_S})})
    run_id = f"nodegone-{time.time_ns()}"
    (tmp_path / run_id).mkdir()
    store.create_run(run_id, cfg.model_dump(mode="json"), str(tmp_path / run_id))

    def controller() -> Any:
        return ray.remote(RunController).options(num_cpus=0, resources={"node_a": 0.01}).remote(
            run_id, cfg.model_dump_json(), redis_url, str(tmp_path / run_id), model
        )

    loss = lose_node_mid_training(two_nodes, store, run_id, KILL_ITERATION, rejoin=False)
    try:
        summary = ray.get(controller().run.remote(), timeout=900)
        loss["thread"].join(timeout=60)
        assert "killed_at" in loss, "the worker node was never lost"
        paused_after_s = time.time() - loss["killed_at"]
        run = store.get_run(run_id)
        assert summary.get("interrupted") == "paused" and run["state"] == "paused", (summary, run)
        assert run["reason"].startswith("waiting for capacity: the trainer's replacement cannot be placed")
        assert "node_b" in run["reason"] and f"capacity_wait_s={CAPACITY_WAIT_S:g}" in run["reason"], run["reason"]
        waits = [d for _, kind, d in store.events(run_id) if kind == "progress" and d.get("stage") == "capacity"]
        assert waits and "node_b" in waits[0]["message"]
        # the rule bounds it: the kill noticed, at most trainer_restarts restarts, each waiting capacity_wait_s
        assert paused_after_s < 120 + CAPACITY_WAIT_S * (cfg.resilience.trainer_restarts + 1), paused_after_s
        assert [r.iteration for r in store.iterations(run_id)] == list(range(1, KILL_ITERATION))
    finally:
        if two_nodes.worker is None:
            two_nodes.start_worker()  # the module's other tests need the worker node back

    store.transition(run_id, ("paused",), "created", reason="resumed by the chaos test")  # as POST .../resume
    ray.get(controller().run.remote(), timeout=900)
    assert store.get_run(run_id)["state"] == "completed"
    assert [r.iteration for r in store.iterations(run_id)] == list(range(1, ITERATIONS + 1))
    counts = accounting(redis_client, run_id)
    assert counts == {"iterations": ITERATIONS, "lost_prompts": 0, "duplicate_pairs": 0, "untrained_pairs": 0, "unacked_pairs": 0}
    print(f"\nworker node lost for good: paused after {paused_after_s:.1f} s (capacity_wait_s {CAPACITY_WAIT_S:g}), "  # noqa: T201
          f"resumed on a new node_b and completed")  # fmt: skip
