"""The asynchronous pipeline (`schedule.mode: async`, workers/pipeline.py).

- `select_pairs`, the trainer's version rules, on hand-made pairs: what is trained, left pending, dropped and why;
- one in-process run (`LocalRuntime`, the transformers backend, real Redis, the tiny models of
  test_controller_local.py), 4 iterations of 4 prompts at max_staleness 1: paused after iteration 1 with batch
  2 generated and judged but not trained, resumed by a new controller (batch 2 trained, not regenerated), a
  pair past the bound planted for iteration 3 (dropped and counted, never trained), a generator killed while
  batch 3 generates. Every pair's answers come from one version (0 violations), every trained pair is within
  the bound, the overlapped batches lag exactly 1, nothing is trained twice or left unacknowledged.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sparring.shared import history
from sparring.shared.config import parse_config
from sparring.shared.queue import StreamQueue
from sparring.shared.records import Completion, GenerationGroup, PreferencePair
from sparring.shared.store import RunStore
from sparring.workers.actors import TRAINER_GROUP
from sparring.workers.staleness import select_pairs, selection_metrics
from tests.unit.test_controller_local import config, controller, models, pool  # noqa: F401 - fixtures


def pair(iteration: int, version: int, chosen_v: int | None = None, name: str = "p") -> PreferencePair:
    def answer(i: int, v: int | None) -> Completion:
        return Completion(index=i, text=f"a{i}", token_ids=[i + 1], logprobs=[-0.5], policy_version=v)

    return PreferencePair(
        run_id="r", iteration=iteration, policy_version=version, prompt_id=f"{name}{iteration}.{version}",
        prompt="q", prompt_token_ids=[1], chosen=answer(0, version if chosen_v is None else chosen_v),
        rejected=answer(1, version), chosen_score=1.0, rejected_score=0.0, win_prob=0.9, judge="j",
    )  # fmt: skip


def test_select_pairs_rules() -> None:
    items = [pair(5, 4), pair(5, 3), pair(5, 2), pair(6, 4), pair(4, 3), pair(5, 4, chosen_v=3), pair(5, 5)]
    # async, training iteration 5 on version 4, bound 1
    sel = select_pairs(items, lambda p: p, iteration=5, version=4, max_staleness=1, online=True)
    assert [(p.iteration, p.policy_version) for p in sel.train] == [(5, 4), (5, 3)] and sel.lags == [0, 1]
    assert [(p.iteration, p.policy_version) for p in sel.later] == [(6, 4)]
    assert {r: len(ps) for r, ps in sel.dropped.items()} == {"over_bound": 1, "earlier_iteration": 1, "version_violation": 2}
    m = selection_metrics(sel)
    assert m["staleness/mean"] == 0.5 and m["staleness/max"] == 1.0 and m["staleness/lag_0"] == m["staleness/lag_1"] == 1
    assert m["pairs/stale_dropped/over_bound"] == 1 and m["version/violations_train"] == 2
    assert m["pairs/stale_dropped/other_version"] == 0
    # a larger bound trains the lag-2 pair too
    assert len(select_pairs(items, lambda p: p, 5, 4, 2, True).train) == 3
    # sync: only version 4, whatever the iteration; nothing is left pending
    sync = select_pairs(items, lambda p: p, 5, 4, 0, False)
    assert [p.policy_version for p in sync.train] == [4, 4] and not sync.later
    assert {r: len(ps) for r, ps in sync.dropped.items()} == {"other_version": 3, "version_violation": 2}
    assert pair(1, 2, chosen_v=1).version_violation and not pair(1, 2).version_violation


def async_config(tmp_path: Path, models: dict[str, str], pool: str) -> Any:  # noqa: F811
    base = config(tmp_path, models, pool).model_dump(mode="json", exclude_none=True)
    # disjoint batches: random draws could repeat a prompt in batches dispatched at one version (sampled once)
    base["schedule"] = {"iterations": 4, "prompts_per_iteration": 4, "mode": "async", "max_staleness": 1,
                        "prompt_schedule": "disjoint"}  # fmt: skip
    base["eval"] = {"num_prompts": 4, "kl": False, "every": 3}  # iterations 3 and 4 (the last) are evaluated
    return parse_config(base)


def test_async_config_rules(tmp_path: Path, models: dict[str, str], pool: str) -> None:  # noqa: F811
    base = async_config(tmp_path, models, pool).model_dump(mode="json", exclude_none=True)
    with pytest.raises(ValueError, match="max_staleness >= 1"):
        parse_config({**base, "schedule": {"mode": "async", "max_staleness": 0}})
    with pytest.raises(ValueError, match="cannot use prompt_schedule full"):
        parse_config({**base, "schedule": {**base["schedule"], "prompt_schedule": "full"}})
    # two batches (the trained one and the one generated meanwhile) must fit the streams
    with pytest.raises(ValueError, match="max_staleness \\+ 1 = 2 batches are in flight"):
        parse_config({**base, "schedule": {**base["schedule"], "prompts_per_iteration": 60},
                      "storage": {**base["storage"], "stream_maxlen": 100}})  # fmt: skip
    sync = {**base["schedule"], "prompts_per_iteration": 60, "mode": "sync", "max_staleness": 0}
    assert parse_config({**base, "schedule": sync, "storage": {**base["storage"], "stream_maxlen": 100}})


def test_async_run_versions_bound_resume_and_a_killed_generator(
    models: dict[str, str], pool: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str  # noqa: F811
) -> None:
    cfg = async_config(tmp_path, models, pool)
    run_dir = tmp_path / unique_run_id
    run_dir.mkdir()
    store = RunStore(redis_client)
    store.create_run(unique_run_id, cfg.model_dump(mode="json"), str(run_dir))
    queue = StreamQueue(redis_client, unique_run_id)

    # 1. iteration 1 recorded, then a pause: batch 2 (version 0) is judged and waits, untrained
    first = controller(cfg, unique_run_id, redis_url, run_dir)
    record_iteration = first.record_iteration

    def then_pause(record: Any) -> None:
        record_iteration(record)
        store.request_control(unique_run_id, "pause")

    first.record_iteration = then_pause
    assert first.run()["interrupted"] == "paused"
    assert [r.iteration for r in store.iterations(unique_run_id)] == [1]
    waiting = [p for _, p in queue.read_all("pairs", PreferencePair) if p.iteration == 2]
    assert waiting and {p.policy_version for p in waiting} == {0}
    assert queue.pending_count("pairs", TRAINER_GROUP) + queue.lag("pairs", TRAINER_GROUP) == len(waiting)

    # 2. a pair of batch 3 from version 0: trained at version 2 it would lag 2 > max_staleness 1
    planted = waiting[0].model_copy(update={"iteration": 3, "prompt_id": "planted"})
    assert queue.put("pairs", planted) is not None

    # 3. resumed by a new controller; gen-0 is killed while batch 3 generates
    store.set_state(unique_run_id, "created")
    second = controller(cfg, unique_run_id, redis_url, run_dir)
    killed: list[str] = []

    def kill_gen0() -> None:
        deadline = time.monotonic() + 300
        while queue.written("generations") < 9 and time.monotonic() < deadline:  # batches 1, 2 + 1 group of 3
            time.sleep(0.01)
        second.runtime.kill(second.groups["generators"].workers["gen-0"])
        killed.append("gen-0")

    killer = threading.Thread(target=kill_gen0, daemon=True)
    killer.start()
    summary = second.run()
    killer.join(timeout=5)
    assert killed == ["gen-0"] and "interrupted" not in summary
    assert store.get_run(unique_run_id)["state"] == "completed"

    records = store.iterations(unique_run_id)
    assert [r.iteration for r in records] == [1, 2, 3, 4] and [r.policy_version_out for r in records] == [1, 2, 3, 4]
    assert sum(r.metrics["workers/restarts"] for r in records) >= 1
    for r in records:
        assert r.metrics["version/violations"] == 0 and r.metrics["judge/version_violations"] == 0
        assert r.metrics["staleness/max"] <= cfg.schedule.max_staleness
        assert r.num_groups == 4 and r.num_prompts == 4  # batch 2 counted once, by its first attempt, not regenerated
        assert r.eval.get("eval/num_prompts") == (4 if r.iteration >= 3 else None)  # eval.every 3, and the last
        # the timeline: the next batch's generation (none after the last) overlaps this iteration's training
        spans = r.stage_spans
        assert ("generate_judge" in spans) == (r.iteration < 4)
        if r.iteration < 4:
            assert spans["generate_judge"][0] < spans["train"][1] and spans["train"][0] < spans["generate_judge"][1]
        assert max(spans["train"][1], spans.get("generate_judge", [0, 0])[1]) <= spans["sync"][0] <= spans["sync"][1] <= spans["eval"][0]
    # vs_prev compares with the last version evaluated: iteration 3's is version 0 (the first evaluated)
    assert records[2].eval["eval/win_rate_vs_prev"] == records[2].eval["eval/win_rate_vs_iter0"]
    # batch 1 was trained by the version that sampled it; every later batch was sampled while the previous one
    # trained, so it lags exactly 1
    assert records[0].metrics["staleness/max"] == 0
    for r in records[1:]:
        assert r.metrics["staleness/lag_1"] == r.num_pairs and r.metrics["staleness/mean"] == 1.0
    assert [r.metrics["pairs/stale_dropped/over_bound"] for r in records] == [0, 0, 1, 0]
    assert records[2].metrics["pairs/stale_dropped"] == 1
    dropped = [d for d in queue.dead_letters() if d.stage == "train"]
    assert len(dropped) == 1 and dropped[0].item_id == planted.record_id and dropped[0].reason.startswith("over_bound")

    # every pair's answers come from its own version; each pair trained once, and all are acknowledged (the
    # pairs of iterations before the retention's 2 left Redis for the run's archive)
    pairs = [p for _, p in queue.read_all("pairs", PreferencePair, archive=run_dir / history.PAIRS_FILE)]
    assert all({p.chosen.policy_version, p.rejected.policy_version} == {p.policy_version} for p in pairs if p.prompt_id != "planted")
    by_iteration = {r.iteration: r for r in records}
    trained = [p for p in pairs if p.prompt_id != "planted"]
    assert all(0 <= by_iteration[p.iteration].policy_version_in - p.policy_version <= 1 for p in trained)
    assert sum(r.num_pairs for r in records) == len(trained)
    assert queue.outstanding("pairs", TRAINER_GROUP) == 0
    groups = [g for _, g in queue.read_all("generations", GenerationGroup)]
    assert all({c.policy_version for c in g.completions} == {g.policy_version} for g in groups)


def test_a_producer_ten_times_faster_than_its_consumer_waits_and_nothing_is_trimmed_unread(
    redis_client: Any, unique_run_id: str
) -> None:
    """Backpressure as the workers use it (`wait_for_room` before every write): 250 records written as fast as
    Redis takes them into a stream of maxlen 100 whose consumer handles one entry per 20 ms (at least 10x
    slower than the producer, measured). The consumer's outstanding work never passes maxlen,
    the stream (trimmed `MAXLEN ~`) stays within one macro node (100 entries) of it, and the consumer reads
    every record, in order: 0 trimmed unread."""
    from sparring.shared.records import PromptTask

    queue = StreamQueue(redis_client, unique_run_id, maxlen=100)
    queue.ensure_group("prompts", "g")
    total, peak, per_entry_s = 250, {"outstanding": 0, "length": 0}, 0.02
    produced_at: list[float] = []

    def task(i: int) -> PromptTask:
        return PromptTask(run_id=unique_run_id, iteration=1, policy_version=0, prompt_id=f"p{i:04d}", prompt="q",
                          num_samples=2, seed=i)  # fmt: skip

    def produce() -> None:
        for i in range(total):
            queue.wait_for_room("prompts", "g", timeout_s=60, poll_s=0.005)
            assert queue.put("prompts", task(i)) is not None
            produced_at.append(time.perf_counter())

    seen: list[str] = []
    t0 = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    while len(seen) < total:
        for entry in queue.read("prompts", "g", "c", PromptTask, 10, 100):
            time.sleep(per_entry_s)
            seen.append(entry.record.prompt_id)
            queue.complete("prompts", "g", entry.entry_id, None, [])
        peak["outstanding"] = max(peak["outstanding"], queue.outstanding("prompts", "g"))
        peak["length"] = max(peak["length"], queue.length("prompts"))
    producer.join()
    consumer_s = time.perf_counter() - t0
    assert seen == [f"p{i:04d}" for i in range(total)]  # every record read, in order: nothing trimmed unread
    assert peak["outstanding"] <= 100 and peak["length"] <= 200
    # the first 100 writes needed no room: the producer's own speed, at least 10x the consumer's
    assert (produced_at[99] - t0) / 100 * 10 <= consumer_s / total
    # after that it waited for the consumer: it wrote its last record when the consumer had ~100 left, not 10x early
    assert produced_at[-1] - t0 > 0.8 * (consumer_s - 100 * per_entry_s)
