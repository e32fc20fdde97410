"""ORPO, odds-ratio preference optimisation (Hong et al., arXiv 2403.07691, Eqs. 4-7; TRL `ORPOTrainer.odds_ratio_loss`,
`trl/experimental/orpo/orpo_trainer.py`). Reference-free: no reference model, one loss with an SFT term.

With m(y) = logp_theta(y) / |y| the mean completion-token log-prob (ORPO scores answers by it) and
log odds(y) = m(y) - log(1 - exp(m(y))):

    L_OR = -log sigmoid(log odds(y_w) - log odds(y_l))
    NLL  = -sum_i logp_theta(y_w,i) / sum_i |y_w,i|          (token mean over ALL chosen tokens of the batch)
    loss = NLL + beta * mean_i L_OR,i                         (beta is the paper's lambda, TRL's `beta`)

The NLL is split over pairs as in RPO (`workers/objectives/rpo.py`): pair i carries -logp_theta(y_w,i) * B /
sum_j |y_w,j|, so the per-pair losses of a batch are coupled through its chosen token count and their mean is
exactly the line above. log(1 - exp(m)) is computed as log(-expm1(m)) for m > -log 2 and log1p(-exp(m))
otherwise (Maechler's log1mexp), finite for every m < 0. Rewards (logged, detached): beta * m(y), as TRL logs
them; `orpo/log_odds_ratio` and `orpo/nll` are reported.

Deviations: none from TRL's arithmetic; the trainer calls the objective once per micro-batch, so with gradient
accumulation the NLL's token mean is per micro-batch, as in TRL.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sparring.workers.objectives.base import LossInputs, LossOutput


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, elementwise and stable at both ends (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"); x >= 0 gives -inf or nan, as the expression does."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class ORPOLoss:
    """NLL on the chosen answers + beta * odds-ratio loss, reference-free."""

    name: ClassVar[str] = "orpo"
    needs_reference: ClassVar[bool] = False
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = True
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"ORPO beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_mean = inputs.policy_chosen_logps / inputs.chosen_lengths  # (B,) m(y_w) < 0
        rejected_mean = inputs.policy_rejected_logps / inputs.rejected_lengths  # (B,) m(y_l)
        log_odds_ratio = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
        odds_ratio_losses = -F.logsigmoid(log_odds_ratio)  # (B,)
        nll_share = -inputs.policy_chosen_logps * (inputs.batch_size / inputs.chosen_lengths.sum())  # mean = NLL
        return LossOutput(
            losses=nll_share + self.beta * odds_ratio_losses,
            chosen_rewards=(self.beta * chosen_mean).detach(),
            rejected_rewards=(self.beta * rejected_mean).detach(),
            metrics={"orpo/log_odds_ratio": log_odds_ratio.detach(), "orpo/nll": nll_share.detach()},
        )
