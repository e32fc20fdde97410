"""KTO, Kahneman-Tversky Optimisation on unpaired labelled answers (Ethayarajh et al., arXiv 2402.01306, Eq. 7
and Sec. 4.1's KL estimate; TRL `KTOTrainer`, `trl/trainer/kto_trainer.py` `_compute_loss`, loss_type "kto").

With r(x, y) = logp_theta(y|x) - logp_ref(y|x) (nats) and z_ref the reference point:

    z_ref = max(0, mean_j [logp_theta(y'_j|x_j) - logp_ref(y'_j|x_j)])   over mismatched pairs (x_j, y'_j) of
                                                                      the batch, detached (no gradient)
    desirable y:    loss = desirable_weight   * (1 - sigmoid(beta * (r - z_ref)))
    undesirable y:  loss = undesirable_weight * (1 - sigmoid(beta * (z_ref - r)))

z_ref estimates KL(pi_theta || pi_ref) from completions paired with prompts they do not answer (TRL rotates the
completions of a batch by one; the trainer's pairing: `workers/unpaired.py`), clamped at 0 and detached as in
TRL. Rewards (logged, detached): beta * r, TRL's `rewards/chosen` for desirable, `rewards/rejected` for
undesirable answers; `kl` (TRL's metric name) is z_ref. Defaults are TRL's KTOConfig: beta 0.1,
desirable_weight = undesirable_weight = 1.

Deviations: losses come back in input order (TRL concatenates the desirable then the undesirable ones; the mean
is the same); z_ref is per call (one micro-batch), as TRL's per device batch, without TRL's gather across
data-parallel ranks.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sparring.workers.objectives.base import UnpairedInputs, UnpairedOutput, reference_logratio, require


class KTOLoss:
    """Prospect-theoretic value of each labelled answer's implicit reward against the KL reference point."""

    name: ClassVar[str] = "kto"
    unpaired: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    needs_kl: ClassVar[bool] = True
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        for label, value in (("beta", beta), ("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
            if not value > 0.0:
                raise ValueError(f"KTO {label} must be > 0, got {value}")
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)

    def __call__(self, inputs: UnpairedInputs) -> UnpairedOutput:
        inputs = inputs.float32()
        logratio = reference_logratio(inputs, self.name)  # (N,) r
        policy_kl = require(inputs.policy_kl_logps, "policy_kl_logps", self.name)
        ref_kl = require(inputs.ref_kl_logps, "ref_kl_logps", self.name)
        z_ref = (policy_kl - ref_kl).mean().detach().clamp(min=0)  # scalar, no gradient
        desirable = inputs.labels.to(torch.bool)
        losses = torch.where(
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (logratio - z_ref))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z_ref - logratio))),
        )
        return UnpairedOutput(
            losses=losses,
            rewards=(self.beta * logratio).detach(),
            batch_metrics={"kl": z_ref},
        )
