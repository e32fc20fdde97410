"""The judge pool on real Redis: per-group isolation, timeouts to the dead-letter stream, cache, position bias,
latency metrics, and the uncertainty filter dropping pairs in the worker."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import pytest
import redis
import torch

from sparring.shared.config import RunConfig
from sparring.shared.queue import StreamQueue
from sparring.shared.records import Completion, GenerationGroup, Judgement, PreferencePair
from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.oracle import ArenaOracleJudge
from sparring.workers.actors import JUDGES_GROUP, JudgeWorker
from sparring.workers.judges.pool import GroupFailure, JudgePool
from sparring.workers.judges.uncertainty import UncertaintyJudge

pytestmark = pytest.mark.integration


def arena_group(n: int, k: int = 4, run_id: str = "t", seed: int = 0) -> GenerationGroup:
    p = arena.arena_prompts("heldout")[n]
    rng = random.Random(f"{seed}-{n}")
    texts = [arena.corpus_response(p.topic, rng) for _ in range(k)]
    comps = [
        Completion(index=i, text=t, token_ids=[1 + (ord(ch) % 50) for ch in t] + [i], logprobs=None,
                   finish_reason="stop")
        for i, t in enumerate(texts)
    ]  # fmt: skip
    return GenerationGroup(
        run_id=run_id, iteration=1, policy_version=0, prompt_id=p.prompt_id, prompt=p.prompt, prompt_token_ids=[1, 2],
        completions=comps, engine_id="test", seed=n, latency_s=0.0,
    )  # fmt: skip


def config_json(timeout_s: float = 30.0) -> str:
    cfg = RunConfig.model_validate(
        {"policy": {"path": "arena"}, "prompts": {"source": "arena"}, "judge": {"kind": "arena_oracle", "timeout_s": timeout_s},
         "algorithm": {"pairs": "best_vs_worst"}}  # fmt: skip
    )
    return cfg.model_dump_json()


class RaisingJudge(ArenaOracleJudge):
    """The oracle, except that it raises on any batch holding the group of prompt `bad`."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.calls: list[int] = []

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        self.calls.append(len(groups))
        if any(g.prompt_id == self.bad for g in groups):
            raise RuntimeError(f"cannot judge {self.bad}")
        return super().judge(groups)


class SleepyJudge(ArenaOracleJudge):
    """The oracle, but it sleeps `seconds` on any batch holding a group whose prompt id is in `slow`."""

    def __init__(self, slow: set[str], seconds: float) -> None:
        self.slow, self.seconds = slow, seconds

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        if any(g.prompt_id in self.slow for g in groups):
            time.sleep(self.seconds)
        return super().judge(groups)


def _put(queue: StreamQueue, groups: Sequence[GenerationGroup]) -> None:
    queue.ensure_group("generations", JUDGES_GROUP)
    for g in groups:
        assert queue.put("generations", g) is not None


# --------------------------------------------------------------------------------------------------
# failures


def test_group_that_raises_is_dead_lettered_alone(redis_url: str, redis_client: redis.Redis, unique_run_id: str) -> None:
    groups = [arena_group(i, run_id=unique_run_id) for i in range(6)]
    bad = groups[3].prompt_id
    judge = RaisingJudge(bad)
    worker = JudgeWorker(unique_run_id, redis_url, config_json(), "judge-0", judge=judge)
    _put(worker.queue, groups)
    out = worker.drain(idle_rounds=2)

    dead = worker.queue.dead_letters()
    assert [d.item_id for d in dead] == [groups[3].record_id]
    assert dead[0].stage == "judge" and dead[0].reason == f"RuntimeError: cannot judge {bad}" and dead[0].attempts == 3
    pairs = [p for _, p in worker.queue.read_all("pairs", PreferencePair)]
    assert {p.prompt_id for p in pairs} == {g.prompt_id for g in groups} - {bad}
    for p in pairs:  # the judge's verdict, not a fallback: chosen has the higher gold score
        topic = arena.topic_of(p.prompt)
        assert arena.gold_score(topic, p.chosen.text) > arena.gold_score(topic, p.rejected.text)
    assert worker.queue.outstanding("generations", JUDGES_GROUP) == 0
    assert out["pairs"] == len(pairs) and out["judge/failed_groups"] == 3.0  # 3 deliveries of the bad group
    assert out["judge/latency_s_mean"] > 0 and out["judge/calls"] >= 1 + 6 + 2
    assert judge.calls[:2] == [6, 1]  # the batch, then group by group


