"""The judge interface: a batch of generation groups -> one `Judgement` per group.

A judge sees prompts and response texts (and token ids); it never sees weights or the trainer. Learned
judges (PairRM K x K matrices, density ratios, self-preference, MC-dropout) implement the same protocol:
they fill `Judgement.scores` and/or `Judgement.win_matrix` (+ `confidence`).

Optional capabilities, read by the judge pool (`workers/judges/pool.py`) as attributes, never by name:
- `from_scores(scores) -> Judgement` (a *pointwise* judge): a response's score depends on (prompt, response)
  alone and the judgement is a function of the scores, so the pool caches scores per (prompt, response) and
  sends only unseen responses;
- `compare(items) -> list[float]` (a *pairwise* judge): P(first beats second) for (prompt, first, second)
  items as presented; the pool builds the K x K matrix itself, caching per ordered pair;
- `flip_pairs` / `flip_consistent` counters: the judge cancels its own position bias (it scores both orders
  itself); the pool then calls it once and reports its flip consistency;
- `follows_policy = True`: the judge's weights change with every sync, so nothing it says is cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sparring.shared.records import GenerationGroup, Judgement


class Judge(Protocol):
    """Scores each group of K responses to one prompt."""

    name: str
    # True when swapping A/B can change a verdict: the pool scores both orders and reports flip consistency
    # (unless the judge already does, see the module docstring).
    order_sensitive: bool

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        """One judgement per group, in order. Raise to fail the batch (the pool retries it group by group;
        a group that keeps failing is dead-lettered with the error)."""
        ...


class PointwiseJudge(Judge, Protocol):
    """A judge whose score of a response depends only on (prompt, response): cacheable per response."""

    def from_scores(self, scores: Sequence[float]) -> Judgement:
        """The judgement of a group whose responses have these scores (e.g. with the judge's win matrix)."""
        ...


class PairwiseJudge(Judge, Protocol):
    """A judge that compares one ordered pair at a time: cacheable per ordered pair."""

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        """P(first beats second) for each (prompt, first, second), the first response presented first."""
        ...
