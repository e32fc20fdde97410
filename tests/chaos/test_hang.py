"""Chaos: a hang, a generator that blocks for ever (a sleep that never returns, no exception) whenever one prompt is
in its batch, in a real run (local Ray, real Redis, the arena policy, real generator actors).

The stuck generator stops beating; after `resilience.heartbeat_timeout_s` the controller has the actor's
process dump its Python stacks (faulthandler on SIGUSR1) into the run's log (`controller.log`) and a
`worker_hung` event, kills it and starts a replacement under the respawn budget. The replacement gets the
prompt back alone (a redelivery, `max_deliveries` counted by Redis), blocks again, and once delivered
`max_deliveries` times the prompt is dead-lettered; the rest of the batch is generated, judged and trained and
the run completes. Short settings (a 6 s heartbeat timeout, 2 deliveries) keep the default run near a minute.

Prints its row of the chaos table (docs/reliability.md); `make chaos` makes CHAOS_REPETITIONS=3 runs.
"""

from __future__ import annotations

import os
import re
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
PROMPTS = 8
HEARTBEAT_TIMEOUT_S = 6.0
MAX_DELIVERIES = 2


def hanging_generator(stuck_prompt_id: str) -> type:
    """GeneratorWorker that sleeps for ever (in `hang_forever`) whenever the stuck prompt is in its batch.
    Defined in a function, so Ray pickles it by value into the actor processes."""
    from sparring.workers.actors import GeneratorWorker

    class HangingGenerator(GeneratorWorker):
        def _process(self, entries: list[Any]) -> None:
            if any(e.record.prompt_id == stuck_prompt_id for e in entries):
                self.hang_forever()
            super()._process(entries)

        def hang_forever(self) -> None:
            while True:
                time.sleep(3600)

    return HangingGenerator


def test_a_hung_generator_is_killed_after_the_heartbeat_timeout_with_its_stacks_logged(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sparring.workers.controller as controller_module
    from sparring.workers.controller import RunController
    from sparring.workers.groups import RayRuntime

    cfg = chaos_run_config(
        tmp_path, "hang", PROMPTS,
        resilience={"max_deliveries": MAX_DELIVERIES, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S},
    )  # fmt: skip
    pool = run_prompts(cfg).train
    drawn = [pool[int(i)].prompt_id for i in iteration_prompt_indices(len(pool), cfg, 1)]
    stuck = drawn[len(drawn) // 2]  # in the middle of the one batch of 8
    monkeypatch.setattr(controller_module, "GeneratorWorker", hanging_generator(stuck))
    store = RunStore(redis_client)
    rows, detected = [], []
    for _ in range(REPETITIONS):
        run_id = f"hang-{time.time_ns()}"
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
        assert (letter.stage, letter.item_id, letter.attempts) == ("generate", f"{stuck}@v0", MAX_DELIVERIES)
        hung = [d for _, kind, d in store.events(run_id) if kind == "worker_hung"]
        assert len(hung) == MAX_DELIVERIES and {(d["role"], d["consumer"]) for d in hung} == {("generators", "gen-0")}
        for d in hung:
            quiet = float(re.match(r"no heartbeat for (\d+) s", d["reason"]).group(1))  # type: ignore[union-attr]
            assert HEARTBEAT_TIMEOUT_S <= quiet < HEARTBEAT_TIMEOUT_S + 10
            detected.append(quiet)
            # the actor process's own stacks, dumped by faulthandler: the sleeping frame and how it got there
            assert "in hang_forever" in d["stacks"] and "in _process" in d["stacks"] and "in drain" in d["stacks"]
        log_text = (run_dir / "controller.log").read_text()
        assert log_text.count("generators gen-0 is stuck: no heartbeat") == MAX_DELIVERIES
        assert "in hang_forever" in log_text
        # the rest of its batch: generated, judged and trained; nothing lost, nothing twice
        assert (record.num_prompts, record.num_groups, record.num_dead) == (PROMPTS, PROMPTS - 1, 1)
        assert record.metrics["workers/restarts"] == MAX_DELIVERIES
        pairs = queue.read_all("pairs", PreferencePair)
        assert record.num_pairs == len(pairs) > 0 and stuck not in {p.prompt_id for _, p in pairs}
        assert len({p.record_id for _, p in pairs}) == len(pairs)
        assert record.metrics["memory/rss_mb/gen-0"] > 100 and record.metrics["memory/redis_used_mb"] > 0
        assert "memory/object_store_mb" in record.metrics
        rows.append(seconds)
        queue.delete_run()
    print(f"\n| generator hung (sleeps for ever on one prompt), killed after heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S:g} | "  # noqa: T201
          f"{REPETITIONS} | {len(rows)} | 0 | 0 | detected after {min(detected):.0f}-{max(detected):.0f} "
          f"({min(rows):.1f}-{max(rows):.1f} whole run) |")  # fmt: skip
