"""How often a judge agrees with a known preference, on labelled pairs.

A labelled pair is `(prompt, a, b, preference)` with `preference` = 1.0 when `a` is the better response and
0.0 when `b` is (a task that knows its preference provides them: `Task.labelled_pairs`, shared/tasks.py).
Each pair is judged as a two-response group whose completions ended on EOS (`finish_reason="stop"`), token
ids from the judge's tokenizer where it has one; the judge must return scores. A score tie counts one half.
The 95% interval is Wilson's (`shared/stats.py`), pairs being independent draws from distinct prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparring.shared.records import Completion, GenerationGroup, Judgement
from sparring.shared.stats import wilson_interval

LabelledPair = tuple[str, str, str, float]


@dataclass(frozen=True)
class Agreement:
    """Fraction of labelled pairs a judge orders like the label (a score tie counts one half)."""

    agreement: float
    ci_low: float
    ci_high: float
    num_pairs: int


def pair_groups(judge: Any, pairs: Sequence[LabelledPair]) -> list[GenerationGroup]:
    """One two-response group [a, b] per pair, tokenised by the judge's tokenizer (empty ids without one)."""
    tok = getattr(judge, "tokenizer", None)

    def ids(text: str) -> list[int]:
        return [] if tok is None else [int(x) for x in tok(text, add_special_tokens=False)["input_ids"]]

    return [
        GenerationGroup(
            run_id="eval",
            iteration=0,
            policy_version=0,
            prompt_id=f"pair-{i}",
            prompt=prompt,
            prompt_token_ids=[0],
            completions=[
                Completion(index=j, text=t, token_ids=ids(t), logprobs=None, finish_reason="stop") for j, t in enumerate((a, b))
            ],
            engine_id="corpus",
            seed=i,
            latency_s=0.0,
        )
        for i, (prompt, a, b, _) in enumerate(pairs)
    ]


def hits(judgements: Sequence[Judgement], pairs: Sequence[LabelledPair]) -> list[float]:
    """Per pair: 1 if the judge's scores order it like the label, 0 if not, 1/2 on a score tie."""
    out = []
    for j, (_, _, _, pref) in zip(judgements, pairs, strict=True):
        if j.scores is None:
            raise ValueError(f"judge {j.judge!r} returned no scores (agreement needs a score per response)")
        sa, sb = j.scores[:2]
        out.append(0.5 if sa == sb else float((sa > sb) == (pref > 0.5)))
    return out


def agreement(judge: Any, pairs: Sequence[LabelledPair]) -> Agreement:
    """Agreement of `judge` (anything with `judge(groups) -> list[Judgement]`) with the labels."""
    scored = hits(judge.judge(pair_groups(judge, pairs)), pairs)
    rate, low, high = wilson_interval(sum(scored), len(pairs))
    return Agreement(rate, low, high, len(pairs))