def test_judge_that_outlives_the_timeout_is_dead_lettered(
    redis_url: str, redis_client: redis.Redis, unique_run_id: str
) -> None:
    slow = [arena_group(i, run_id=unique_run_id) for i in range(3)]
    judge = SleepyJudge({g.prompt_id for g in slow}, seconds=1.5)
    worker = JudgeWorker(unique_run_id, redis_url, config_json(timeout_s=0.25), "judge-0", judge=judge)
    _put(worker.queue, slow)
    t0 = time.perf_counter()
    out = worker.drain(idle_rounds=2)
    elapsed = time.perf_counter() - t0
    dead = worker.queue.dead_letters()
    assert sorted(d.item_id for d in dead) == sorted(g.record_id for g in slow)
    assert all(d.reason.startswith("timeout after 0.25s") and d.attempts == 3 for d in dead)
    # the first delivery judges the 3 groups in one call; a batch that failed comes back one entry at a time
    # (poison isolation, shared/queue.py), so deliveries 2 and 3 are 3 calls each: 7 timed-out calls
    assert out["judge/timeouts"] == 7.0 and out["pairs"] == 0
    assert elapsed < 3.5  # seven 0.25 s waits (1.75 s), not seven 1.5 s sleeps (10.5 s)
    # the run continues: a later group is judged once the abandoned call has finished
    time.sleep(1.0)
    ok = arena_group(10, run_id=unique_run_id)
    _put(worker.queue, [ok])
    out = worker.drain(idle_rounds=2)
    assert out["pairs"] == 1 and out["judge/timeouts"] == 0.0
    assert worker.queue.outstanding("generations", JUDGES_GROUP) == 0


def test_a_drain_ends_once_nothing_more_can_come_but_waits_while_prompts_are_open(
    redis_url: str, redis_client: redis.Redis, unique_run_id: str
) -> None:
    """The end of an iteration's stage: with every prompt generated and every group judged, a drain returns at
    its first empty read instead of waiting out `idle_rounds` reads of up to 100 ms each (40 here: 4 s);
    while a prompt is still open at a generator, more groups can come and it keeps waiting."""
    from sparring.shared.records import PromptTask
    from sparring.workers.actors import GENERATORS_GROUP

    worker = JudgeWorker(unique_run_id, redis_url, config_json(), "judge-0")
    _put(worker.queue, [arena_group(i, run_id=unique_run_id) for i in range(3)])
    t0 = time.perf_counter()
    out = worker.drain(idle_rounds=40)
    assert out["groups"] == 3 and time.perf_counter() - t0 < 2.0

    worker.queue.ensure_group("prompts", GENERATORS_GROUP)
    task = PromptTask(run_id=unique_run_id, iteration=2, policy_version=0, prompt_id="p", prompt="x", num_samples=4, seed=0)
    assert worker.queue.put("prompts", task) is not None  # not generated yet
    t0 = time.perf_counter()
    assert worker.drain(idle_rounds=5)["groups"] == 0
    assert time.perf_counter() - t0 >= 0.45  # five idle reads of 100 ms: the open prompt may still produce a group


# --------------------------------------------------------------------------------------------------
# cache, position bias, metrics


class CountingOracle(ArenaOracleJudge):
    def __init__(self) -> None:
        self.scored = 0

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        self.scored += sum(len(g.completions) for g in groups)
        return super().judge(groups)


