"""cDPO: conservative DPO, i.e. DPO with label smoothing (Mitchell 2023, "A note on DPO with noisy
preferences and relationship to IPO"; no arXiv id, no equation number).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

The label y_w > y_l is trusted with probability 1 - eps, so the loss is a binary cross-entropy against
the soft label 1 - eps and is minimised at the finite margin beta * h = logit(1 - eps). This is TRL
`DPOTrainer(loss_type="sigmoid", label_smoothing=eps)` up to v0.28 (v0.29+ ignores `label_smoothing`
there). The same loss with a per-pair label is SPCE (`spce.py`): cDPO(eps) == SPCE(p = 1 - eps).

Deviations: none (config name `epsilon`, not TRL's `label_smoothing`, which also means rDPO's flip
rate in TRL).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class CDPOLoss:
    """`-(1-eps) logsigmoid(beta h) - eps logsigmoid(-beta h)` per pair."""

    name: ClassVar[str] = "cdpo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, epsilon: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"cDPO beta must be > 0, got {beta}")
        if not 0.0 <= epsilon < 0.5:
            raise ValueError(f"cDPO epsilon must be in [0, 0.5), got {epsilon}")
        self.beta = float(beta)
        self.epsilon = float(epsilon)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        scaled_margin = self.beta * (chosen_logratios - rejected_logratios)  # (B,) beta * h
        losses = -(1.0 - self.epsilon) * F.logsigmoid(scaled_margin) - self.epsilon * F.logsigmoid(
            -scaled_margin
        )
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
            metrics={"rewards/sigmoid_neg_margin": torch.sigmoid(-scaled_margin).detach()},
        )
