"""INPO: Iterative Nash Policy Optimization (Zhang et al., arXiv 2407.00617, ICLR 2025; the loss L_t of
its Algorithm 1, equation number not re-checked; cross-checked against two re-implementations: ntlfi/ENPO
`workers/train_inpo.py::INPOTrainer.compute_loss` and XuHuang441/SimPO `inpo_scripts/`).

    D_theta = logp_theta(y_w) - logp_theta(y_l)        (trainable policy)
    D_ref   = logp_ref(y_w)   - logp_ref(y_l)          (fixed pi_ref, e.g. the SFT model)
    D_t     = logp_t(y_w)     - logp_t(y_l)            (pi_t, the policy at the iteration start)
    h       = D_theta - ratio * D_ref - (1 - ratio) * D_t
    loss    = (h - 1 / (2 * beta))^2

Parameter mapping (two "eta"s circulate). This class takes the code parameterisation:
`beta` (what the re-implementations call `eta`; the same beta as DPO/IPO) and `ratio` in (0, 1). The
paper's OMD step is eta = 1/beta (target eta/2) and its KL strength is tau = ratio/eta = ratio * beta;
ENPO's (eta', tau') are (beta, ratio * beta). Paper defaults: beta = 0.0075 (target ~66.7 nats),
ratio = 1/3. At t = 1, pi_t = pi_ref and the loss is unnormalised IPO with the same beta.

Logged rewards: beta * (logp_theta(y) - ratio * logp_ref(y) - (1 - ratio) * logp_t(y)), so that
chosen - rejected = beta * h.

Deviations: none. pi_ref must be the FIXED initial policy (`algorithm.reference: initial`); with the
iteration-start reference, pi_ref = pi_t and `ratio` has no effect.
"""

from __future__ import annotations

from typing import ClassVar

from sparring.workers.objectives.base import LossInputs, LossOutput, require


class INPOLoss:
    """Squared residual of the pi_ref/pi_t-mixed log-ratio margin to 1/(2 beta)."""

    name: ClassVar[str] = "inpo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = True
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, ratio: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"INPO beta must be > 0, got {beta}")
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"INPO ratio (= eta * tau) must be in (0, 1), got {ratio}")
        self.beta = float(beta)
        self.ratio = float(ratio)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        ref_chosen = require(inputs.ref_chosen_logps, "ref_chosen_logps", self.name)
        ref_rejected = require(inputs.ref_rejected_logps, "ref_rejected_logps", self.name)
        prev_chosen = require(inputs.prev_chosen_logps, "prev_chosen_logps", self.name)
        prev_rejected = require(inputs.prev_rejected_logps, "prev_rejected_logps", self.name)
        r = self.ratio
        # per-response anchored log-ratio; h = chosen - rejected
        chosen_anchored = inputs.policy_chosen_logps - r * ref_chosen - (1.0 - r) * prev_chosen  # (B,)
        rejected_anchored = inputs.policy_rejected_logps - r * ref_rejected - (1.0 - r) * prev_rejected
        residual = (chosen_anchored - rejected_anchored) - 1.0 / (2.0 * self.beta)  # (B,) h - target
        return LossOutput(
            losses=residual.square(),
            chosen_rewards=(self.beta * chosen_anchored).detach(),
            rejected_rewards=(self.beta * rejected_anchored).detach(),
            metrics={"inpo/residual": residual.detach()},
        )
