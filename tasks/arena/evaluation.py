"""The arena's evaluator (`eval.evaluators: [arena_gold]`): the gold rule on held-out responses.

Per iteration: the gold win rate of the current policy against iteration 0 on the same held-out prompts
(`rules.gold_win_rate`: one response of each per prompt, ties one half, normal 95% interval) and the mean
gold score of both. The controller records them as `eval/arena_gold/<metric>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sparring.tasks.arena.rules import gold_score, gold_win_rate, topic_of

if TYPE_CHECKING:
    from sparring.shared.prompts import PromptItem


class GoldEvaluator:
    name = "arena_gold"

    def evaluate(
        self, prompts: Sequence[PromptItem], responses: Sequence[str], baseline: Sequence[str]
    ) -> dict[str, float]:
        """Metrics `win_rate_vs_iter0` (+ `_ci_low`, `_ci_high`), `mean_gold`, `mean_gold_iter0`; raises
        ValueError if a prompt is not an arena prompt or the lengths differ."""
        topics = [topic_of(p.prompt) for p in prompts]
        win = gold_win_rate(topics, responses, baseline)
        n = len(topics)
        return {
            "win_rate_vs_iter0": win.win_rate,
            "win_rate_vs_iter0_ci_low": win.ci_low,
            "win_rate_vs_iter0_ci_high": win.ci_high,
            "mean_gold": sum(gold_score(t, r) for t, r in zip(topics, responses, strict=True)) / n,
            "mean_gold_iter0": sum(gold_score(t, r) for t, r in zip(topics, baseline, strict=True)) / n,
        }