def test_pointwise_cache_scores_each_response_once() -> None:
    judge = CountingOracle()
    pool = JudgePool(judge, timeout_s=10)
    a = arena_group(0)
    dup = a.model_copy(update={"completions": [a.completions[0], a.completions[0].model_copy(update={"index": 1}),
                                               *[c.model_copy(update={"index": c.index}) for c in a.completions[1:2]]]})
    out1 = pool.judge_batch([a, dup])  # dup repeats responses of `a` (same prompt): scored once
    assert judge.scored == 4
    out2 = pool.judge_batch([a])
    assert judge.scored == 4  # all cached
    direct = ArenaOracleJudge().judge([a, dup])
    assert [j.scores for j in out1] == [j.scores for j in direct] and out2[0].win_matrix == direct[0].win_matrix
    m = pool.take_metrics()
    assert m["judge/cache_hits"] == 3 + 4 and m["judge/cache_misses"] == 4 and m["judge/calls"] == 1
    # another prompt with the same response texts is a different key
    other = arena_group(1).model_copy(update={"completions": a.completions})
    pool.judge_batch([other])
    assert judge.scored == 8
    no_cache = JudgePool(CountingOracle(), timeout_s=10, cache_size=0)
    no_cache.judge_batch([a, a])
    assert no_cache.judge.scored == 8
    # a cache smaller than one batch evicts while the batch is assembled: the answers stay right
    tiny = JudgePool(CountingOracle(), timeout_s=10, cache_size=2)
    batch = [a, arena_group(1), a, arena_group(2)]
    tiny.judge_batch(batch)
    again = tiny.judge_batch(batch)
    assert [j.scores for j in again] == [j.scores for j in ArenaOracleJudge().judge(batch)]
    assert len(tiny._cache) == 2


class FirstWins:
    """An order-sensitive group judge that always prefers the response presented first (pure position bias)."""

    name = "first_wins"
    order_sensitive = True

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        out = []
        for g in groups:
            k = len(g.completions)
            m = [[0.5 if i == j else (0.9 if i < j else 0.1) for j in range(k)] for i in range(k)]
            out.append(Judgement(judge=self.name, win_matrix=m))
        return out


class OrderSensitiveOracle(ArenaOracleJudge):
    order_sensitive = True  # claims it; the gold rule is not biased, so every verdict survives the swap


def test_position_bias_cancelled_and_flip_consistency_reported() -> None:
    groups = [arena_group(i) for i in range(3)]
    pool = JudgePool(FirstWins(), timeout_s=10)
    out = pool.judge_batch(groups)
    for jd in out:
        assert all(v == pytest.approx(0.5) for row in jd.win_matrix for v in row)
    m = pool.take_metrics()
    assert m["judge/flip_pairs"] == 3 * 6 and m["judge/flip_consistency"] == 0.0

    fair = JudgePool(OrderSensitiveOracle(), timeout_s=10, cache_size=0)  # uncached: both orders
    out = fair.judge_batch(groups)
    assert [j.scores for j in out] == [j.scores for j in ArenaOracleJudge().judge(groups)]
    assert fair.take_metrics()["judge/flip_consistency"] == 1.0


class BiasedComparer:
    """A pairwise judge: P(first beats second) = gold order, pushed 0.3 toward the first position."""

    name = "biased_compare"
    order_sensitive = True

    def __init__(self) -> None:
        self.compared = 0

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:  # pragma: no cover - pool uses compare
        raise AssertionError("the pool must use compare()")

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        self.compared += len(items)
        out = []
        for prompt, a, b in items:
            topic = arena.topic_of(prompt)
            ga, gb = arena.gold_score(topic, a), arena.gold_score(topic, b)
            out.append(min(1.0, (0.7 if ga > gb else 0.5 if ga == gb else 0.3) + 0.3))
        return out


