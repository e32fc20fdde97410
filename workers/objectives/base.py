"""The objective interface: per-pair loss inputs, the loss output, and the `Objective` protocol.

An objective is a loss over *per-sequence* log-probs (the sum of completion-token log-probs, prompt and
padding masked, as in TRL and uclaml/SPPO). It never sees tokens, models or the trainer. It declares what it
needs as class attributes, and the trainer fills exactly those fields of `LossInputs`; the trainer never
branches on an objective's name.

Fields cover the inputs of every objective in `workers/objectives/registry.py`:
- `ref_*_logps`: the reference policy (DPO, cDPO, IPO, rDPO, BCO, RPO, NPO, SPPO, SPCE; INPO's fixed pi_ref);
- `prev_*_logps`: the iteration-start policy pi_t when it differs from the reference (INPO);
- `*_lengths`: completion-token counts (SimPO's mean log-prob, TRL IPO normalisation, RPO's token-mean NLL);
- `win_prob`: P(chosen beats rejected) from the judge (SPPO `sppo_single`, OSP/SPCE strength);
- `chosen_win_rate` / `rejected_win_rate`: P(y beats pi_t), row means of the K x K matrix (SPPO;
  `workers/recipes/winrate.py`).

This module imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class LossInputs:
    """Per-pair inputs of a preference loss; every tensor is (B,) float32 on one device.

    Only `policy_*` and the lengths are always present; the rest are None unless the objective's flags
    ask for them. Log-probs are sums over completion tokens (log p(y|x)), lengths count those tokens.
    """

    policy_chosen_logps: Tensor  # (B,) trainable: carries the graph
    policy_rejected_logps: Tensor  # (B,)
    chosen_lengths: Tensor  # (B,) completion tokens of y_w (float32, > 0)
    rejected_lengths: Tensor  # (B,)
    ref_chosen_logps: Tensor | None = None  # (B,) constant (computed under no_grad)
    ref_rejected_logps: Tensor | None = None
    prev_chosen_logps: Tensor | None = None  # (B,) pi_t, constant (INPO)
    prev_rejected_logps: Tensor | None = None
    win_prob: Tensor | None = None  # (B,) P(y_w > y_l) in [0, 1]
    chosen_win_rate: Tensor | None = None  # (B,) P(y_w > pi_t) in [0, 1] (SPPO)
    rejected_win_rate: Tensor | None = None  # (B,) P(y_l > pi_t)

    @property
    def batch_size(self) -> int:
        return int(self.policy_chosen_logps.shape[0])

    def float32(self) -> LossInputs:
        """These inputs with every tensor upcast to at least float32 (float32 and float64 tensors are kept as
        they are; keeps the graph).

        Objectives call this first so that their arithmetic runs in fp32 even when the log-probs arrive
        in bf16 or under autocast: SPPO's targets (P - 1/2) * eta are ~1e2 nats and its losses ~1e4.
        float64 inputs stay float64, so the reference-vector tests can check the arithmetic in fp64.
        """
        upcast = {
            f.name: value.to(torch.float32)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
            and value.dtype not in (torch.float32, torch.float64)
        }
        return replace(self, **upcast) if upcast else self


@dataclass(frozen=True)
class LossOutput:
    """What an objective returns for a batch of B pairs.

    `losses` keeps the graph; the trainer reduces it (a mean over the pairs of an optimizer step).
    `chosen_rewards`/`rejected_rewards` are the implicit rewards, detached (DPO family:
    beta * (logp_policy - logp_ref)). `metrics` holds extra *per-pair* detached (B,) values keyed by a
    namespaced metric name (`rewards/sigmoid_neg_margin`); the trainer averages them over pairs.
    """

    losses: Tensor  # (B,)
    chosen_rewards: Tensor  # (B,) detached
    rejected_rewards: Tensor  # (B,) detached
    metrics: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """A preference loss over per-sequence log-probs. Implementations do not inherit from this class.

    Capability flags (class attributes) tell the trainer which `LossInputs` fields to compute:
    - `needs_reference`: reference log-probs (False for reference-free losses such as SimPO);
    - `needs_prev_policy`: log-probs of the iteration-start policy pi_t besides the reference (INPO);
    - `needs_win_prob`: the judge's pairwise P(chosen beats rejected);
    - `needs_win_rates`: per-response win rates against pi_t (SPPO);
    - `needs_lengths`: the loss reads the completion lengths (they are always filled; the flag documents
      that the loss is length-sensitive, e.g. for bucketing or length-normalised logging);
    - `stateful`: the loss keeps state across calls (BCO's running reward mean) and implements
      `StatefulObjective`: the trainer must checkpoint `state_dict()` and restore it on resume.
    """

    name: ClassVar[str]
    needs_reference: ClassVar[bool]
    needs_prev_policy: ClassVar[bool]
    needs_win_prob: ClassVar[bool]
    needs_win_rates: ClassVar[bool]
    needs_lengths: ClassVar[bool]
    stateful: ClassVar[bool]

    def __call__(self, inputs: LossInputs) -> LossOutput: ...


@runtime_checkable
class StatefulObjective(Objective, Protocol):
    """An objective with `stateful = True`: its state is plain floats, so it fits `torch.load(weights_only=True)`.

    `reset()` returns it to the initial state (e.g. at the start of an iteration, when the iteration is
    meant to behave like a fresh training run).
    """

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...

    def reset(self) -> None: ...


class MissingInputError(ValueError):
    """An objective was called without an input its flags declare."""


def require(value: Tensor | None, field_name: str, objective: str) -> Tensor:
    """`value`, or a clear error naming the `LossInputs` field the objective needs but did not get."""
    if value is None:
        raise MissingInputError(f"objective {objective!r} needs LossInputs.{field_name}, which is None")
    return value


def reference_logratios(inputs: LossInputs, objective: str) -> tuple[Tensor, Tensor]:
    """(lc, lr): logp_theta(y) - logp_ref(y) for chosen and rejected, each (B,).

    Raises `MissingInputError` if the reference log-probs are missing.
    """
    ref_chosen = require(inputs.ref_chosen_logps, "ref_chosen_logps", objective)
    ref_rejected = require(inputs.ref_rejected_logps, "ref_rejected_logps", objective)
    return inputs.policy_chosen_logps - ref_chosen, inputs.policy_rejected_logps - ref_rejected


# --------------------------------------------------------------------------------------------------
# Unpaired objectives (KTO, unpaired BCO): thumbs up/down on single answers


@dataclass(frozen=True)
class UnpairedInputs:
    """Per-example inputs of an unpaired loss; N labelled answers, each tensor (N,) unless noted.

    `labels` is True for a desirable answer (thumbs up), False for an undesirable one. `kl_*` are the
    log-probs of M mismatched (prompt, completion) pairs of the same batch (KTO's reference point: x_i with
    another example's y), constants (computed under no_grad); None when the objective does not ask for them.
    """

    policy_logps: Tensor  # (N,) trainable: carries the graph
    labels: Tensor  # (N,) bool
    lengths: Tensor  # (N,) completion tokens (float32, > 0)
    ref_logps: Tensor | None = None  # (N,) constant
    policy_kl_logps: Tensor | None = None  # (M,) constant: the policy on the mismatched pairs
    ref_kl_logps: Tensor | None = None  # (M,) constant: the reference on the same pairs

    @property
    def batch_size(self) -> int:
        return int(self.policy_logps.shape[0])

    def float32(self) -> UnpairedInputs:
        """These inputs with floating tensors narrower than float32 upcast (float64 kept, `labels` untouched)."""
        upcast = {
            f.name: value.to(torch.float32)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
            and value.is_floating_point()
            and value.dtype not in (torch.float32, torch.float64)
        }
        return replace(self, **upcast) if upcast else self


@dataclass(frozen=True)
class UnpairedOutput:
    """What an unpaired objective returns for N labelled answers: `losses` (N,) in input order, keeping the
    graph (the trainer reduces sum(w*l)/sum(w)); `rewards` (N,) the detached implicit rewards
    beta * (logp_policy - logp_ref); `metrics` per-example detached (N,) values (averaged over examples) and
    `batch_metrics` per-batch detached scalars (averaged over micro-batches: KTO's `kl`, BCO's `delta`)."""

    losses: Tensor  # (N,)
    rewards: Tensor  # (N,) detached
    metrics: dict[str, Tensor] = field(default_factory=dict)
    batch_metrics: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class UnpairedObjective(Protocol):
    """A loss over unpaired labelled answers (`unpaired = True`). Flags: `needs_reference` (reference
    log-probs), `needs_kl` (log-probs of mismatched pairs, KTO's reference point), `stateful` (as
    `StatefulObjective`: BCO's running reward mean)."""

    name: ClassVar[str]
    unpaired: ClassVar[bool]
    needs_reference: ClassVar[bool]
    needs_kl: ClassVar[bool]
    stateful: ClassVar[bool]

    def __call__(self, inputs: UnpairedInputs) -> UnpairedOutput: ...


def reference_logratio(inputs: UnpairedInputs, objective: str) -> Tensor:
    """logp_theta(y) - logp_ref(y), (N,); raises `MissingInputError` without reference log-probs."""
    return inputs.policy_logps - require(inputs.ref_logps, "ref_logps", objective)
