"""BCO (pair): Binary Classifier Optimization on preference pairs (Jung et al., arXiv 2404.04656, the
reward-shift loss of its §3; equation number not re-checked), as TRL `DPOTrainer(loss_type="bco_pair")`.

    r_w   = beta * (logp_theta(y_w) - logp_ref(y_w)),   r_l = beta * (logp_theta(y_l) - logp_ref(y_l))
    delta = running mean of mean_batch(cat(r_w, r_l))          (updated with this batch BEFORE it is read)
    loss  = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))

`running_mean = True` is TRL <= v0.28: `RunningMoments.update(batch mean)` with mean 0 and count 1e-24
initially, so each call adds one observation (the batch mean) and the first call gives delta = that
batch's mean. `running_mean = False` is TRL >= v0.29: delta = 0. delta is a constant (no gradient).

State: the running mean and count (`state_dict()` / `load_state_dict()`, plain floats; `reset()` returns to
the initial state). Every call updates it, so a batch's losses depend on the batches before it and on its
own batch-mates; `bco/delta` reports the delta used.

Deviations: the running statistics are those of this process; TRL gathers them across data-parallel ranks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios

INITIAL_COUNT = 1e-24  # TRL RunningMoments: count starts at 1e-24 so the first update is the batch mean


class BCOPairLoss:
    """Paired BCO: logistic loss of chosen (label 1) and rejected (label 0) rewards shifted by delta."""

    name: ClassVar[str] = "bco_pair"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = False
    stateful: ClassVar[bool] = True

    def __init__(self, beta: float, running_mean: bool = True) -> None:
        if not beta > 0.0:
            raise ValueError(f"BCO beta must be > 0, got {beta}")
        self.beta = float(beta)
        self.running_mean = bool(running_mean)
        self.mean = 0.0
        self.count = INITIAL_COUNT

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = float(state["mean"])
        self.count = float(state["count"])

    def reset(self) -> None:
        self.mean = 0.0
        self.count = INITIAL_COUNT

    def update(self, batch_mean: float) -> float:
        """Add one observation to the running mean (TRL `RunningMoments.update` of a scalar); the new mean."""
        self.count += 1.0
        self.mean += (batch_mean - self.mean) / self.count
        return self.mean

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        chosen_rewards = self.beta * chosen_logratios  # (B,) r_w
        rejected_rewards = self.beta * rejected_logratios  # (B,) r_l
        delta = 0.0
        if self.running_mean:
            delta = self.update(float(torch.cat((chosen_rewards, rejected_rewards)).detach().mean()))
        losses = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
        return LossOutput(
            losses=losses,
            chosen_rewards=chosen_rewards.detach(),
            rejected_rewards=rejected_rewards.detach(),
            metrics={"bco/delta": torch.full_like(losses, delta).detach()},
        )
