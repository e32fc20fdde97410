"""Pair construction: one judged group of K responses -> training pairs (pure functions).

`best_vs_worst` (SPPO / INPO / iterative DPO): the highest- against the lowest-ranked response.
`all_pairs`: every ordered pair the judge prefers strictly. `ranked` (OSP's ranked pairing, arXiv 2405.14103;
the outside-in order is a reconstruction, docs/algorithms.md): sort the K responses and pair them from the
outside in, (1st, K-th), (2nd, K-1-th), ..., giving up to K/2 disjoint pairs, each with the judge's preference
strength P(chosen beats rejected) as its `win_prob` (the soft label of SPCE). Responses are ranked by their
scalar score when the judge gives one, else by the row mean of the win matrix (their estimated win rate
against the group). A group whose responses all tie yields no pair: there is nothing to learn from it.
`baseline` (OSP's ranked pairing against an intermediate baseline, arXiv 2405.14103 as the LLM-as-a-judge
survey arXiv 2411.16594 Sec. 4.2.6 describes it: O(K) judge comparisons instead of O(K^2)): the same outside-in
pairing, but each response is ranked only by s_i = P(y_i beats y_b), its comparison with the baseline
b = sample 0 (an i.i.d. policy sample: the group's median in expectation), and a pair's strength is composed
through the baseline, P(i beats j) = sigmoid(logit s_i - logit s_j) (`winrate.py::matrix_through_baseline`).
Only column b of the judge's matrix is read; a judge told the recipe (self-preference, a pairwise judge behind
the pool) compares each response with the baseline only. Two responses that both beat (or both lose to) the
baseline by a hard verdict tie and give no pair: what O(K) comparisons cannot separate.

Empty answers (no tokens) are never a side of a training pair, in every mode: the pairs are built from the
non-empty answers only, so best-vs-worst pairs the best answer with the worst *non-empty* one (an empty
answer ranked last no longer costs the group its pair). A group with fewer than two distinct non-empty
answers cannot give a pair at all: `build_pairs` raises `NoDistinctAnswers`, which the judge worker
dead-letters with the reason (stage "recipe"), so such groups are counted in the iteration's dead letters
instead of vanishing.
"""

from __future__ import annotations

from typing import Any, Literal

from sparring.shared.records import GenerationGroup, Judgement, PreferencePair
from sparring.workers.recipes.winrate import (
    BASELINE,
    matrix_through_baseline,
    pairwise_probs_from_scores,
    row_win_rates,
)

PairMode = Literal["best_vs_worst", "all_pairs", "ranked", "baseline"]


def prompt_fields(source: GenerationGroup | PreferencePair) -> dict[str, Any]:
    """The fields that say which prompt, run, iteration and policy version a record belongs to, copied from the
    group (or pair) it is built from: every pair and label record starts with these."""
    return {
        "run_id": source.run_id,
        "iteration": source.iteration,
        "policy_version": source.policy_version,
        "prompt_id": source.prompt_id,
        "prompt": source.prompt,
        "messages": source.messages,
        "prompt_token_ids": source.prompt_token_ids,
    }


class NoDistinctAnswers(ValueError):
    """A group with fewer than two distinct non-empty answers: no training pair can come from it."""


def ranking_scores(judgement: Judgement) -> list[float]:
    if judgement.scores is not None:
        return list(judgement.scores)
    assert judgement.win_matrix is not None
    return [sum(row) / len(row) for row in judgement.win_matrix]


def win_matrix(judgement: Judgement) -> list[list[float]]:
    """The judge's K x K matrix, or SPPO's P_ij = sigmoid(s_i - s_j) from its scalar scores."""
    if judgement.win_matrix is not None:
        return [list(row) for row in judgement.win_matrix]
    assert judgement.scores is not None
    return [list(map(float, row)) for row in pairwise_probs_from_scores(judgement.scores)]


