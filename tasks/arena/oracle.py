"""The arena's oracle judge: the documented gold preference, as a judge.

GenerationGroup -> Judgement with per-response gold scores and the exact K x K preference matrix
(P[i][j] = 1 if i scores higher, 1/2 on ties). It is a real feature for tasks whose preference is
verifiable, and the reference the learned judges are measured against.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sparring.shared.records import GenerationGroup, Judgement
from sparring.tasks.arena.rules import gold_score, topic_of


class ArenaOracleJudge:
    name = "arena_oracle"
    order_sensitive = False

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        out = []
        for group in groups:
            t0 = time.perf_counter()
            topic = topic_of(group.prompt)
            scores = [float(gold_score(topic, c.text)) for c in group.completions]
            out.append(self.from_scores(scores).model_copy(update={"latency_s": time.perf_counter() - t0}))
        return out

    def from_scores(self, scores: Sequence[float]) -> Judgement:
        """Pointwise (base.py): the judgement of responses with these gold scores (the pool caches scores)."""
        matrix = [[0.5 if si == sj else float(si > sj) for sj in scores] for si in scores]
        return Judgement(judge=self.name, scores=list(scores), win_matrix=matrix)
