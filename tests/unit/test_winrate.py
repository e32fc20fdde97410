"""SPPO win-rate recipe: the algorithms.md §6 probability-pipeline vector and the matrix invariants."""

from __future__ import annotations

import math
import random

import pytest

from sparring.workers.recipes.winrate import (
    pairwise_probs_from_scores,
    row_win_rates,
    sigmoid,
    sppo_probabilities,
    sppo_probabilities_from_scores,
)


def test_sppo_probability_pipeline_vector() -> None:
    """algorithms.md §6: PairRM scores s = [1, .5, 0, -.5, -1], K = 5, so w = 0 and l = 4.

    chosen_probs      = P[0][4] = sigmoid(1 - (-1)) = sigmoid(2) = 0.8807970780
    chosen_probs_win  = (sigmoid(0) + sigmoid(.5) + sigmoid(1) + sigmoid(1.5) + sigmoid(2)) / 5
                      = (0.5 + 0.6224593312 + 0.7310585786 + 0.8175744762 + 0.8807970780) / 5 = 0.7103778928
    chosen_probs_lose = (sigmoid(-2) + sigmoid(-1.5) + sigmoid(-1) + sigmoid(-.5) + sigmoid(0)) / 5
                      = 1 - chosen_probs_win = 0.2896221072     (row means include the self term 0.5)
    """
    probs = sppo_probabilities_from_scores([1.0, 0.5, 0.0, -0.5, -1.0])
    assert (probs.chosen, probs.rejected) == (0, 4)
    assert probs.chosen_probs == pytest.approx(0.8807970780, abs=1e-10)
    assert probs.chosen_probs_win == pytest.approx(0.7103778928, abs=1e-10)
    assert probs.chosen_probs_lose == pytest.approx(0.2896221072, abs=1e-10)


def test_matrix_is_bradley_terry_with_half_diagonal() -> None:
    rng = random.Random(0)
    scores = [rng.uniform(-5, 5) for _ in range(7)]
    p = pairwise_probs_from_scores(scores)
    for i in range(7):
        assert p[i][i] == 0.5
        for j in range(7):
            assert p[i][j] + p[j][i] == pytest.approx(1.0, abs=1e-12)
            assert p[i][j] == pytest.approx(1.0 / (1.0 + math.exp(scores[j] - scores[i])), abs=1e-12)


def test_row_win_rates_are_bounded_by_the_self_term() -> None:
    """With the self term, a row mean is in [1/(2K), 1 - 1/(2K)]: [0.1, 0.9] for K = 5; they average 1/2."""
    p = pairwise_probs_from_scores([100.0, 50.0, 0.0, -50.0, -100.0])
    rates = row_win_rates(p)
    assert rates[0] == pytest.approx(0.9, abs=1e-12) and rates[-1] == pytest.approx(0.1, abs=1e-12)
    assert sum(rates) / 5 == pytest.approx(0.5, abs=1e-12)


def test_from_matrix_and_ties() -> None:
    """A judge's own win matrix is used as given; score ties pick the first index (numpy argmax/argmin)."""
    matrix = [[0.5, 0.9, 0.6], [0.1, 0.5, 0.3], [0.4, 0.7, 0.5]]
    probs = sppo_probabilities(matrix, chosen=0, rejected=1)
    assert probs.chosen_probs == 0.9
    assert probs.chosen_probs_win == pytest.approx(2.0 / 3.0)
    assert probs.chosen_probs_lose == pytest.approx(0.3)
    tied = sppo_probabilities_from_scores([1.0, 1.0, 0.0, 0.0])
    assert (tied.chosen, tied.rejected) == (0, 2)


def test_sigmoid_does_not_overflow() -> None:
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="square"):
        row_win_rates([[0.5, 0.5]])
    with pytest.raises(ValueError, match="at least 2"):
        sppo_probabilities_from_scores([1.0])
