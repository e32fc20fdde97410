"""DPO: Direct Preference Optimization (Rafailov et al., arXiv 2305.18290, eq. 7).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = -log sigmoid(beta * h)

with logp the *sum* of completion-token log-probs (as TRL and uclaml/SPPO). Implicit rewards (logged,
detached): r(y) = beta * (logp_theta(y) - logp_ref(y)). This is TRL `DPOTrainer(loss_type="sigmoid")` without
label smoothing.

Deviations: none.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, require


class DPOLoss:
    """`-logsigmoid(beta * h)` per pair; also reports sigmoid(-beta * h), the DRIFT gradient-collapse check."""

    name: ClassVar[str] = "dpo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"DPO beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        ref_chosen = require(inputs.ref_chosen_logps, "ref_chosen_logps", self.name)
        ref_rejected = require(inputs.ref_rejected_logps, "ref_rejected_logps", self.name)
        chosen_logratios = inputs.policy_chosen_logps - ref_chosen  # (B,) lc
        rejected_logratios = inputs.policy_rejected_logps - ref_rejected  # (B,) lr
        scaled_margin = self.beta * (chosen_logratios - rejected_logratios)  # (B,) beta * h
        losses = -F.logsigmoid(scaled_margin)
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
            metrics={"rewards/sigmoid_neg_margin": torch.sigmoid(-scaled_margin).detach()},
        )
