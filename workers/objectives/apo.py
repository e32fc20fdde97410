"""APO, anchored preference optimisation (D'Oosterlinck et al., arXiv 2408.06266, Eqs. 7 and 8; TRL
`DPOTrainer(loss_type="apo_zero" | "apo_down")`, `trl/trainer/dpo_trainer.py`).

With lc = logp_theta(y_w) - logp_ref(y_w), lr = logp_theta(y_l) - logp_ref(y_l):

    apo_zero: loss = (1 - sigmoid(beta * lc)) + sigmoid(beta * lr)
        raise the chosen likelihood, lower the rejected one: for chosen answers better than the policy's own;
    apo_down: loss = sigmoid(beta * lc) + (1 - sigmoid(beta * (lc - lr)))
        lower both, the rejected more: for chosen answers worse than the policy's own.

Rewards (logged, detached): beta * lc and beta * lr. Each loss is bounded in [0, 2].

Deviations: none from TRL.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class _APOLoss:
    name: ClassVar[str]
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"{self.name} beta must be > 0, got {beta}")
        self.beta = float(beta)

    def _losses(self, lc: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        lc, lr = reference_logratios(inputs, self.name)  # (B,)
        return LossOutput(
            losses=self._losses(lc, lr),
            chosen_rewards=(self.beta * lc).detach(),
            rejected_rewards=(self.beta * lr).detach(),
        )


class APOZeroLoss(_APOLoss):
    """APO-zero (Eq. 7): chosen likelihood up, rejected down."""

    name: ClassVar[str] = "apo_zero"

    def _losses(self, lc: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return (1.0 - torch.sigmoid(self.beta * lc)) + torch.sigmoid(self.beta * lr)


class APODownLoss(_APOLoss):
    """APO-down (Eq. 8): both likelihoods down, the rejected one more."""

    name: ClassVar[str] = "apo_down"

    def _losses(self, lc: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.beta * lc) + (1.0 - torch.sigmoid(self.beta * (lc - lr)))
