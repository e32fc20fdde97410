"""BCO, Binary Classifier Optimization on unpaired labelled answers (Jung et al., arXiv 2404.04656, Sec. 3: the
log-sigmoid classifier on the implicit reward with the reward shift delta), as TRL's `BCOTrainer.bco_loss`
(`trl/experimental/bco/bco_trainer.py`) without its optional underlying-distribution matching (UDM).

    r     = beta * (logp_theta(y|x) - logp_ref(y|x))
    delta = running mean of every reward seen so far, this batch's included (updated BEFORE it is read)
    desirable y:    loss = -log sigmoid(r - delta)            (classified as 1)
    undesirable y:  loss = -log sigmoid(-(r - delta))         (classified as 0)

The running mean is TRL's `RunningMoments.update(rewards)` of the batch's N rewards: count starts at 1e-24,
count += N, mean += (mean(rewards) - mean) * N / count, so the first call's delta is that batch's mean reward
and later batches weigh by their size (unlike `bco_pair`, whose update adds one observation per batch).
delta is a constant (no gradient). Default beta 0.1 (TRL BCOConfig).

State: the running mean and count (`state_dict()` / `load_state_dict()`, plain floats; `reset()` at the start
of every iteration, as the trainer resets it for a fresh run). `delta` (TRL's metric name) reports it.

Left out: UDM (`match_underlying_distribution`: a prompt-embedding classifier whose density ratio reweights
undesirable examples when the thumbs-up and thumbs-down prompts differ in distribution: the paper's
underlying distribution matching, TRL `_get_udm_weight`); the statistics are this process's, not gathered across data-parallel ranks as in TRL.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparring.workers.objectives.base import UnpairedInputs, UnpairedOutput, reference_logratio

INITIAL_COUNT = 1e-24  # TRL RunningMoments


class BCOLoss:
    """Unpaired BCO: logistic loss of desirable (label 1) and undesirable (label 0) rewards shifted by delta."""

    name: ClassVar[str] = "bco"
    unpaired: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    needs_kl: ClassVar[bool] = False
    stateful: ClassVar[bool] = True

    def __init__(self, beta: float) -> None:
        if not beta > 0.0:
            raise ValueError(f"BCO beta must be > 0, got {beta}")
        self.beta = float(beta)
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

    def update(self, rewards: torch.Tensor) -> float:
        """Add a batch of rewards to the running mean (TRL `RunningMoments.update`); the new mean."""
        n = float(rewards.numel())
        total = self.count + n
        self.mean += (float(rewards.mean()) - self.mean) * n / total
        self.count = total
        return self.mean

    def __call__(self, inputs: UnpairedInputs) -> UnpairedOutput:
        inputs = inputs.float32()
        rewards = self.beta * reference_logratio(inputs, self.name)  # (N,) r
        delta = self.update(rewards.detach())
        shifted = rewards - delta
        losses = torch.where(inputs.labels.to(torch.bool), -F.logsigmoid(shifted), -F.logsigmoid(-shifted))
        return UnpairedOutput(
            losses=losses,
            rewards=rewards.detach(),
            batch_metrics={"delta": torch.tensor(delta, dtype=rewards.dtype)},
        )
