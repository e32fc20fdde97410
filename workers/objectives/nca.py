"""NCA, noise-contrastive alignment for pairs (Chen et al., arXiv 2402.05369, its pairwise K=2 form;
TRL `DPOTrainer(loss_type="nca_pair")`, `trl/trainer/dpo_trainer.py`).

    r(y) = beta * (logp_theta(y) - logp_ref(y))
    loss = -log sigmoid(r(y_w)) - 1/2 log sigmoid(-r(y_w)) - 1/2 log sigmoid(-r(y_l))

Unlike DPO, each answer's own reward is pushed (the chosen one up in absolute terms, not only relative to the
rejected one), which counters the falling chosen likelihood of DPO. Rewards (logged, detached): r(y).

Deviations: none from TRL.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class NCAPairLoss:
    """NCA's pairwise form over the two implicit rewards."""

    name: ClassVar[str] = "nca_pair"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"NCA beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)
        chosen_rewards = self.beta * chosen_logratios  # (B,)
        rejected_rewards = self.beta * rejected_logratios  # (B,)
        losses = (
            -F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards) - 0.5 * F.logsigmoid(-rejected_rewards)
        )
        return LossOutput(losses=losses, chosen_rewards=chosen_rewards.detach(), rejected_rewards=rejected_rewards.detach())
