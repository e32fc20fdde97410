"""Hinge loss on the DPO margin (SLiC-HF's calibration loss, Zhao et al., arXiv 2305.10425, on the normalised
likelihood as RSO uses it, Liu et al., arXiv 2309.06657; TRL `DPOTrainer(loss_type="hinge")`,
`trl/trainer/dpo_trainer.py`).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = max(0, 1 - beta * h)

beta is the inverse margin: pairs whose scaled margin exceeds 1 give no gradient. Implicit rewards (logged,
detached): beta * (logp_theta(y) - logp_ref(y)).

Deviations: none from TRL; SLiC's original form has no reference log-ratio (it regularises with an SFT term).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class HingeLoss:
    """`relu(1 - beta * h)` per pair."""

    name: ClassVar[str] = "hinge"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"hinge beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        losses = torch.relu(1.0 - self.beta * (chosen_logratios - rejected_logratios))
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
        )
