"""NPO: Negative Preference Optimization, for unlearning (Zhang, Lin, Bai, Mei; arXiv 2404.05868; the NPO
loss of its §3, equation number not re-checked).

    lr   = logp_theta(y) - logp_ref(y)              (y = the pair's rejected / "forget" response)
    loss = (2 / beta) * log(1 + (pi_theta(y) / pi_ref(y))^beta) = -(2 / beta) * log sigmoid(-beta * lr)

Only the rejected response enters the loss; the chosen one only enters the logged reward. As beta -> 0
the gradient tends to that of gradient ascent on logp_theta(y) (up to scale).

Deviations: the reference log-prob of the chosen response is required too (the trainer computes both
anyway) so that rewards beta * (logp_theta - logp_ref) can be logged for both responses.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class NPOLoss:
    """`-(2/beta) logsigmoid(-beta * lr)` on the rejected response of each pair."""

    name: ClassVar[str] = "npo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"NPO beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        losses = -(2.0 / self.beta) * F.logsigmoid(-self.beta * rejected_logratios)
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
        )
