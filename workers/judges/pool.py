"""What a judge worker adds around its judge: caching, position-bias cancellation, timing, timeouts, isolation.

    JudgePool.judge_groups: list[GenerationGroup] -> list[Judgement | GroupFailure]   (one per group, in order)

- **Batching.** All groups of a worker's read (up to 32) go to the judge in one call.
- **Cache.** A *pointwise* judge (one with `from_scores`, see `base.py`) scores a response from (prompt,
  response) alone, so scores are cached under (sha256 of the prompt and its whole conversation, sha256 of
  the response's text, token ids and finish reason): a repeated response is never re-scored, and each call
  sends only the uncached, de-duplicated responses. A *pairwise* judge (one with `compare`) is cached per ordered pair (prompt, first,
  second). Judges whose weights follow the policy (`follows_policy`) are never cached. LRU, `cache_size`
  entries.
- **Position bias.** For an `order_sensitive` judge the pool scores both orders and averages: a pairwise
  judge gets (i, j) and (j, i), P[i][j] = (p(i, j) + 1 - p(j, i)) / 2; a group judge gets the group and its
  reversal (which swaps the presentation order of every pair, assuming the judge presents the lower index
  first) and the two judgements are averaged. The flip-consistency rate is the fraction of compared pairs whose
  verdict survives the swap. A judge that already cancels its own bias (it keeps `flip_pairs` /
  `flip_consistent` counters, e.g. self-preference) is called once and its counters are reported.
- **Timing and timeouts.** Every judge call is timed; a call running longer than `timeout_s` raises
  `JudgeTimeout("timeout after Xs")` and fails its batch (the worker retries, then dead-letters). A Python
  thread cannot be killed: the abandoned call keeps running in the background, and the next call first waits
  (up to `timeout_s`) for it so that a judge never runs twice at once; if it is still busy, that call times
  out too.
- **Isolation.** A judge that raises on a batch is retried group by group, so only the group(s) it raises on
  fail (`GroupFailure` with the exception as the reason); the others are judged.

Does not know Redis, Ray or recipes: the worker (`workers/actors.py::JudgeWorker`) turns failures into
retries and dead letters and judgements into pairs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sparring.shared.records import Completion, GenerationGroup, Judgement, PreferencePair
from sparring.workers.recipes.winrate import matrix_through_baseline

log = logging.getLogger(__name__)

T = TypeVar("T")


class JudgeTimeout(TimeoutError):
    """A judge call ran longer than `judge.timeout_s`."""


@dataclass(frozen=True)
class GroupFailure:
    """A group the judge could not judge, with the reason that goes to the dead-letter stream."""

    reason: str
    timeout: bool = False


# --------------------------------------------------------------------------------------------------
# keys


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def prompt_key(group: GenerationGroup) -> str:
    """Hash of what a judge sees of the prompt: its text, the trainer's token ids and the whole conversation
    (role and text of every turn), so two conversations ending in the same user turn never share scores."""
    turns = [f"{m.get('role', '')}\x1f{m.get('content', '')}" for m in group.messages or []]
    return _sha(group.prompt, ",".join(map(str, group.prompt_token_ids)), str(len(turns)), *turns)


def response_key(c: Completion) -> str:
    """Hash of what a judge sees of a response (text, token ids, whether it ended on a stop token, and which:
    a judge that scores the stop token scores two different ones differently)."""
    return _sha(c.text, ",".join(map(str, c.token_ids)), c.finish_reason, str(c.stop_token_id))


# --------------------------------------------------------------------------------------------------
# counters


@dataclass
class PoolStats:
    calls: int = 0
    call_seconds: list[float] = field(default_factory=list)
    groups: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    flip_pairs: int = 0
    flip_consistent: int = 0
    timeouts: int = 0
    failed_groups: int = 0
    isolation_retries: int = 0

    def metrics(self) -> dict[str, float]:
        """Namespaced `judge/*` metrics; rates only where they have a denominator.

        The names are those docs/judges.md lists under "Judge pool".
        """
        secs = sorted(self.call_seconds)
        out = {
            "judge/calls": float(self.calls),
            "judge/groups": float(self.groups),
            "judge/call_seconds": float(sum(secs)),
            "judge/timeouts": float(self.timeouts),
            "judge/failed_groups": float(self.failed_groups),
            "judge/isolation_retries": float(self.isolation_retries),
            "judge/cache_hits": float(self.cache_hits),
            "judge/cache_misses": float(self.cache_misses),
        }
        if secs:
            out["judge/latency_s_mean"] = sum(secs) / len(secs)
            out["judge/latency_s_p50"] = secs[len(secs) // 2]
            out["judge/latency_s_max"] = secs[-1]
        if self.cache_hits + self.cache_misses:
            out["judge/cache_hit_rate"] = self.cache_hits / (self.cache_hits + self.cache_misses)
        if self.flip_pairs:
            out["judge/flip_pairs"] = float(self.flip_pairs)
            out["judge/flip_consistency"] = self.flip_consistent / self.flip_pairs
        return out


# --------------------------------------------------------------------------------------------------
# the pool


def _sign(x: float) -> int:
    return (x > 0.5) - (x < 0.5)


class JudgePool:
    """One judge with the pool's machinery around it (see the module docstring)."""

    def __init__(self, judge: Any, timeout_s: float = 60.0, cache_size: int = 100_000, baseline: int | None = None) -> None:
        """`baseline`: a pairwise judge compares every response with that one only (OSP's O(K) pairing,
        `algorithm.pairs: baseline`), the other entries composed through it (`matrix_through_baseline`)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.judge = judge
        self.baseline = baseline
        self.timeout_s = float(timeout_s)
        self.cache_size = int(cache_size)
        self.stats = PoolStats()
        self._cache: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self._busy: threading.Thread | None = None  # an abandoned (timed-out) call still running

    # -- capabilities ---------------------------------------------------------------------------------

    @property
    def cacheable(self) -> bool:
        return self.cache_size > 0 and not getattr(self.judge, "follows_policy", False)

    @property
    def pairwise(self) -> bool:
        return callable(getattr(self.judge, "compare", None))

    @property
    def pointwise(self) -> bool:
        return callable(getattr(self.judge, "from_scores", None))

    @property
    def self_debiasing(self) -> bool:
        return hasattr(self.judge, "flip_pairs") and hasattr(self.judge, "flip_consistent")

    def clear_cache(self) -> None:
        """Forget every cached score (call after the judge's weights change)."""
        self._cache.clear()

    def take_metrics(self) -> dict[str, float]:
        """The metrics since the last call, then reset the counters."""
        out, self.stats = self.stats.metrics(), PoolStats()
        return out

    # -- entry points ---------------------------------------------------------------------------------

    def judge_groups(self, groups: Sequence[GenerationGroup]) -> list[Judgement | GroupFailure]:
        """One outcome per group: a judgement, or the failure to dead-letter (after the worker's retries)."""
        groups = list(groups)
        if not groups:
            return []
        try:
            out: list[Judgement | GroupFailure] = list(self.judge_batch(groups))
        except JudgeTimeout as err:  # the whole batch: retried by redelivery, then dead-lettered
            self.stats.failed_groups += len(groups)
            return [GroupFailure(str(err), timeout=True)] * len(groups)
        except Exception as err:  # noqa: BLE001 - any judge error: find the group(s) it comes from
            if len(groups) == 1:
                self.stats.failed_groups += 1
                return [GroupFailure(f"{type(err).__name__}: {err}")]
            log.warning("judge %s failed on a batch of %d groups (%s); retrying group by group",
                        getattr(self.judge, "name", "?"), len(groups), err)  # fmt: skip
            out = []
            for g in groups:
                self.stats.isolation_retries += 1
                try:
                    out.append(self.judge_batch([g])[0])
                except JudgeTimeout as e:
                    self.stats.failed_groups += 1
                    out.append(GroupFailure(str(e), timeout=True))
                except Exception as e:  # noqa: BLE001
                    self.stats.failed_groups += 1
                    out.append(GroupFailure(f"{type(e).__name__}: {e}"))
        return out

    def judge_batch(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        """Judgements of every group (raises `JudgeTimeout` or the judge's error for the whole batch)."""
        if self.pairwise:
            out = self._judge_pairwise(groups)
        elif self.pointwise and self.cacheable:
            out = self._judge_pointwise_cached(groups)
        elif getattr(self.judge, "order_sensitive", False) and not self.self_debiasing:
            out = self._judge_both_orders(groups)
        else:
            out = self._judge_plain(groups)
        self.stats.groups += len(groups)
        return out

    # -- timed, time-limited calls --------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one judge call in a thread, timed; `JudgeTimeout` when it outlives `timeout_s`."""
        if self._busy is not None:
            self._busy.join(self.timeout_s)
            if self._busy.is_alive():
                self.stats.timeouts += 1
                raise JudgeTimeout(f"timeout after {self.timeout_s:g}s (the previous judge call is still running)")
            self._busy = None
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                result["error"] = err

        t0 = time.perf_counter()
        thread = threading.Thread(target=target, name="judge-call", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        elapsed = time.perf_counter() - t0
        self.stats.calls += 1
        self.stats.call_seconds.append(elapsed)
        if thread.is_alive():
            self._busy = thread
            self.stats.timeouts += 1
            raise JudgeTimeout(f"timeout after {self.timeout_s:g}s")
        if "error" in result:
            raise result["error"]
        return result["value"]

    def _checked(self, groups: Sequence[GenerationGroup], out: Sequence[Judgement]) -> list[Judgement]:
        if len(out) != len(groups):
            raise ValueError(f"judge returned {len(out)} judgements for {len(groups)} groups")
        for g, jd in zip(groups, out, strict=True):
            if jd.num_responses != len(g.completions):
                raise ValueError(f"judge scored {jd.num_responses} responses, group {g.record_id} has "
                                 f"{len(g.completions)}")  # fmt: skip
        return list(out)

    # -- strategies -----------------------------------------------------------------------------------

    def _judge_plain(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        before = (getattr(self.judge, "flip_pairs", 0), getattr(self.judge, "flip_consistent", 0))
        out = self._checked(groups, self._call(lambda: self.judge.judge(groups)))
        if self.self_debiasing:
            self.stats.flip_pairs += int(self.judge.flip_pairs) - int(before[0])
            self.stats.flip_consistent += int(self.judge.flip_consistent) - int(before[1])
        return out

    def _judge_both_orders(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        """Judge each group and its reversal in one call; average the two views."""
        flipped = [reverse_group(g) for g in groups]
        both = self._checked([*groups, *flipped], self._call(lambda: self.judge.judge([*groups, *flipped])))
        n = len(groups)
        return [self._average_orders(both[i], both[n + i]) for i in range(n)]

    def _average_orders(self, a: Judgement, r: Judgement) -> Judgement:
        k = a.num_responses

        def back(m: list[list[float]] | None) -> list[list[float]] | None:  # reversed view -> original indices
            return None if m is None else [[m[k - 1 - i][k - 1 - j] for j in range(k)] for i in range(k)]

        def mean_m(x: list[list[float]] | None, y: list[list[float]] | None) -> list[list[float]] | None:
            if x is None or y is None:
                return x if y is None else y
            return [[(x[i][j] + y[i][j]) / 2 for j in range(k)] for i in range(k)]

        r_scores = None if r.scores is None else list(reversed(r.scores))
        r_matrix = back(r.win_matrix)
        # flip consistency over unordered pairs: the preferred response is the same in both presentations
        for i in range(k):
            for j in range(i + 1, k):
                if a.win_matrix is not None and r_matrix is not None:
                    va, vr = _sign(a.win_matrix[i][j]), _sign(r_matrix[i][j])
                elif a.scores is not None and r_scores is not None:
                    va = (a.scores[i] > a.scores[j]) - (a.scores[i] < a.scores[j])
                    vr = (r_scores[i] > r_scores[j]) - (r_scores[i] < r_scores[j])
                else:
                    continue
                self.stats.flip_pairs += 1
                self.stats.flip_consistent += int(va == vr)
        scores = None
        if a.scores is not None and r_scores is not None:
            scores = [(x + y) / 2 for x, y in zip(a.scores, r_scores, strict=True)]
        return Judgement(
            judge=a.judge,
            scores=scores,
            win_matrix=mean_m(a.win_matrix, r_matrix),
            confidence=mean_m(a.confidence, back(r.confidence)),
            latency_s=a.latency_s + r.latency_s,
        )

    def _lookup(self, key: tuple[str, ...]) -> float | None:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    def _store(self, key: tuple[str, ...], value: float) -> None:
        if not self.cacheable:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _judge_pointwise_cached(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        """Score only responses not seen before (de-duplicated across the batch); assemble from the cache."""
        keys = [[(prompt_key(g), response_key(c)) for c in g.completions] for g in groups]
        subgroups: list[GenerationGroup] = []
        sub_keys: list[list[tuple[str, str]]] = []
        pending: set[tuple[str, str]] = set()
        known: dict[tuple[str, str], float] = {}  # values read now: a small cache may evict them below
        for g, gkeys in zip(groups, keys, strict=True):
            missing = []
            for c, key in zip(g.completions, gkeys, strict=True):
                if (hit := self._lookup(key)) is not None:
                    known[key] = hit
                    self.stats.cache_hits += 1
                elif key in pending:
                    self.stats.cache_hits += 1  # a duplicate inside this batch: scored once
                else:
                    self.stats.cache_misses += 1
                    pending.add(key)
                    missing.append((c, key))
            if missing:
                comps = [c.model_copy(update={"index": n}) for n, (c, _) in enumerate(missing)]
                subgroups.append(g.model_copy(update={"completions": comps, "anchor": None}))
                sub_keys.append([key for _, key in missing])
        scored = known
        if subgroups:
            for jd, skeys in zip(self._checked(subgroups, self._call(lambda: self.judge.judge(subgroups))), sub_keys,
                                 strict=True):  # fmt: skip
                if jd.scores is None:
                    raise ValueError(f"pointwise judge {jd.judge} returned no scores")
                for key, s in zip(skeys, jd.scores, strict=True):
                    scored[key] = float(s)
                    self._store(key, float(s))
        out = []
        for gkeys in keys:
            scores = [scored[k] for k in gkeys]
            out.append(self.judge.from_scores(scores))
        return out

    def _judge_pairwise(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        """Judges with `compare(items) -> P(first beats second)`: ordered pairs, cached, both orders when
        the judge is order-sensitive."""
        both = bool(getattr(self.judge, "order_sensitive", False))
        needed: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        known: dict[tuple[str, str, str], float] = {}
        plan: list[list[tuple[int, int, tuple[str, str, str]]]] = []
        for g in groups:
            pk = prompt_key(g)
            ck = [response_key(c) for c in g.completions]
            k = len(ck)
            rows = []
            for i in range(k):
                for j in range(k):
                    if i == j or (not both and j < i) or (self.baseline is not None and self.baseline not in (i, j)):
                        continue
                    key = (pk, ck[i], ck[j])
                    rows.append((i, j, key))
                    if (hit := self._lookup(key)) is not None:
                        known[key] = hit
                        self.stats.cache_hits += 1
                    elif key in needed:
                        self.stats.cache_hits += 1
                    else:
                        self.stats.cache_misses += 1
                        needed[key] = (g.prompt, g.completions[i].text, g.completions[j].text)
            plan.append(rows)
        fresh = known
        if needed:
            items = list(needed.values())
            probs = self._call(lambda: self.judge.compare(items))
            if len(probs) != len(items):
                raise ValueError(f"judge compared {len(probs)} pairs, asked {len(items)}")
            for key, p in zip(needed, probs, strict=True):
                fresh[key] = float(p)
                self._store(key, float(p))
        out = []
        for g, rows in zip(groups, plan, strict=True):
            k = len(g.completions)
            p = {(i, j): fresh[key] for i, j, key in rows}
            m = [[0.5] * k for _ in range(k)]
            for i in range(k):
                for j in range(i + 1, k):
                    if (i, j) not in p and (j, i) not in p:  # baseline mode: composed below
                        continue
                    if both:
                        pij, pji = p[(i, j)], p[(j, i)]
                        self.stats.flip_pairs += 1
                        self.stats.flip_consistent += int(_sign(pij) == -_sign(pji))
                        m[i][j] = (pij + 1.0 - pji) / 2
                    else:
                        m[i][j] = p[(i, j)]
                    m[j][i] = 1.0 - m[i][j]
            if self.baseline is not None and k > self.baseline:
                m = matrix_through_baseline([m[i][self.baseline] for i in range(k)], self.baseline)
            scores = [sum(row) / k for row in m]
            out.append(Judgement(judge=self.judge.name, scores=scores, win_matrix=m))
        return out


def reverse_group(group: GenerationGroup) -> GenerationGroup:
    """The group with its completions in reverse order (re-indexed), so every pair swaps presentation order."""
    comps = [c.model_copy(update={"index": n}) for n, c in enumerate(reversed(group.completions))]
    return group.model_copy(update={"completions": comps})


def apply_confidence(pairs: Sequence[PreferencePair], judgement: Judgement) -> tuple[list[PreferencePair], int]:
    """Drop the pairs whose comparison has confidence 0 (an uncertainty filter/sampler rejected them) and carry
    the others' confidence as the pair's loss weight (the `weight` mode; 1 for filter/easy/hard); returns
    (kept, number dropped)."""
    if judgement.confidence is None:
        return list(pairs), 0
    kept = []
    for p in pairs:
        c = min(1.0, float(judgement.confidence[p.chosen.index][p.rejected.index]))
        if c > 0.0:
            kept.append(p if c == 1.0 else p.model_copy(update={"weight": c}))
    return kept, len(pairs) - len(kept)
