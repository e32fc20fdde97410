"""rDPO: provably robust DPO under random preference flips (Chowdhury, Kini, Natarajan; arXiv 2403.00409,
ICML 2024; the de-biased loss of its §3, equation number not re-checked here).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = [ (1 - eps) * (-log sigmoid(beta * h)) - eps * (-log sigmoid(-beta * h)) ] / (1 - 2 * eps)

with eps the known probability that a label was flipped. The loss is an unbiased estimate of the DPO loss
on the clean labels; a single pair's loss can be NEGATIVE (the second term is subtracted). TRL
`DPOTrainer(loss_type="robust", label_smoothing=eps)`.

Deviations: none (config name `flip_rate`, not TRL's shared `label_smoothing`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class RDPOLoss:
    """The flip-rate de-biased DPO loss; eps in [0, 0.5) (at 0.5 the labels carry no information)."""

    name: ClassVar[str] = "rdpo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, flip_rate: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"rDPO beta must be > 0, got {beta}")
        if not 0.0 <= flip_rate < 0.5:
            raise ValueError(f"rDPO flip rate must be in [0, 0.5), got {flip_rate}")
        self.beta = float(beta)
        self.flip_rate = float(flip_rate)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        scaled_margin = self.beta * (chosen_logratios - rejected_logratios)  # (B,) beta * h
        eps = self.flip_rate
        losses = (-(1.0 - eps) * F.logsigmoid(scaled_margin) + eps * F.logsigmoid(-scaled_margin)) / (
            1.0 - 2.0 * eps
        )
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
            metrics={"rewards/sigmoid_neg_margin": torch.sigmoid(-scaled_margin).detach()},
        )
