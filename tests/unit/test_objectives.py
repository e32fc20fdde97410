"""Objectives: golden values from algorithms.md §6, gradients, batch-vs-loop equality, the registry."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from sparring.shared.config import AlgorithmConfig
from sparring.workers.objectives.base import LossInputs, MissingInputError, Objective
from sparring.workers.objectives.dpo import DPOLoss
from sparring.workers.objectives.registry import OBJECTIVES, build_objective, objective_names


def pair_inputs(
    pc: list[float],
    pr: list[float],
    rc: list[float] | None,
    rr: list[float] | None,
    requires_grad: bool = False,
) -> LossInputs:
    def t(values: list[float] | None) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, dtype=torch.float32)

    chosen = torch.tensor(pc, dtype=torch.float32, requires_grad=requires_grad)
    rejected = torch.tensor(pr, dtype=torch.float32, requires_grad=requires_grad)
    ones = torch.ones(len(pc))
    return LossInputs(
        policy_chosen_logps=chosen,
        policy_rejected_logps=rejected,
        chosen_lengths=ones,
        rejected_lengths=ones,
        ref_chosen_logps=t(rc),
        ref_rejected_logps=t(rr),
    )


def test_dpo_sigmoid_golden() -> None:
    """algorithms.md §6 base vector, beta = 0.1:
    lc = pc - rc = -10 - (-11) = 1.0;  lr = pr - rr = -12 - (-11.5) = -0.5;  h = lc - lr = 1.5
    loss = -logsigmoid(0.1 * 1.5) = log(1 + exp(-0.15)) = 0.6209570478
    rewards: chosen 0.1 * 1.0 = 0.1, rejected 0.1 * -0.5 = -0.05
    """
    out = DPOLoss(beta=0.1)(pair_inputs([-10.0], [-12.0], [-11.0], [-11.5]))
    torch.testing.assert_close(out.losses, torch.tensor([0.6209570478]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.05]), atol=1e-6, rtol=0)
    # sigmoid(-beta h) = sigmoid(-0.15) = 0.4625701755
    torch.testing.assert_close(
        out.metrics["rewards/sigmoid_neg_margin"], torch.tensor([0.4625701755]), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_gradient_at_zero_margin(beta: float) -> None:
    """dL/dh = -beta * sigmoid(-beta h), so at h = 0 it is -beta / 2 (algorithms.md §6).

    h = (pc - rc) - (pr - rr), so dL/dpc = dL/dh and dL/dpr = -dL/dh.
    """
    inputs = pair_inputs([-5.0], [-7.0], [-5.0], [-7.0], requires_grad=True)
    out = DPOLoss(beta=beta)(inputs)
    torch.testing.assert_close(out.losses, torch.tensor([math.log(2.0)]), atol=1e-7, rtol=0)
    out.losses.sum().backward()
    assert inputs.policy_chosen_logps.grad is not None and inputs.policy_rejected_logps.grad is not None
    torch.testing.assert_close(inputs.policy_chosen_logps.grad, torch.tensor([-beta / 2]), atol=1e-7, rtol=0)
    torch.testing.assert_close(inputs.policy_rejected_logps.grad, torch.tensor([beta / 2]), atol=1e-7, rtol=0)


def test_dpo_batch_equals_per_pair_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = ((-30.0 * torch.rand(7, generator=gen)).tolist() for _ in range(4))
    loss = DPOLoss(beta=0.3)
    batched = loss(pair_inputs(pc, pr, rc, rr))
    for i in range(7):
        single = loss(pair_inputs([pc[i]], [pr[i]], [rc[i]], [rr[i]]))
        torch.testing.assert_close(batched.losses[i : i + 1], single.losses, atol=1e-7, rtol=0)
        torch.testing.assert_close(batched.chosen_rewards[i : i + 1], single.chosen_rewards)
        torch.testing.assert_close(batched.rejected_rewards[i : i + 1], single.rejected_rewards)


def test_dpo_rewards_are_detached() -> None:
    out = DPOLoss(beta=0.1)(
        pair_inputs([-1.0, -2.0], [-3.0, -1.0], [-1.5, -2.0], [-2.0, -1.0], requires_grad=True)
    )
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert all(not v.requires_grad for v in out.metrics.values())


def test_dpo_without_reference_names_the_missing_field() -> None:
    with pytest.raises(MissingInputError, match="ref_chosen_logps"):
        DPOLoss(beta=0.1)(pair_inputs([-1.0], [-2.0], None, None))


def test_dpo_rejects_non_positive_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0.0)


@pytest.mark.parametrize("name", objective_names())
def test_registered_objectives_declare_their_capabilities(name: str) -> None:
    cls = OBJECTIVES[name]
    assert cls.name == name
    for flag in (
        "needs_reference",
        "needs_prev_policy",
        "needs_win_prob",
        "needs_win_rates",
        "needs_lengths",
    ):
        assert isinstance(getattr(cls, flag), bool), f"{name}.{flag} must be a bool class attribute"


def test_build_objective_from_config() -> None:
    objective = build_objective(AlgorithmConfig(objective="dpo", beta=0.25))
    assert isinstance(objective, DPOLoss)
    assert isinstance(objective, Objective)
    assert objective.beta == 0.25


def test_build_objective_unknown_name_lists_the_registry() -> None:
    cfg = AlgorithmConfig.model_construct(objective="nope", beta=0.1)
    with pytest.raises(ValueError, match="registered: dpo"):
        build_objective(cfg)


def test_config_literal_lists_exactly_the_registry() -> None:
    """`AlgorithmConfig.objective`'s Literal (shared cannot import workers) must match the registry."""
    literal = AlgorithmConfig.model_fields["objective"].annotation
    assert sorted(typing.get_args(literal)) == objective_names()
