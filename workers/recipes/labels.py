"""Unpaired labels from the run's own samples, and pairs from unpaired feedback (pure functions). The labels
are what KTO and unpaired BCO train on besides posted feedback (shared/feedback.py).

- `pointwise_labels` (`algorithm.pairs: pointwise`): every non-empty sample of a judged group gets a thumbs up
  (desirable) when the judge's score is >= `algorithm.label_threshold`, else a thumbs down. The score is the
  judge's scalar score (`Judgement.scores`; a task's oracle gives its gold score), or for a judge that gives
  only a K x K win matrix its row mean (the sample's estimated win rate against the group, in [0, 1]). This
  is a thumbs-up/down rater, not a ranker: a group may be all up or all down.
- `pair_labels`: a judged pair split into two labels, chosen = desirable, rejected = undesirable (an unpaired
  objective run with a pairing recipe, e.g. best_vs_worst: the judge's best is desirable, its worst not).
- `feedback_pairs`, the other way round: posted feedback turned into pairs for a PAIRED objective (every
  thumbs-up answer over every thumbs-down answer to the same conversation in one iteration's feedback).

Empty answers (no tokens) are never labelled (they cannot be trained on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sparring.shared.records import Completion, GenerationGroup, Judgement, LabelledAnswer, PreferencePair
from sparring.workers.recipes.pairs import prompt_fields, ranking_scores


def pointwise_labels(group: GenerationGroup, judgement: Judgement, threshold: float) -> list[LabelledAnswer]:
    """One `LabelledAnswer` per non-empty sample of `group`: label = score >= `threshold`. Raises ValueError
    when the judgement does not cover the group."""
    if judgement.num_responses != len(group.completions):
        raise ValueError(
            f"judge {judgement.judge} scored {judgement.num_responses} responses, group has {len(group.completions)}"
        )
    scores = ranking_scores(judgement)
    return [
        LabelledAnswer(
            **prompt_fields(group),
            answer=sample,
            label=scores[i] >= threshold,
            score=float(scores[i]),
            source=judgement.judge,
        )
        for i, sample in enumerate(group.completions)
        if sample.token_ids
    ]


def pair_labels(pair: PreferencePair) -> list[LabelledAnswer]:
    """(chosen as desirable, rejected as undesirable), each carrying the pair's weight and the judge's score."""
    return [
        LabelledAnswer(
            **prompt_fields(pair),
            answer=answer,
            label=label,
            weight=pair.weight,
            score=score,
            source=pair.judge,
        )
        for answer, label, score in ((pair.chosen, True, pair.chosen_score), (pair.rejected, False, pair.rejected_score))
    ]


def feedback_pairs(
    answers: Sequence[LabelledAnswer],
    tokenize: Callable[[LabelledAnswer], tuple[list[int], list[int]]],
    run_id: str,
    iteration: int,
    version: int,
) -> tuple[list[PreferencePair], list[LabelledAnswer]]:
    """Posted feedback mixed into a PAIRED objective's iteration (docs/algorithms.md, "Feedback"): the answers
    to one conversation (same `prompt_id`) that arrived together pair up, every thumbs-up answer chosen over
    every thumbs-down one, `win_prob` 1 and weight min(w_up, w_down, 1) (a pair's weight is a confidence in
    (0, 1]). Returns (pairs, the answers left without an opposite label: not trained). `tokenize(answer)` gives
    (prompt ids, answer ids) as the trainer sees them; the pairs are stamped with `version`, the policy trained,
    and judged by `feedback`. Answers with identical tokens on both sides give no pair."""
    by_prompt: dict[str, list[LabelledAnswer]] = {}
    for a in sorted(answers, key=lambda a: a.record_id):
        by_prompt.setdefault(a.prompt_id, []).append(a)
    pairs: list[PreferencePair] = []
    unmatched: list[LabelledAnswer] = []
    for prompt_id, group in sorted(by_prompt.items()):
        ups, downs = [a for a in group if a.label], [a for a in group if not a.label]
        if not ups or not downs:
            unmatched += group
            continue
        tokens = [tokenize(a) for a in group]
        completions = [
            Completion(index=i, text=a.answer.text, token_ids=ids, logprobs=None, finish_reason="stop")
            for i, (a, (_, ids)) in enumerate(zip(group, tokens, strict=True))
        ]
        for i, up in enumerate(group):
            for j, down in enumerate(group):
                if not (up.label and not down.label) or completions[i].token_ids == completions[j].token_ids:
                    continue
                pairs.append(
                    PreferencePair(
                        run_id=run_id, iteration=iteration, policy_version=version, prompt_id=prompt_id,
                        prompt=up.prompt, messages=up.messages, prompt_token_ids=tokens[i][0],
                        chosen=completions[i], rejected=completions[j], chosen_score=1.0, rejected_score=0.0,
                        win_prob=1.0, judge="feedback", weight=min(up.weight, down.weight, 1.0),
                    )
                )  # fmt: skip
    return pairs, unmatched
