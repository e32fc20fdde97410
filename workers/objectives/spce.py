"""SPCE: soft-preference cross-entropy of OSP, Online Self-Preferring language models (Zhai et al.;
arXiv 2405.14103; equation number unknown: the paper body was not available).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = -[ p * log sigmoid(beta * h) + (1 - p) * log sigmoid(-beta * h) ]

p = P(y_w > y_l) is the judged preference strength of the pair (`LossInputs.win_prob`), in [0.5, 1] once
the pair is oriented so that y_w is the higher-ranked response (any p in [0, 1] is accepted). The loss is
minimised at the finite margin beta * h = logit(p); with a constant p it is cDPO with eps = 1 - p.

Deviations: the loss form is an [UNVERIFIED] reconstruction from the abstract (soft-label binary cross-entropy
on the DPO margin; docs/algorithms.md); how p is obtained (self-judging against a baseline response, ranked
pairing) is the pair builder's job, not this module's.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios, require


class SPCELoss:
    """Binary cross-entropy of sigmoid(beta h) against the per-pair soft label p = win_prob."""

    name: ClassVar[str] = "spce"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = True
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"SPCE beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        strength = require(inputs.win_prob, "win_prob", self.name)  # (B,) p
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        scaled_margin = self.beta * (chosen_logratios - rejected_logratios)  # (B,) beta * h
        losses = -(strength * F.logsigmoid(scaled_margin) + (1.0 - strength) * F.logsigmoid(-scaled_margin))
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
            metrics={"rewards/sigmoid_neg_margin": torch.sigmoid(-scaled_margin).detach()},
        )
