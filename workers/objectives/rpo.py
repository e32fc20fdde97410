"""RPO: DPO plus an NLL (SFT) term on the chosen response (Pang et al., "Iterative Reasoning Preference
Optimization", arXiv 2404.19733, §2; equation number not re-checked here; TRL `rpo_alpha`, used by DRIFT).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    NLL  = -sum_i logp_theta(y_w,i) / sum_i |y_w,i|      (token mean over ALL chosen tokens of the batch)
    loss = mean_i[ -log sigmoid(beta * h_i) ] + alpha * NLL

The NLL is TRL's (<= v0.28) `cross_entropy` over the batch's chosen completion tokens: a token mean, not a
mean of per-sequence means. To return per-pair losses whose mean is exactly the line above, pair i carries

    loss_i = -log sigmoid(beta * h_i) + alpha * (-logp_theta(y_w,i)) * B / sum_j |y_w,j|

so `losses` of a batch are coupled through sum_j |y_w,j| (a pair's loss depends on its batch-mates'
lengths); they equal the per-pair form only when all chosen lengths in the batch are equal. The trainer
calls the objective once per micro-batch, so with gradient accumulation the token mean is per micro-batch,
as in TRL. `rpo/nll` reports the per-pair share, whose mean over the batch is NLL.

Deviations: the paper normalises each example's NLL by its own length (a mean of per-sequence means); this
follows TRL's batch token mean instead, which DRIFT's released configs use (cacayaya/DRIFT `configs/`,
`rpo_alpha: 0.001`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class RPOLoss:
    """DPO sigmoid loss + alpha * token-mean NLL of the batch's chosen completions."""

    name: ClassVar[str] = "rpo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = True
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, alpha: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"RPO beta must be > 0, got {beta}")
        if not alpha >= 0.0:
            raise ValueError(f"RPO alpha must be >= 0, got {alpha}")
        self.beta = float(beta)
        self.alpha = float(alpha)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        scaled_margin = self.beta * (chosen_logratios - rejected_logratios)  # (B,) beta * h
        chosen_tokens = inputs.chosen_lengths.sum()  # () all chosen completion tokens of the batch
        nll_share = -inputs.policy_chosen_logps * (inputs.batch_size / chosen_tokens)  # (B,) mean = NLL
        losses = -F.logsigmoid(scaled_margin) + self.alpha * nll_share
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
            metrics={
                "rewards/sigmoid_neg_margin": torch.sigmoid(-scaled_margin).detach(),
                "rpo/nll": nll_share.detach(),
            },
        )
