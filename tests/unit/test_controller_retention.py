"""The controller's side of issue 14 items 4-5, in-process (`LocalRuntime`, real Redis, tiny models): a prompt
re-queued from a dead letter is dispatched again in the next iteration (and leaves the re-queue once that
iteration is recorded), and the streams keep only what the retention says: the newest recorded iteration's
prompts and generations, `storage.pairs_retention_iterations` iterations of pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparring.shared import history
from sparring.shared.prompts import iteration_prompt_indices, run_prompts
from sparring.shared.queue import StreamQueue
from sparring.shared.records import GenerationGroup, PreferencePair, PromptTask
from sparring.shared.store import RunStore
from tests.unit.test_controller_local import config, controller, models, pool  # noqa: F401 - fixtures


def test_requeued_prompt_is_dispatched_next_iteration_and_streams_are_pruned(
    models: dict[str, str], pool: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str  # noqa: F811
) -> None:
    cfg = config(tmp_path, models, pool)
    cfg = cfg.model_copy(update={
        "schedule": cfg.schedule.model_copy(update={"iterations": 3}),
        "eval": cfg.eval.model_copy(update={"enabled": False}),
        "storage": cfg.storage.model_copy(update={"pairs_retention_iterations": 1}),
    })  # fmt: skip
    train = run_prompts(cfg).train
    drawn = {train[int(i)].prompt_id for t in (1, 2) for i in iteration_prompt_indices(len(train), cfg, t)}
    extra = next(p.prompt_id for p in train if p.prompt_id not in drawn)
    run_dir = tmp_path / unique_run_id
    run_dir.mkdir()
    store = RunStore(redis_client)
    store.create_run(unique_run_id, cfg.model_dump(mode="json"), str(run_dir))
    store.requeue_prompts(unique_run_id, [extra, "no-such-prompt"])  # as POST .../dead-letters/requeue does
    queue = StreamQueue(redis_client, unique_run_id)
    seen: list[dict[str, Any]] = []
    ctl = controller(cfg, unique_run_id, redis_url, run_dir)
    run_iteration = ctl.run_iteration

    def observed(t: int) -> Any:
        record = run_iteration(t)
        seen.append({
            "requeue": store.requeued_prompts(unique_run_id),
            "prompt_iterations": {p.iteration for _, p in queue.read_all("prompts", PromptTask)},
            "group_iterations": {g.iteration for _, g in queue.read_all("generations", GenerationGroup)},
            "pair_iterations": {p.iteration for _, p in queue.read_all("pairs", PreferencePair)},
            "written": (queue.written("prompts"), queue.written("generations")),
            "bytes": sum(redis_client.memory_usage(k) or 0 for k in redis_client.scan_iter(match=f"run:{unique_run_id}:*")
                         if not k.endswith((b":events", b":iterations", b":kv"))),  # the work streams and seen-sets
        })  # fmt: skip
        return record

    ctl.run_iteration = observed
    ctl.run()
    records = store.iterations(unique_run_id)
    assert [r.iteration for r in records] == [1, 2, 3]
    # the re-queued prompt was dispatched in iteration 1 (the run's next) beside the 8 it drew, then forgotten
    assert [(r.num_prompts, r.num_groups) for r in records] == [(9, 9), (8, 8), (8, 8)]
    assert [s["requeue"] for s in seen] == [[], [], []]
    # retention: the newest recorded iteration's prompts and generations, one iteration of pairs
    assert [s["prompt_iterations"] for s in seen] == [{1}, {2}, {3}]
    assert [s["group_iterations"] for s in seen] == [{1}, {2}, {3}]
    assert [s["pair_iterations"] for s in seen] == [{1}, {2}, {3}]
    assert [s["written"] for s in seen] == [(9, 9), (8, 8), (8, 8)]
    # so Redis memory is flat: one iteration's streams and seen-sets, give or take the iterations' sizes (pairs
    # and answer lengths vary); kept whole, iteration 3 would hold about three times iteration 1's bytes
    sizes = [s["bytes"] for s in seen]
    print("work-stream bytes after each iteration:", sizes)  # noqa: T201
    assert max(sizes) <= 1.5 * min(sizes), sizes
    # the pruned pairs are in <run dir>/archived_pairs.jsonl: the joined read sees every pair of the run once, in order
    archive = run_dir / history.PAIRS_FILE
    assert {row["data"]["iteration"] for row in history.read_rows(archive)} == {1, 2}
    joined = queue.read_all("pairs", PreferencePair, archive=archive)
    assert [p.iteration for _, p in joined] == sorted(p.iteration for _, p in joined)
    assert len(joined) == len({p.record_id for _, p in joined}) == sum(r.num_pairs for r in records)
    assert [eid for eid, _ in queue.iter_records("pairs", PreferencePair, newest_first=True, archive=archive)] == [
        eid for eid, _ in reversed(joined)
    ]
