"""SimPO: Simple Preference Optimization with a reference-free reward (Meng, Xia, Chen; arXiv 2405.14734,
NeurIPS 2024, eq. 6 [number from memory, not re-checked]).

    r(y)  = (beta / |y|) * logp_theta(y)                 (length-averaged log-prob; no reference model)
    loss  = -log sigmoid( r(y_w) - r(y_l) - gamma )

|y| is the completion-token count (`chosen_lengths` / `rejected_lengths`). TRL `CPOTrainer(loss_type=
"simpo", simpo_gamma=gamma, cpo_alpha=0)` computes the same value as -log sigmoid(beta * (D_avg - gamma /
beta)). Its beta (2.0-10 in the paper's recipes) is not the DPO family's beta (0.1): it is the `beta` of
the simpo objective config only (`algorithm: {objective: simpo, beta: 2.0, gamma: 1.0}`, TRL's names);
`gamma` is the absolute margin gamma (the official configs give gamma/beta).
Logged rewards are r(y_w), r(y_l).

Deviations: none (pure SimPO: no CPO NLL term, i.e. TRL's `cpo_alpha = 0`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput


class SimPOLoss:
    """`-logsigmoid(beta/|y_w| logp(y_w) - beta/|y_l| logp(y_l) - gamma)` per pair; reference-free."""

    name: ClassVar[str] = "simpo"
    needs_reference: ClassVar[bool] = False
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = True
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, gamma: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"SimPO beta must be > 0, got {beta}")
        if not gamma >= 0.0:
            raise ValueError(f"SimPO gamma must be >= 0, got {gamma}")
        self.beta = float(beta)
        self.gamma = float(gamma)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_rewards = self.beta * inputs.policy_chosen_logps / inputs.chosen_lengths  # (B,)
        rejected_rewards = self.beta * inputs.policy_rejected_logps / inputs.rejected_lengths  # (B,)
        logits = chosen_rewards - rejected_rewards - self.gamma  # (B,)
        return LossOutput(
            losses=-F.logsigmoid(logits),
            chosen_rewards=chosen_rewards.detach(),
            rejected_rewards=rejected_rewards.detach(),
            metrics={"rewards/sigmoid_neg_margin": torch.sigmoid(-logits).detach()},
        )
