"""DPO-Positive (Pal et al., "Smaug", arXiv 2402.13228, Eq. 3).

    h       = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    penalty = max(0, logp_ref(y_w) - logp_theta(y_w))        (the chosen answer fell below the reference)
    loss    = -log sigmoid(beta * (h - dpop_lambda * penalty))

DPO can lower the chosen answer's likelihood while the margin grows (most often when chosen and rejected
differ in a few tokens); the penalty makes that cost `dpop_lambda` per nat. With the chosen likelihood above
the reference it is plain DPO. Rewards (logged, detached): beta * (logp_theta(y) - logp_ref(y)); the
penalty is reported as `dpop/penalty` (nats).

Deviations: none known. The default lambda 50 is the value reimplementations of the Smaug recipe default to
(e.g. PaddleNLP's DPO criterion `dpop_lambda=50`); it has not been re-checked against the paper's text here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class DPOPLoss:
    """DPO with a hinge penalty on the chosen log-ratio inside the sigmoid."""

    name: ClassVar[str] = "dpop"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, dpop_lambda: float = 50.0) -> None:
        if not beta > 0.0:
            raise ValueError(f"DPOP beta must be > 0, got {beta}")
        if not dpop_lambda >= 0.0:
            raise ValueError(f"DPOP dpop_lambda must be >= 0, got {dpop_lambda}")
        self.beta = float(beta)
        self.dpop_lambda = float(dpop_lambda)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        lc, lr = reference_logratios(inputs, self.name)  # (B,)
        penalty = torch.clamp(-lc, min=0.0)  # (B,) nats the chosen answer lost against the reference
        losses = -F.logsigmoid(self.beta * (lc - lr - self.dpop_lambda * penalty))
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * lc).detach(),
            rejected_rewards=(self.beta * lr).detach(),
            metrics={"dpop/penalty": penalty.detach()},
        )
