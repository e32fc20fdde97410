"""Chaos: the run's redis-server SIGKILLed during generation and restarted on the same port and directory
3 s later (AOF on, appendfsync everysec), as an operator or a supervisor would (real local Ray, the arena
policy, real generator/judge/trainer actors, the controller as a Ray actor as `sparring run` starts it).

Every Redis client (controller, workers, this test's event reader, which stands in for the CLI's) rides out
the outage (`OutageRetry`, `resilience.redis_outage_s`); the consumer groups come back from the AOF and the
in-flight work is re-read from them. The run completes: 0 prompts lost (every dispatched prompt has its group),
0 duplicate pairs (deterministic record ids), and the run's state is `completed`, never stuck `running`.

Prints its row of the chaos table (docs/reliability.md); `make chaos` makes CHAOS_REPETITIONS=3 runs.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.queue import StreamQueue
from sparring.shared.records import PreferencePair
from sparring.shared.redis_server import PrivateRedis, connect
from sparring.shared.store import RunStore
from tests.helpers import EventWatch, chaos_run_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

REPETITIONS = int(os.environ.get("CHAOS_REPETITIONS", "1"))
ITERATIONS = 2
KILL_ITERATION = 2
PROMPTS = 32
DOWN_S = 3.0


def run_with_a_redis_kill(ray: Any, arena_model: str, tmp_path: Path) -> dict[str, Any]:
    from sparring.workers.controller import launch_controller

    cfg = chaos_run_config(
        tmp_path, "redis-chaos", PROMPTS, generation={"prompts_per_request": 2},
        schedule={"iterations": ITERATIONS}, resilience={"redis_outage_s": 60},
    )  # fmt: skip
    run_id = f"redis-chaos-{time.time_ns()}"
    run_dir = tmp_path / run_id
    data_dir = tmp_path / f"{run_id}-redis"
    server = PrivateRedis(data_dir).start()
    port, servers = server.port, [server]
    client = connect(server.url, outage_s=60)
    try:
        store = RunStore(client)
        store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
        run_dir.mkdir()
        done = launch_controller(run_id, cfg, server.url, str(run_dir), arena_model).run.remote()
        # the CLI's event reader: wait for the kill iteration's generation to be under way
        watch, progress = EventWatch(store, run_id), {"done": -1}

        def under_way(kind: str, data: dict[str, Any]) -> bool:
            if kind == "progress" and data.get("stage") == "generate" and data.get("iteration") == KILL_ITERATION:
                progress["done"] = data["done"]
            return progress["done"] >= 2

        assert watch.until(under_way, 600), "generation of the kill iteration never started"
        generated = progress["done"]
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert generated < PROMPTS, "the iteration finished before the kill; make it longer"
        time.sleep(DOWN_S)
        servers.append(PrivateRedis(data_dir, port=port).start())
        restarted = time.monotonic()
        recovery = None

        def moving(kind: str, _data: dict[str, Any]) -> bool:  # the first progress after the restart
            nonlocal recovery
            if recovery is None and kind == "progress":
                recovery = time.monotonic() - killed
            return False

        watch.until(moving, 3600, on_poll=lambda: bool(ray.wait([done], timeout=0.2)[0]), poll_s=0)
        ray.get(done)
        queue = StreamQueue(client, run_id)
        records = store.iterations(run_id)
        pairs = Counter(p.record_id for _, p in queue.read_all("pairs", PreferencePair))
        return {
            "state": store.get_run(run_id)["state"],
            "iterations": [r.iteration for r in records],
            "lost_prompts": sum(r.num_prompts - r.num_groups for r in records),
            "dead": sum(r.num_dead for r in records),
            "duplicate_pairs": sum(n - 1 for n in pairs.values()),
            "pairs_trained": sum(r.num_pairs for r in records),
            "pairs_written": len(pairs),
            "killed_after": generated,
            "down_s": restarted - killed,
            "recovery_s": recovery,
        }
    finally:
        client.close()
        for s in servers:
            s.stop()


def test_redis_sigkilled_mid_generation_and_restarted_loses_nothing(ray_local: Any, arena_model: str, tmp_path: Path) -> None:
    results = [run_with_a_redis_kill(ray_local, arena_model, tmp_path) for _ in range(REPETITIONS)]
    for r in results:
        assert r["state"] == "completed", r
        assert r["iterations"] == list(range(1, ITERATIONS + 1)), r
        assert (r["lost_prompts"], r["dead"], r["duplicate_pairs"]) == (0, 0, 0), r
        assert r["pairs_trained"] == r["pairs_written"] > 0, r
        assert r["down_s"] >= DOWN_S and r["recovery_s"] is not None, r
    recovery = [r["recovery_s"] for r in results]
    print(f"\n| Redis SIGKILL mid-generation, restarted after {DOWN_S:.0f} s (AOF everysec) | {REPETITIONS} | "  # noqa: T201
          f"{len(results)} | 0 | 0 | {min(recovery):.1f}-{max(recovery):.1f} |")  # fmt: skip
