"""Win rates for SPPO: a judge's K responses -> pairwise probabilities and each response's win rate.

Follows uclaml/SPPO `scripts/compute_prob.py` (`from_ranks`: P; `prepare_score`: the pair and row means):

    P[i][j] = sigmoid(s_i - s_j)                  (PairRM scores s; the diagonal is exactly 1/2)
    P^(y_i > pi_t) = (1/K) * sum_j P[i][j]        (row mean INCLUDING the self term 1/2)
    chosen = argmax_i s_i, rejected = argmin_i s_i (first index on ties, as numpy's argmax/argmin)
    chosen_probs = P[w][l], chosen_probs_win = rowmean(P)[w], chosen_probs_lose = rowmean(P)[l]

The row mean is an estimate of the win rate against the policy that sampled the K responses; it lies in
[1/(2K), 1 - 1/(2K)] because of the self term. These functions know nothing about models or records: they
take scores or a win matrix and return floats. Pure Python (K is small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def pairwise_probs_from_scores(scores: Sequence[float]) -> list[list[float]]:
    """P[i][j] = P(y_i beats y_j) = sigmoid(s_i - s_j) under Bradley-Terry; K x K with P[i][i] = 0.5."""
    return [[sigmoid(si - sj) for sj in scores] for si in scores]


BASELINE = 0  # OSP's baseline-anchored pairing: the sample every other is compared with (the group's first)


def logit(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] (a hard 0 or 1 stays finite)."""
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def matrix_through_baseline(against: Sequence[float], baseline: int = BASELINE) -> list[list[float]]:
    """K x K P[i][j] = sigmoid(logit s_i - logit s_j) from s_i = P(y_i beats y_b) only: Bradley-Terry
    strengths composed through the shared baseline b (its own s_b = 1/2, whatever `against[b]` says).

    OSP's ranked pairing against an intermediate baseline (arXiv 2405.14103, via the LLM-as-a-judge survey
    arXiv 2411.16594 Sec. 4.2.6: O(K) comparisons instead of O(K^2)); the composition is the reference's
    reconstruction (shared/reference/algorithms.md Sec. 4.2 step 3). ValueError for an empty `against`, a
    baseline outside it or a value outside [0, 1]."""
    k = len(against)
    if not 0 <= baseline < k:
        raise ValueError(f"baseline {baseline} outside a group of {k}")
    if any(not 0.0 <= s <= 1.0 for s in against):
        raise ValueError(f"P(y_i beats the baseline) must lie in [0, 1], got {list(against)}")
    z = [0.0 if i == baseline else logit(s) for i, s in enumerate(against)]
    return [[0.5 if i == j else sigmoid(z[i] - z[j]) for j in range(k)] for i in range(k)]


def row_win_rates(win_matrix: Sequence[Sequence[float]]) -> list[float]:
    """Each response's win rate against the group: the mean of its row, self term included (SPPO)."""
    k = len(win_matrix)
    if k == 0 or any(len(row) != k for row in win_matrix):
        raise ValueError(f"win matrix must be square and non-empty, got {k} rows")
    return [sum(row) / k for row in win_matrix]


@dataclass(frozen=True)
class SPPOProbabilities:
    """The SPPO dataset columns of one prompt's group, with the indices of the chosen/rejected responses."""

    chosen: int  # w
    rejected: int  # l
    chosen_probs: float  # P(y_w > y_l)
    chosen_probs_win: float  # P^(y_w > pi_t)
    chosen_probs_lose: float  # P^(y_l > pi_t)


def sppo_probabilities(
    win_matrix: Sequence[Sequence[float]], chosen: int, rejected: int
) -> SPPOProbabilities:
    """SPPO columns for a given chosen/rejected pair of a K x K win matrix (P[i][j] = P(i beats j))."""
    rates = row_win_rates(win_matrix)
    return SPPOProbabilities(
        chosen=chosen,
        rejected=rejected,
        chosen_probs=float(win_matrix[chosen][rejected]),
        chosen_probs_win=rates[chosen],
        chosen_probs_lose=rates[rejected],
    )


def sppo_probabilities_from_scores(scores: Sequence[float]) -> SPPOProbabilities:
    """SPPO columns from per-response scores (PairRM): best vs worst by score, Bradley-Terry matrix."""
    if len(scores) < 2:
        raise ValueError(f"need at least 2 scored responses, got {len(scores)}")
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # first index on ties
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return sppo_probabilities(pairwise_probs_from_scores(scores), best, worst)
