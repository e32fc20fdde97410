"""R-DPO, DPO with a length regulariser (Park et al., "Disentangling Length from Quality in Direct Preference
Optimization", arXiv 2403.19159). Named `length_dpo` here: `rdpo` is robust DPO (Chowdhury et al.).

The RLHF objective gains a length penalty, max E[r(x, y)] - alpha |y| - beta KL; its optimal policy implies
r(x, y) = beta * log pi_theta(y|x) / pi_ref(y|x) + alpha |y| (+ a prompt constant), and Bradley-Terry on it gives

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = -log sigmoid(beta * h + alpha * (|y_w| - |y_l|))

|y| counts completion tokens. A longer chosen answer already earns margin from its length, so the policy is not
pushed to learn length as a proxy for preference. alpha is in nats per token; the paper sweeps it (no single
recommended value), so it has no default here. Rewards (logged, detached): beta * (logp_theta(y) - logp_ref(y)).

Deviations: none known.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class LengthDPOLoss:
    """DPO whose margin is offset by alpha times the length difference (chosen minus rejected)."""

    name: ClassVar[str] = "length_dpo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = True
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, alpha: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"length_dpo beta must be > 0, got {beta}")
        if not alpha >= 0.0:
            raise ValueError(f"length_dpo alpha must be >= 0, got {alpha}")
        self.beta = float(beta)
        self.alpha = float(alpha)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        lc, lr = reference_logratios(inputs, self.name)  # (B,)
        length_gap = inputs.chosen_lengths - inputs.rejected_lengths  # (B,) tokens
        losses = -F.logsigmoid(self.beta * (lc - lr) + self.alpha * length_gap)
        return LossOutput(
            losses=losses, chosen_rewards=(self.beta * lc).detach(), rejected_rewards=(self.beta * lr).detach()
        )