def build_anchor_pairs(group: GenerationGroup, mode: Literal["drift", "spin"] = "drift") -> list[PreferencePair]:
    """Every fresh sample paired with the group's fixed answer (`group.anchor`), no judge, `win_prob` 1:

    - `drift`: the sample is chosen over the logged dissatisfying response (DRIFT, arXiv 2510.02341;
      cacayaya/DRIFT `gen-drift.py` makes the logged response `rejected`); judge label `dsat_log`.
    - `spin`: the prompt's reference answer is chosen over the sample (SPIN, arXiv 2401.01335 Sec. 4: the
      real answer y ~ p_data against the previous iterate's y' ~ p_theta_t; uclaml/SPIN `spin/convert_data.py`
      pairs `real` and `generated`); judge label `reference_answer`.

    Empty samples and samples identical to the fixed answer give no pair. Raises ValueError if the group has
    no fixed answer.
    """
    if group.anchor is None:
        what = "logged response" if mode == "drift" else "reference answer"
        raise ValueError(f"group {group.record_id} has no {what} to pair against")
    anchor = group.anchor
    spin = mode == "spin"
    return [
        PreferencePair(
            **prompt_fields(group),
            chosen=anchor if spin else sample,
            rejected=sample if spin else anchor,
            chosen_score=1.0,
            rejected_score=0.0,
            win_prob=1.0,
            judge="reference_answer" if spin else "dsat_log",
        )
        for sample in group.completions
        if sample.token_ids and sample.token_ids != anchor.token_ids
    ]


def build_pairs(group: GenerationGroup, judgement: Judgement, mode: PairMode) -> list[PreferencePair]:
    """The training pairs of one judged group under `mode` (module docstring); raises `ValueError` when the
    judgement does not match the group and `NoDistinctAnswers` for a group with fewer than two distinct
    non-empty answers."""
    if judgement.num_responses != len(group.completions):
        raise ValueError(
            f"judge {judgement.judge} scored {judgement.num_responses} responses, group has {len(group.completions)}"
        )
    scores = ranking_scores(judgement)
    matrix = win_matrix(judgement)
    if mode == "baseline":  # only the comparisons with the baseline count (module docstring)
        scores = [0.5 if i == BASELINE else matrix[i][BASELINE] for i in range(len(matrix))]
        matrix = matrix_through_baseline(scores, BASELINE)
    rates = [float(r) for r in row_win_rates(matrix)]  # P-hat(y_i beats pi_t), self term included
    # Only non-empty answers can be a pair's side (module docstring); win rates stay over the whole group.
    live = [i for i, c in enumerate(group.completions) if c.token_ids]
    if len({tuple(group.completions[i].token_ids) for i in live}) < 2:
        raise NoDistinctAnswers(
            f"group {group.record_id}: {len(live)} of {len(group.completions)} answers are non-empty and fewer "
            "than two of those are distinct; no training pair"
        )
    k = len(live)
    if mode == "best_vs_worst":
        best = max(live, key=lambda i: (scores[i], -i))  # ties: lowest index, deterministic
        worst = min(live, key=lambda i: (scores[i], i))
        candidates = [(best, worst)] if scores[best] > scores[worst] else []
    elif mode in ("ranked", "baseline"):
        order = sorted(live, key=lambda i: (-scores[i], i))  # best first; ties by index
        candidates = [
            (order[r], order[k - 1 - r]) for r in range(k // 2) if scores[order[r]] > scores[order[k - 1 - r]]
        ]
    else:
        candidates = [(i, j) for i in live for j in live if scores[i] > scores[j]]
    pairs = []
    for i, j in candidates:
        chosen, rejected = group.completions[i], group.completions[j]
        if chosen.token_ids == rejected.token_ids:
            continue  # identical responses carry no preference signal
        pairs.append(
            PreferencePair(
                **prompt_fields(group),
                chosen=chosen,
                rejected=rejected,
                chosen_score=scores[i],
                rejected_score=scores[j],
                win_prob=matrix[i][j],
                chosen_win_rate=rates[i],
                rejected_win_rate=rates[j],
                judge=judgement.judge,
            )
        )
    return pairs
