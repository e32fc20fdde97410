"""Unpaired labels from the run's own samples (pure functions): what KTO and unpaired BCO train on besides
posted feedback (shared/feedback.py).

- `pointwise_labels` (`algorithm.pairs: pointwise`): every non-empty sample of a judged group gets a thumbs up
  (desirable) when the judge's score is >= `algorithm.label_threshold`, else a thumbs down. The score is the
  judge's scalar score (`Judgement.scores`; a task's oracle gives its gold score), or for a judge that gives
  only a K x K win matrix its row mean (the sample's estimated win rate against the group, in [0, 1]). This
  is a thumbs-up/down rater, not a ranker: a group may be all up or all down.
- `pair_labels`: a judged pair split into two labels, chosen = desirable, rejected = undesirable (an unpaired
  objective run with a pairing recipe, e.g. best_vs_worst: the judge's best is desirable, its worst not).

Empty answers (no tokens) are never labelled (they cannot be trained on).
"""

from __future__ import annotations

from sparring.shared.records import GenerationGroup, Judgement, LabelledAnswer, PreferencePair
from sparring.workers.recipes.pairs import ranking_scores


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
            run_id=group.run_id,
            iteration=group.iteration,
            policy_version=group.policy_version,
            prompt_id=group.prompt_id,
            prompt=group.prompt,
            messages=group.messages,
            prompt_token_ids=group.prompt_token_ids,
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
            run_id=pair.run_id,
            iteration=pair.iteration,
            policy_version=pair.policy_version,
            prompt_id=pair.prompt_id,
            prompt=pair.prompt,
            messages=pair.messages,
            prompt_token_ids=pair.prompt_token_ids,
            answer=answer,
            label=label,
            weight=pair.weight,
            score=score,
            source=pair.judge,
        )
        for answer, label, score in ((pair.chosen, True, pair.chosen_score), (pair.rejected, False, pair.rejected_score))
    ]