def test_pairwise_judge_ordered_pair_cache_and_debiasing() -> None:
    judge = BiasedComparer()
    pool = JudgePool(judge, timeout_s=10)
    g = arena_group(2, k=3)
    out = pool.judge_batch([g])[0]
    assert judge.compared == 6  # every ordered pair once
    pool.judge_batch([g])
    assert judge.compared == 6  # cached per ordered pair
    gold = [arena.gold_score(arena.topic_of(g.prompt), c.text) for c in g.completions]
    for i in range(3):
        for j in range(3):
            if gold[i] > gold[j]:
                assert out.win_matrix[i][j] > 0.5  # the bias cancelled: the gold order survives
    m = pool.take_metrics()
    assert 0.0 <= m["judge/flip_consistency"] <= 1.0 and m["judge/flip_pairs"] == 6


def test_baseline_mode_compares_each_answer_with_the_baseline_only() -> None:
    """OSP's O(K) pairing: 2(K-1) ordered comparisons (both orders) instead of K(K-1), the rest composed."""
    judge = BiasedComparer()
    pool = JudgePool(judge, timeout_s=10, baseline=0)
    g = arena_group(2, k=4)
    out = pool.judge_batch([g])[0]
    assert judge.compared == 2 * 3  # (i, 0) and (0, i) for i = 1..3; all ordered pairs would be 12
    m = out.win_matrix
    assert m is not None and all(m[i][j] + m[j][i] == pytest.approx(1.0) for i in range(4) for j in range(4))
    gold = [arena.gold_score(arena.topic_of(g.prompt), c.text) for c in g.completions]
    for i in range(1, 4):  # the baseline column is the (debiased) comparison itself
        if gold[i] != gold[0]:
            assert (m[i][0] > 0.5) == (gold[i] > gold[0])


def test_timeout_and_isolation_outcomes_directly() -> None:
    pool = JudgePool(SleepyJudge({"x"}, 0.0), timeout_s=5)
    assert all(isinstance(o, Judgement) for o in pool.judge_groups([arena_group(0), arena_group(1)]))
    g = arena_group(0)
    pool = JudgePool(SleepyJudge({g.prompt_id}, 1.0), timeout_s=0.1, cache_size=0)
    outcome = pool.judge_groups([g, arena_group(1)])
    assert all(isinstance(o, GroupFailure) and o.timeout and o.reason == "timeout after 0.1s" for o in outcome)
    assert any(t.name == "judge-call" for t in threading.enumerate())  # abandoned, still running


# --------------------------------------------------------------------------------------------------
# uncertainty filter in the worker


class DisagreeOnOdd:
    """Estimator stub: votes against the primary judge for prompts whose group seed is odd (p ~ 0.1)."""

    name = "stub"

    def __init__(self, odd_prompts: set[str]) -> None:
        self.odd = odd_prompts

    def pass_probs(self, items: Sequence[tuple[str, str, str]], passes: int, head_only: bool) -> torch.Tensor:
        base = torch.tensor([0.1 if x in self.odd else 0.9 for x, _, _ in items], dtype=torch.float64)
        return (base + 0.05 * (torch.rand(passes, len(items), dtype=torch.float64) - 0.5)).clamp(0, 1)


def test_uncertainty_filter_drops_pairs_in_the_worker(redis_url: str, unique_run_id: str) -> None:
    groups = [arena_group(i, run_id=unique_run_id) for i in range(6)]
    odd = {g.prompt for g in groups[1::2]}
    judge = UncertaintyJudge(ArenaOracleJudge(), DisagreeOnOdd(odd), mode="filter", passes=4)
    worker = JudgeWorker(unique_run_id, redis_url, config_json(), "judge-0", judge=judge)
    _put(worker.queue, groups)
    out = worker.drain(idle_rounds=2)
    pairs = [p for _, p in worker.queue.read_all("pairs", PreferencePair)]
    assert {p.prompt for p in pairs} == {g.prompt for g in groups[0::2]}
    assert out["judge/pairs_filtered"] == 3.0 and out["pairs"] == 3.0
    assert out["judge/uncertainty_dropped"] > 0 and out["judge/uncertainty_pairs"] > out["judge/uncertainty_dropped"]
    assert worker.queue.outstanding("generations", JUDGES_GROUP) == 0 and worker.queue.dead_letters() == []
