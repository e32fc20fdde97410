"""SPPO: Self-Play Preference Optimization (Wu et al., arXiv 2405.00675, ICLR 2025): the three regression
losses of the SPPO family, all parameterised by the step size `eta` of the multiplicative-weights update

    pi_{t+1}(y|x) ∝ pi_t(y|x) * exp(eta * P(y > pi_t | x))                  (paper, Algorithm 1)

Parameter mapping: eta = 1/beta, where beta is the `beta` of uclaml/SPPO's `sppo_loss` and of TRL's
`sppo_hard`. The SPPO scripts' beta = 0.001 is eta = 1000 (the default); TRL's default beta = 0.1 is
eta = 10. The config name is `eta`, never `beta`: here `beta` is the DPO family's.

The reference is pi_t, the policy at the iteration start (`algorithm.reference: iteration_start`). With
lc = logp_theta(y_w) - logp_t(y_w) and lr = logp_theta(y_l) - logp_t(y_l) (summed log-probs, fp32; with
eta = 1000 the targets (P - 1/2) * eta are ~1e2 nats and losses ~1e4), logged rewards are
(1/eta) * lc and (1/eta) * lr, as uclaml/SPPO logs beta * logratio.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios, require


def _check_eta(eta: float, objective: str) -> float:
    if not eta > 0.0:
        raise ValueError(f"{objective} eta must be > 0, got {eta}")
    return float(eta)


def _output(
    losses: Tensor, eta: float, lc: Tensor, lr: Tensor, chosen_res: Tensor, rejected_res: Tensor
) -> LossOutput:
    return LossOutput(
        losses=losses,
        chosen_rewards=(lc / eta).detach(),
        rejected_rewards=(lr / eta).detach(),
        metrics={
            "sppo/chosen_residual": chosen_res.detach(),
            "sppo/rejected_residual": rejected_res.detach(),
        },
    )


class SPPOLoss:
    """SPPO with soft win-rate labels: uclaml/SPPO `sppo/trainer.py::sppo_loss`, branch `"sppo"` (eq. of
    Algorithm 1, step 'update'; the partition term log Z is approximated by eta/2).

        loss = [ (lc - eta * (P_w - 1/2))^2 + (lr - eta * (P_l - 1/2))^2 ] / 2

    P_w = P^(y_w > pi_t | x) and P_l = P^(y_l > pi_t | x) are the win rates of each response against the
    current policy (`chosen_win_rate`, `rejected_win_rate`): row means of the K x K pairwise matrix
    including the self term 1/2 (SPPO columns `chosen_probs_win` / `chosen_probs_lose`; computed by
    `sparring.workers.recipes.winrate`).

    Deviations: the win rates arrive as float32, not float64 (the residual is formed in fp32).
    """

    name: ClassVar[str] = "sppo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = True
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, eta: float) -> None:
        self.eta = _check_eta(eta, self.name)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_win_rate = require(inputs.chosen_win_rate, "chosen_win_rate", self.name)  # (B,) P_w
        rejected_win_rate = require(inputs.rejected_win_rate, "rejected_win_rate", self.name)  # (B,) P_l
        lc, lr = reference_logratios(inputs, self.name)  # (B,)
        chosen_res = lc - self.eta * (chosen_win_rate - 0.5)
        rejected_res = lr - self.eta * (rejected_win_rate - 0.5)
        losses = (chosen_res.square() + rejected_res.square()) / 2.0
        return _output(losses, self.eta, lc, lr, chosen_res, rejected_res)


class SPPOSingleLoss:
    """SPPO with the pairwise probability only: uclaml/SPPO `sppo_loss`, branch `"sppo_single"`.

        loss = [ (lc - eta * (p - 1/2))^2 + (lr + eta * (p - 1/2))^2 ] / 2,   p = P(y_w > y_l)

    p is the judge's pairwise probability (`win_prob`, SPPO column `chosen_probs`).

    Deviations: none.
    """

    name: ClassVar[str] = "sppo_single"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = True
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, eta: float) -> None:
        self.eta = _check_eta(eta, self.name)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        win_prob = require(inputs.win_prob, "win_prob", self.name)  # (B,) p
        lc, lr = reference_logratios(inputs, self.name)  # (B,)
        target = self.eta * (win_prob - 0.5)  # (B,)
        chosen_res, rejected_res = lc - target, lr + target
        losses = (chosen_res.square() + rejected_res.square()) / 2.0
        return _output(losses, self.eta, lc, lr, chosen_res, rejected_res)


class SPPOHardLoss:
    """SPPO with hard labels P_w = 1, P_l = 0: TRL `DPOTrainer(loss_type="sppo_hard")` (PR #1612, fixed in
    #1615, commit 75de236).

        loss = (lc - eta/2)^2 + (lr + eta/2)^2          (TRL: (lc - 1/(2 beta))^2 + (lr + 1/(2 beta))^2)

    Unlike the official `"sppo"` branch there is NO division by 2; kept as in TRL so its numbers match.

    Deviations: none (parameterised by eta = 1/beta instead of TRL's beta).
    """

    name: ClassVar[str] = "sppo_hard"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, eta: float) -> None:
        self.eta = _check_eta(eta, self.name)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        lc, lr = reference_logratios(inputs, self.name)  # (B,)
        chosen_res = lc - self.eta / 2.0
        rejected_res = lr + self.eta / 2.0
        losses = chosen_res.square() + rejected_res.square()  # no 1/2, as in TRL
        return _output(losses, self.eta, lc, lr, chosen_res, rejected_res)
