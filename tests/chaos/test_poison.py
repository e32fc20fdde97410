"""Chaos: a poison prompt, one whose processing kills the generator process (os._exit) every time it is in the
batch being generated, in a real run (local Ray, real Redis, the arena policy, real generator actors).

The generator's drain reads each entry's delivery count from Redis (XPENDING), so a death counts although no
Python exception is ever raised: the replacement gets its predecessor's pending entries back one at a time
(the poison's batch is split), the poison is dead-lettered alone once delivered `resilience.max_deliveries`
(3) times, the 15 other prompts of its batch are generated, judged and trained, and the run completes within
the controller's respawn budget (`resilience.worker_respawns_per_iteration`, default 8, set by config only).

Prints its row of the chaos table (docs/reliability.md); `make chaos` makes CHAOS_REPETITIONS=3 runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.prompts import iteration_prompt_indices, run_prompts
from sparring.shared.queue import StreamQueue
from sparring.shared.records import PreferencePair
from sparring.shared.store import RunStore
from tests.helpers import chaos_run_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

REPETITIONS = int(os.environ.get("CHAOS_REPETITIONS", "1"))
PROMPTS = 16


def poisoned_generator(poison_prompt_id: str) -> type:
    """GeneratorWorker whose process exits (no exception, no cleanup) whenever the poison is in its batch.
    Defined in a function, so Ray pickles it by value into the actor processes."""
    from sparring.workers.actors import GeneratorWorker

    class PoisonedGenerator(GeneratorWorker):
        def _process(self, entries: list[Any]) -> None:
            if any(e.record.prompt_id == poison_prompt_id for e in entries):
                os._exit(17)
            super()._process(entries)

    return PoisonedGenerator


def test_poison_prompt_is_dead_lettered_alone_and_the_run_completes(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sparring.workers.controller as controller_module
    from sparring.workers.controller import RunController
    from sparring.workers.groups import RayRuntime

    cfg = chaos_run_config(
        tmp_path, "poison", PROMPTS, resilience={"max_deliveries": 3, "worker_respawns_per_iteration": 8}
    )
    pool = run_prompts(cfg).train
    drawn = [pool[int(i)].prompt_id for i in iteration_prompt_indices(len(pool), cfg, 1)]
    poison = drawn[len(drawn) // 2]  # in the middle of the one batch of 16
    monkeypatch.setattr(controller_module, "GeneratorWorker", poisoned_generator(poison))
    store = RunStore(redis_client)
    rows = []
    for _ in range(REPETITIONS):
        run_id = f"poison-{time.time_ns()}"
        run_dir = tmp_path / run_id
        run_dir.mkdir()
        store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
        t0 = time.monotonic()
        summary = RunController(run_id, cfg.model_dump_json(), redis_url, str(run_dir), arena_model, RayRuntime()).run()
        seconds = time.monotonic() - t0
        assert store.get_run(run_id)["state"] == "completed" and "interrupted" not in summary
        (record,) = store.iterations(run_id)
        queue = StreamQueue(redis_client, run_id)
        (letter,) = queue.dead_letters()
        assert (letter.stage, letter.item_id) == ("generate", f"{poison}@v0")
        assert letter.attempts <= 3 and "max_deliveries 3" in letter.reason
        died = [d for _, kind, d in store.events(run_id) if kind == "worker_died"]
        assert len(died) == letter.attempts == 3  # one death per delivery, none after the dead letter
        # the rest of its batch: generated, judged and trained
        assert (record.num_prompts, record.num_groups, record.num_dead) == (PROMPTS, PROMPTS - 1, 1)
        pairs = queue.read_all("pairs", PreferencePair)
        assert record.num_pairs == len(pairs) > 0 and poison not in {p.prompt_id for _, p in pairs}
        assert len({p.record_id for _, p in pairs}) == len(pairs)
        rows.append(seconds)
        queue.delete_run()
    print(f"\n| poison prompt (os._exit every delivery) | {REPETITIONS} | {len(rows)} | 0 | 0 | "  # noqa: T201
          f"{min(rows):.1f}-{max(rows):.1f} (whole run) |")  # fmt: skip
