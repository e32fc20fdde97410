"""The judge interface: a batch of generation groups -> one `Judgement` per group.

A judge sees prompts and response texts (and token ids); it never sees weights or the trainer. Learned
judges of later issues (PairRM K x K matrices, density ratios, self-preference, MC-dropout) implement the
same protocol: they fill `Judgement.scores` and/or `Judgement.win_matrix` (+ `confidence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sparring.shared.records import GenerationGroup, Judgement


class Judge(Protocol):
    """Scores each group of K responses to one prompt."""

    name: str
    order_sensitive: bool  # True when swapping A/B can change the verdict (the pool then scores both orders)

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        """One judgement per group, in order. Raise to fail the whole batch (it is retried, then dead-lettered)."""
        ...
