"""Objectives: golden values from algorithms.md §6, gradients, batch-vs-loop equality, the registry.

Every §6 vector is its own test with the arithmetic in its docstring; its numbers live once, in `VECTORS`,
which the bf16 GPU variant reuses. `REFERENCE` is the slow scalar version of every registered loss (float64
Python math, one pair at a time, STYLE §7 item 11); the batched fp32 objectives must match it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from pydantic import ValidationError

from sparring.shared.config import OBJECTIVE_CONFIGS, AlgorithmConfig, DPOConfig, algorithm_config
from sparring.workers.objectives import registry
from sparring.workers.objectives.base import (
    LossInputs,
    MissingInputError,
    Objective,
    StatefulObjective,
)
from sparring.workers.objectives.bco import BCOPairLoss
from sparring.workers.objectives.dpo import DPOLoss
from sparring.workers.objectives.inpo import INPOLoss
from sparring.workers.objectives.ipo import IPOLoss
from sparring.workers.objectives.registry import OBJECTIVES, build_objective, objective_names

# --------------------------------------------------------------------------------------------------
# Inputs


def pair_inputs(
    pc: list[float],
    pr: list[float],
    rc: list[float] | None = None,
    rr: list[float] | None = None,
    requires_grad: bool = False,
    *,
    tc: list[float] | None = None,
    tr: list[float] | None = None,
    chosen_lengths: list[float] | None = None,
    rejected_lengths: list[float] | None = None,
    win_prob: list[float] | None = None,
    chosen_win_rate: list[float] | None = None,
    rejected_win_rate: list[float] | None = None,
) -> LossInputs:
    """fp32 `LossInputs` from lists: p = policy, r = reference, t = pi_t; c = chosen, r = rejected."""

    def t(values: list[float] | None) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, dtype=torch.float32)

    ones = [1.0] * len(pc)
    return LossInputs(
        policy_chosen_logps=torch.tensor(pc, dtype=torch.float32, requires_grad=requires_grad),
        policy_rejected_logps=torch.tensor(pr, dtype=torch.float32, requires_grad=requires_grad),
        chosen_lengths=torch.tensor(chosen_lengths or ones, dtype=torch.float32),
        rejected_lengths=torch.tensor(rejected_lengths or ones, dtype=torch.float32),
        ref_chosen_logps=t(rc),
        ref_rejected_logps=t(rr),
        prev_chosen_logps=t(tc),
        prev_rejected_logps=t(tr),
        win_prob=t(win_prob),
        chosen_win_rate=t(chosen_win_rate),
        rejected_win_rate=t(rejected_win_rate),
    )


def algo(objective: str, **fields: typing.Any) -> AlgorithmConfig:
    """A valid config for `objective` (INPO needs the fixed initial reference; length_dpo's alpha has no default)."""
    if objective == "inpo":
        fields.setdefault("reference", "initial")
    if objective == "length_dpo":
        fields.setdefault("alpha", 0.05)
    return algorithm_config(objective=objective, **fields)


# The §6 base pair: lc = -10 - (-11) = 1.0, lr = -12 - (-11.5) = -0.5, h = 1.5.
BASE: dict[str, list[float]] = {"pc": [-10.0], "pr": [-12.0], "rc": [-11.0], "rr": [-11.5]}


@dataclass(frozen=True)
class Vector:
    objective: str
    config: dict[str, typing.Any]
    inputs: dict[str, list[float]]
    loss: float
    rtol: float = 0.0  # relative tolerance for large values; else atol 1e-6
    rewards: tuple[float, float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


VECTORS: dict[str, Vector] = {
    "dpo": Vector("dpo", {"beta": 0.1}, BASE, 0.6209570478, rewards=(0.1, -0.05)),
    "cdpo": Vector("cdpo", {"beta": 0.1, "epsilon": 0.1}, BASE, 0.6359570478, rewards=(0.1, -0.05)),
    "ipo": Vector("ipo", {"beta": 0.1}, BASE, 12.25, metrics={"ipo/residual": -3.5}),
    "ipo_length_normalized": Vector(
        "ipo",
        {"beta": 0.1, "length_normalize": True},
        {**BASE, "chosen_lengths": [20.0], "rejected_lengths": [25.0]},
        24.3049,
        rewards=(0.005, -0.002),
    ),
    "rdpo": Vector("rdpo", {"beta": 0.1, "flip_rate": 0.1}, BASE, 0.6022070478),
    "sppo_hard": Vector("sppo_hard", {"eta": 10.0}, BASE, 36.25, rewards=(0.1, -0.05)),
    "sppo": Vector(
        "sppo",
        {"eta": 10.0},
        {**BASE, "chosen_win_rate": [0.7], "rejected_win_rate": [0.3]},
        1.625,
        rewards=(0.1, -0.05),
    ),
    "sppo_eta_1000": Vector(
        "sppo",
        {"eta": 1000.0},
        {**BASE, "chosen_win_rate": [0.7], "rejected_win_rate": [0.3]},
        39700.625,
        rtol=1e-6,
    ),
    "sppo_single": Vector("sppo_single", {"eta": 10.0}, {**BASE, "win_prob": [0.8]}, 5.125),
    "bco_pair_first_step": Vector(
        "bco_pair", {"beta": 0.1}, BASE, 1.3127002817, rewards=(0.1, -0.05), metrics={"bco/delta": 0.025}
    ),
    "bco_pair_no_shift": Vector("bco_pair", {"beta": 0.1, "running_mean": False}, BASE, 1.3128563081),
    "spce": Vector("spce", {"beta": 0.1}, {**BASE, "win_prob": [0.8]}, 0.6509570478),
    "inpo": Vector(
        "inpo",
        {"beta": 0.1, "ratio": 1.0 / 3.0},
        {**BASE, "tc": [-10.5], "tr": [-11.8]},
        16.2677777778,
        rtol=1e-6,
    ),
    "simpo": Vector(
        "simpo",
        {"beta": 2.5, "gamma": 1.375},
        {"pc": [-10.0], "pr": [-12.0], "chosen_lengths": [20.0], "rejected_lengths": [25.0]},
        1.6405213465,
        rewards=(-1.25, -1.2),
    ),
    "npo": Vector(
        "npo", {"beta": 0.1}, {"pc": [-10.0], "pr": [-12.0], "rc": [-11.0], "rr": [-13.0]}, 14.8879332015
    ),
    "rpo": Vector(
        "rpo",
        {"beta": 0.1, "alpha": 1.0},
        {**BASE, "chosen_lengths": [4.0]},
        3.1209570478,
        metrics={"rpo/nll": 2.5},
    ),
    # issue 13's objectives (hand-worked in their tests below)
    "hinge": Vector("hinge", {"beta": 0.1}, BASE, 0.85, rewards=(0.1, -0.05)),
    "nca_pair": Vector("nca_pair", {"beta": 0.1}, BASE, 1.3508248141, rewards=(0.1, -0.05)),
    "apo_zero": Vector("apo_zero", {"beta": 0.1}, BASE, 0.9625234160, rewards=(0.1, -0.05)),
    "apo_down": Vector("apo_down", {"beta": 0.1}, BASE, 0.9875493421, rewards=(0.1, -0.05)),
    "dpop": Vector(
        "dpop",
        {"beta": 0.1, "dpop_lambda": 0.5},
        {"pc": [-12.0], "pr": [-14.0], "rc": [-11.0], "rr": [-11.5]},
        0.6443966601,
        rewards=(-0.1, -0.25),
        metrics={"dpop/penalty": 1.0},
    ),
    "length_dpo": Vector(
        "length_dpo",
        {"beta": 0.1, "alpha": 0.05},
        {**BASE, "chosen_lengths": [20.0], "rejected_lengths": [25.0]},
        0.7443966601,
        rewards=(0.1, -0.05),
    ),
    "orpo": Vector(
        "orpo",
        {"beta": 0.1},
        {"pc": [-10.0], "pr": [-12.0], "chosen_lengths": [20.0], "rejected_lengths": [25.0]},
        0.5719298126,
        rewards=(-0.05, -0.048),
        metrics={"orpo/log_odds_ratio": -0.0516354104, "orpo/nll": 0.5},
    ),
}


def check_vector(key: str) -> None:
    v = VECTORS[key]
    out = build_objective(algo(v.objective, **v.config))(pair_inputs(**v.inputs))
    assert out.losses.dtype == torch.float32
    atol = 0.0 if v.rtol else 1e-6
    torch.testing.assert_close(out.losses, torch.tensor([v.loss]), atol=atol, rtol=v.rtol)
    if v.rewards is not None:
        torch.testing.assert_close(out.chosen_rewards, torch.tensor([v.rewards[0]]), atol=1e-6, rtol=0)
        torch.testing.assert_close(out.rejected_rewards, torch.tensor([v.rewards[1]]), atol=1e-6, rtol=0)
    for name, value in v.metrics.items():
        torch.testing.assert_close(out.metrics[name], torch.tensor([value]), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# Golden vectors (algorithms.md §6; base pair lc = 1.0, lr = -0.5, h = 1.5 unless stated)


def test_dpo_sigmoid_golden() -> None:
    """algorithms.md §6 base vector, beta = 0.1:
    lc = pc - rc = -10 - (-11) = 1.0;  lr = pr - rr = -12 - (-11.5) = -0.5;  h = lc - lr = 1.5
    loss = -logsigmoid(0.1 * 1.5) = log(1 + exp(-0.15)) = 0.6209570478
    rewards: chosen 0.1 * 1.0 = 0.1, rejected 0.1 * -0.5 = -0.05
    """
    check_vector("dpo")
    out = DPOLoss(beta=0.1)(pair_inputs([-10.0], [-12.0], [-11.0], [-11.5]))
    # sigmoid(-beta h) = sigmoid(-0.15) = 0.4625701755
    torch.testing.assert_close(
        out.metrics["rewards/sigmoid_neg_margin"], torch.tensor([0.4625701755]), atol=1e-6, rtol=0
    )


def test_cdpo_vector() -> None:
    """cDPO, beta = 0.1, eps = 0.1: -logsigmoid(0.15) = 0.6209570478, -logsigmoid(-0.15) = 0.15 + 0.6209570478
    loss = 0.9 * 0.6209570478 + 0.1 * 0.7709570478 = 0.5588613430 + 0.0770957048 = 0.6359570478
    """
    check_vector("cdpo")


def test_ipo_vector_unnormalized() -> None:
    """IPO (paper form), beta = 0.1: target 1/(2 * 0.1) = 5;  loss = (1.5 - 5)^2 = 12.25; residual -3.5."""
    check_vector("ipo")


def test_ipo_vector_length_normalized() -> None:
    """IPO as TRL (each logp / its length), beta = 0.1, |y_w| = 20, |y_l| = 25 (not a §6 vector):
    h = lc/20 - lr/25 = 1.0/20 - (-0.5)/25 = 0.05 + 0.02 = 0.07;  loss = (0.07 - 5)^2 = 4.93^2 = 24.3049
    rewards: 0.1 * 0.05 = 0.005, 0.1 * -0.02 = -0.002
    """
    check_vector("ipo_length_normalized")


def test_rdpo_vector() -> None:
    """rDPO, beta = 0.1, eps = 0.1:
    loss = [0.9 * 0.6209570478 - 0.1 * 0.7709570478] / (1 - 0.2) = (0.5588613430 - 0.0770957048) / 0.8
         = 0.4817656382 / 0.8 = 0.6022070478
    """
    check_vector("rdpo")


def test_rdpo_can_be_negative() -> None:
    """A confident margin: beta * h = 0.1 * 100 = 10, eps = 0.1:
    loss = [0.9 * softplus(-10) - 0.1 * softplus(10)] / 0.8 = [0.9 * 4.5399e-5 - 0.1 * 10.0000454] / 0.8
         = -1.2499546 (negative, as the unbiased estimator allows)
    """
    out = build_objective(algo("rdpo", flip_rate=0.1))(pair_inputs([0.0], [-100.0], [0.0], [0.0]))
    expected = (0.9 * math.log1p(math.exp(-10.0)) - 0.1 * (10.0 + math.log1p(math.exp(-10.0)))) / 0.8
    assert expected < 0
    torch.testing.assert_close(out.losses, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_sppo_hard_vector() -> None:
    """TRL sppo_hard, beta = 0.1, i.e. eta = 1/beta = 10 (target eta/2 = 5; no /2 on the sum):
    loss = (lc - 5)^2 + (lr + 5)^2 = (1 - 5)^2 + (-0.5 + 5)^2 = 16 + 20.25 = 36.25
    rewards (1/eta) * lc = 0.1, (1/eta) * lr = -0.05
    """
    check_vector("sppo_hard")


def test_sppo_vector_beta_0_1() -> None:
    """uclaml/SPPO `sppo`, beta = 0.1 (eta = 10), P_win = 0.7, P_lose = 0.3:
    targets eta * (0.7 - 0.5) = 2 and eta * (0.3 - 0.5) = -2
    loss = [(1 - 2)^2 + (-0.5 + 2)^2] / 2 = (1 + 2.25) / 2 = 1.625
    """
    check_vector("sppo")


def test_sppo_vector_beta_0_001() -> None:
    """uclaml/SPPO `sppo`, beta = 0.001 (eta = 1000, the SPPO scripts), P_win = 0.7, P_lose = 0.3:
    targets 1000 * 0.2 = 200 and -200;  loss = [(1 - 200)^2 + (-0.5 + 200)^2] / 2 = (39601 + 39800.25) / 2
    = 39700.625. fp32: P_win = 0.7 is 0.699999988, so the target is 199.99998; checked to rtol 1e-6.
    """
    check_vector("sppo_eta_1000")


def test_sppo_single_vector() -> None:
    """uclaml/SPPO `sppo_single`, beta = 0.1 (eta = 10), p = 0.8: target eta * (0.8 - 0.5) = 3
    loss = [(1 - 3)^2 + (-0.5 + 3)^2] / 2 = (4 + 6.25) / 2 = 5.125
    """
    check_vector("sppo_single")


def test_bco_pair_first_step_vector() -> None:
    """BCO pair (TRL <= 0.28), beta = 0.1, a batch of one, first call:
    r_w = 0.1 * 1.0 = 0.1, r_l = 0.1 * -0.5 = -0.05; batch mean of [0.1, -0.05] = 0.025
    running mean 0 with count 1e-24, updated before it is read: delta = 0 + (0.025 - 0) / (1 + 1e-24) = 0.025
    loss = -logsigmoid(0.1 - 0.025) - logsigmoid(-(-0.05 - 0.025)) = 2 * softplus(-0.075)
         = 2 * 0.6563501409 = 1.3127002817
    """
    check_vector("bco_pair_first_step")


def test_bco_pair_without_shift_vector() -> None:
    """BCO pair with delta = 0 (TRL >= 0.29), beta = 0.1:
    loss = -logsigmoid(0.1) - logsigmoid(0.05) = 0.6443966600 + 0.6684596481 = 1.3128563081
    """
    check_vector("bco_pair_no_shift")


def test_spce_vector() -> None:
    """OSP SPCE, beta = 0.1, p = 0.8:
    loss = -[0.8 * logsigmoid(0.15) + 0.2 * logsigmoid(-0.15)] = 0.8 * 0.6209570478 + 0.2 * 0.7709570478
         = 0.4967656382 + 0.1541914096 = 0.6509570478
    """
    check_vector("spce")


def test_inpo_vector() -> None:
    """INPO, beta (code eta) = 0.1, ratio = 1/3, logp_t(y_w) = -10.5, logp_t(y_l) = -11.8:
    D_theta = -10 - (-12) = 2, D_ref = -11 - (-11.5) = 0.5, D_t = -10.5 - (-11.8) = 1.3
    h = 2 - 0.5/3 - (2/3) * 1.3 = 2 - 0.1666667 - 0.8666667 = 0.9666667;  target 1/(2 * 0.1) = 5
    loss = (0.9666667 - 5)^2 = 4.0333333^2 = 16.2677777778   (rtol 1e-6: fp32 inputs -11.8, 1/3)
    """
    check_vector("inpo")


def test_simpo_vector() -> None:
    """SimPO, beta = 2.5, gamma = 1.375 (gamma/beta = 0.55), |y_w| = 20, |y_l| = 25, no reference:
    rewards 2.5 * (-10/20) = -1.25 and 2.5 * (-12/25) = -1.2;  D_avg = -0.5 + 0.48 = -0.02
    loss = -logsigmoid(-1.25 + 1.2 - 1.375) = softplus(1.425) = 1.6405213465
    """
    check_vector("simpo")


def test_npo_vector() -> None:
    """NPO, beta = 0.1, lr_ref(y_l) = -12 - (-13) = 1.0 (the chosen response does not enter the loss):
    loss = -(2/0.1) * logsigmoid(-0.1 * 1.0) = 20 * softplus(0.1) = 20 * 0.7443966600 = 14.8879332015
    """
    check_vector("npo")


def test_rpo_vector() -> None:
    """RPO (not a §6 vector), beta = 0.1, alpha = 1, one pair with |y_w| = 4 tokens:
    NLL = -logp(y_w) / |y_w| = 10 / 4 = 2.5;  loss = DPO 0.6209570478 + 1 * 2.5 = 3.1209570478
    """
    check_vector("rpo")


def test_hinge_vector() -> None:
    """Hinge (SLiC/RSO, TRL `hinge`), beta = 0.1: loss = max(0, 1 - 0.1 * 1.5) = 0.85;
    rewards 0.1 * 1.0 = 0.1, 0.1 * -0.5 = -0.05
    """
    check_vector("hinge")
    beyond_margin = build_objective(algo("hinge", beta=1.0))(pair_inputs(**BASE))  # 1 - 1.5 < 0: no loss
    torch.testing.assert_close(beyond_margin.losses, torch.tensor([0.0]), atol=0, rtol=0)


def test_nca_pair_vector() -> None:
    """NCA pair (TRL `nca_pair`), beta = 0.1: r_w = 0.1, r_l = -0.05
    loss = -logsigmoid(0.1) - 0.5 * logsigmoid(-0.1) - 0.5 * logsigmoid(0.05)
         = softplus(-0.1) + 0.5 * softplus(0.1) + 0.5 * softplus(-0.05)
         = 0.6443966601 + 0.5 * 0.7443966601 + 0.5 * 0.6684596481 = 0.6443966601 + 0.3721983300 + 0.3342298240
         = 1.3508248141
    """
    check_vector("nca_pair")


def test_apo_zero_vector() -> None:
    """APO-zero (arXiv 2408.06266 Eq. 7), beta = 0.1:
    loss = (1 - sigmoid(0.1 * 1.0)) + sigmoid(0.1 * -0.5) = (1 - 0.5249791875) + 0.4875026035 = 0.9625234160
    """
    check_vector("apo_zero")


def test_apo_down_vector() -> None:
    """APO-down (arXiv 2408.06266 Eq. 8), beta = 0.1:
    loss = sigmoid(0.1 * 1.0) + (1 - sigmoid(0.1 * 1.5)) = 0.5249791875 + (1 - 0.5374298453) = 0.9875493421
    """
    check_vector("apo_down")


def test_dpop_vector() -> None:
    """DPO-Positive (arXiv 2402.13228 Eq. 3), beta = 0.1, lambda = 0.5, the chosen answer below the reference:
    lc = -12 - (-11) = -1.0, lr = -14 - (-11.5) = -2.5, h = 1.5;  penalty = max(0, -lc) = 1.0
    loss = -logsigmoid(0.1 * (1.5 - 0.5 * 1.0)) = softplus(-0.1) = 0.6443966601  (DPO alone: softplus(-0.15))
    rewards 0.1 * -1.0 = -0.1, 0.1 * -2.5 = -0.25. Above the reference (the base pair, lc = 1) it is DPO.
    """
    check_vector("dpop")
    above = build_objective(algo("dpop", dpop_lambda=0.5))(pair_inputs(**BASE))
    torch.testing.assert_close(above.losses, torch.tensor([VECTORS["dpo"].loss]), atol=1e-6, rtol=0)


def test_length_dpo_vector() -> None:
    """R-DPO (arXiv 2403.19159), beta = 0.1, alpha = 0.05 nats/token, |y_w| = 20, |y_l| = 25:
    loss = -logsigmoid(0.1 * 1.5 + 0.05 * (20 - 25)) = -logsigmoid(0.15 - 0.25) = softplus(0.1) = 0.7443966601
    """
    check_vector("length_dpo")


def test_orpo_vector() -> None:
    """ORPO (arXiv 2403.07691 Eqs. 4-7, TRL `odds_ratio_loss`), beta (lambda) = 0.1, no reference,
    |y_w| = 20, |y_l| = 25:  m_w = -10/20 = -0.5, m_l = -12/25 = -0.48
    log(1 - e^-0.5) = log(0.3934693403) = -0.9327521296;  log(1 - e^-0.48) = log(0.3812166082) = -0.9643875400
    log odds ratio = (-0.5 + 0.48) - (-0.9327521296 + 0.9643875400) = -0.02 - 0.0316354104 = -0.0516354104
    L_OR = softplus(0.0516354104) = 0.7192981257;  NLL = 10 / 20 = 0.5
    loss = 0.5 + 0.1 * 0.7192981257 = 0.5719298126;  rewards 0.1 * m: -0.05, -0.048
    """
    check_vector("orpo")


def test_rpo_nll_is_a_token_mean_over_the_batch() -> None:
    """Two pairs, logp(y_w) = [-10, -6], |y_w| = [4, 12]: token mean NLL = 16 / 16 = 1.0, not the mean of
    per-sequence means (2.5 + 0.5) / 2 = 1.5. Per-pair shares: 10 * 2/16 = 1.25 and 6 * 2/16 = 0.75.
    With alpha = 0 the loss is exactly DPO.
    """
    inputs = pair_inputs(
        [-10.0, -6.0], [-12.0, -7.0], [-11.0, -6.5], [-11.5, -7.5], chosen_lengths=[4.0, 12.0]
    )
    out = build_objective(algo("rpo", alpha=1.0))(inputs)
    dpo = DPOLoss(beta=0.1)(inputs)
    torch.testing.assert_close(out.metrics["rpo/nll"], torch.tensor([1.25, 0.75]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.losses.mean(), dpo.losses.mean() + 1.0, atol=1e-6, rtol=0)
    no_nll = build_objective(algo("rpo", alpha=0.0))(inputs)
    torch.testing.assert_close(no_nll.losses, dpo.losses, atol=0, rtol=0)


def test_cdpo_is_spce_with_constant_strength() -> None:
    """cDPO(eps) == SPCE(p = 1 - eps) pair by pair."""
    gen = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = ((-30.0 * torch.rand(6, generator=gen)).tolist() for _ in range(4))
    cdpo = build_objective(algo("cdpo", epsilon=0.2))(pair_inputs(pc, pr, rc, rr))
    spce = build_objective(algo("spce"))(pair_inputs(pc, pr, rc, rr, win_prob=[0.8] * 6))
    torch.testing.assert_close(cdpo.losses, spce.losses, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# BCO running state


def test_bco_running_mean_accumulates_batch_means() -> None:
    """Two calls: delta_1 = m_1 (first batch mean), delta_2 = (m_1 + m_2) / 2 (count 1e-24 + 2)."""
    loss = BCOPairLoss(beta=1.0)
    out1 = loss(pair_inputs([0.0], [0.0], [-1.0], [1.0]))  # r = [1, -1]: m_1 = 0
    out2 = loss(pair_inputs([0.0], [0.0], [-3.0], [-1.0]))  # r = [3, 1]: m_2 = 2
    assert out1.metrics["bco/delta"].item() == pytest.approx(0.0)
    assert out2.metrics["bco/delta"].item() == pytest.approx(1.0)
    assert loss.state_dict() == {"mean": pytest.approx(1.0), "count": pytest.approx(2.0)}
    # loss_2 = -logsigmoid(3 - 1) - logsigmoid(-(1 - 1)) = softplus(-2) + log 2
    expected = math.log1p(math.exp(-2.0)) + math.log(2.0)
    torch.testing.assert_close(out2.losses, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_bco_state_round_trip_and_reset() -> None:
    """A loss restored from `state_dict()` continues exactly like the original (checkpoint/resume)."""
    batches = [pair_inputs([-1.0, -2.0], [-3.0, -1.0], [-1.5, -2.5], [-2.0, -0.5]) for _ in range(3)]
    original = BCOPairLoss(beta=0.1)
    original(batches[0])
    state = original.state_dict()
    restored = BCOPairLoss(beta=0.1)
    restored.load_state_dict(copy.deepcopy(state))
    torch.testing.assert_close(restored(batches[1]).losses, original(batches[1]).losses, atol=0, rtol=0)
    assert isinstance(original, StatefulObjective)
    original.reset()
    assert original.state_dict() == BCOPairLoss(beta=0.1).state_dict()


def test_bco_batched_equals_loop_at_the_batch_delta() -> None:
    """With the running mean, delta is shared by the batch; given that delta the loss is per pair."""
    pairs = random_pairs(7, seed=11)
    loss = BCOPairLoss(beta=0.1)
    out = loss(pairs.inputs())
    delta = out.metrics["bco/delta"][0].item()
    for i in range(7):
        lc = 0.1 * (pairs.pc[i] - pairs.rc[i])
        lr = 0.1 * (pairs.pr[i] - pairs.rr[i])
        expected = softplus(-(lc - delta)) + softplus(lr - delta)
        assert out.losses[i].item() == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# Gradients


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


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_gradient_at_zero_margin(beta: float) -> None:
    """L = (h - 1/(2 beta))^2, dL/dh = 2 (h - 1/(2 beta)), so at h = 0 it is -1/beta (algorithms.md §6)."""
    inputs = pair_inputs([-5.0], [-7.0], [-5.0], [-7.0], requires_grad=True)
    out = IPOLoss(beta=beta)(inputs)
    torch.testing.assert_close(out.losses, torch.tensor([1.0 / (4.0 * beta**2)]), atol=1e-6, rtol=1e-6)
    out.losses.sum().backward()
    assert inputs.policy_chosen_logps.grad is not None and inputs.policy_rejected_logps.grad is not None
    torch.testing.assert_close(
        inputs.policy_chosen_logps.grad, torch.tensor([-1.0 / beta]), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(
        inputs.policy_rejected_logps.grad, torch.tensor([1.0 / beta]), atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("ratio", [0.1, 1.0 / 3.0, 0.5, 0.9])
def test_inpo_at_first_iteration_equals_ipo(ratio: float) -> None:
    """pi_t = pi_ref: h = D_theta - ratio * D_ref - (1 - ratio) * D_ref = D_theta - D_ref, IPO's margin, for
    every ratio; losses and gradients equal unnormalised IPO with the same beta (algorithms.md §2.2)."""
    pairs = random_pairs(16, seed=5)
    inpo_in = pair_inputs(pairs.pc, pairs.pr, pairs.rc, pairs.rr, True, tc=pairs.rc, tr=pairs.rr)
    ipo_in = pair_inputs(pairs.pc, pairs.pr, pairs.rc, pairs.rr, True)
    inpo = INPOLoss(beta=0.05, ratio=ratio)(inpo_in)
    ipo = IPOLoss(beta=0.05, length_normalize=False)(ipo_in)
    torch.testing.assert_close(inpo.losses, ipo.losses, atol=1e-3, rtol=1e-5)  # losses ~1e2; ~1 ulp apart
    inpo.losses.sum().backward()
    ipo.losses.sum().backward()
    torch.testing.assert_close(
        inpo_in.policy_chosen_logps.grad, ipo_in.policy_chosen_logps.grad, atol=1e-4, rtol=1e-5
    )
    torch.testing.assert_close(
        inpo_in.policy_rejected_logps.grad, ipo_in.policy_rejected_logps.grad, atol=1e-4, rtol=1e-5
    )


# --------------------------------------------------------------------------------------------------
# Every registered objective: scalar reference, batch vs loop, detached rewards, missing inputs


@dataclass
class Pairs:
    pc: list[float]
    pr: list[float]
    rc: list[float]
    rr: list[float]
    tc: list[float]
    tr: list[float]
    chosen_lengths: list[float]
    rejected_lengths: list[float]
    win_prob: list[float]
    chosen_win_rate: list[float]
    rejected_win_rate: list[float]

    def inputs(self, requires_grad: bool = False) -> LossInputs:
        return pair_inputs(
            self.pc,
            self.pr,
            self.rc,
            self.rr,
            requires_grad,
            tc=self.tc,
            tr=self.tr,
            chosen_lengths=self.chosen_lengths,
            rejected_lengths=self.rejected_lengths,
            win_prob=self.win_prob,
            chosen_win_rate=self.chosen_win_rate,
            rejected_win_rate=self.rejected_win_rate,
        )

    def pair(self, i: int) -> Pairs:
        return Pairs(*([getattr(self, f)[i]] for f in self.__dataclass_fields__))


def random_pairs(n: int, seed: int, equal_chosen_lengths: bool = False) -> Pairs:
    """Random realistic pairs; values are fp32-exact so float64 references see the same inputs."""
    rng = random.Random(seed)

    def f32(values: list[float]) -> list[float]:
        return torch.tensor(values, dtype=torch.float32).tolist()

    pc = f32([rng.uniform(-60.0, -2.0) for _ in range(n)])
    pr = f32([rng.uniform(-60.0, -2.0) for _ in range(n)])
    chosen_len = float(rng.randint(1, 40))
    return Pairs(
        pc=pc,
        pr=pr,
        rc=f32([x + rng.uniform(-3.0, 3.0) for x in pc]),
        rr=f32([x + rng.uniform(-3.0, 3.0) for x in pr]),
        tc=f32([x + rng.uniform(-2.0, 2.0) for x in pc]),
        tr=f32([x + rng.uniform(-2.0, 2.0) for x in pr]),
        chosen_lengths=[chosen_len if equal_chosen_lengths else float(rng.randint(1, 40)) for _ in range(n)],
        rejected_lengths=[float(rng.randint(1, 40)) for _ in range(n)],
        win_prob=f32([rng.uniform(0.5, 1.0) for _ in range(n)]),
        chosen_win_rate=f32([rng.uniform(0.1, 0.9) for _ in range(n)]),
        rejected_win_rate=f32([rng.uniform(0.1, 0.9) for _ in range(n)]),
    )


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def softplus(x: float) -> float:
    return -log_sigmoid(-x)


Reference = Callable[[AlgorithmConfig, Pairs], list[float]]


def _per_pair(loss: Callable[[AlgorithmConfig, Pairs, int], float]) -> Reference:
    return lambda cfg, p: [loss(cfg, p, i) for i in range(len(p.pc))]


def _h(p: Pairs, i: int) -> float:
    return (p.pc[i] - p.rc[i]) - (p.pr[i] - p.rr[i])


def _rpo(cfg: AlgorithmConfig, p: Pairs) -> list[float]:
    nll = -sum(p.pc) / sum(p.chosen_lengths)  # token mean over the batch's chosen tokens
    dpo = [-log_sigmoid(cfg.beta * _h(p, i)) for i in range(len(p.pc))]
    # the per-pair split: pair i carries -pc_i * B / sum(lengths), whose mean is nll
    shares = [-p.pc[i] * len(p.pc) / sum(p.chosen_lengths) for i in range(len(p.pc))]
    assert math.isclose(sum(shares) / len(shares), nll)
    return [d + cfg.alpha * s for d, s in zip(dpo, shares, strict=True)]


def _bco(cfg: AlgorithmConfig, p: Pairs) -> list[float]:
    rewards = [cfg.beta * (p.pc[i] - p.rc[i]) for i in range(len(p.pc))]
    rewards += [cfg.beta * (p.pr[i] - p.rr[i]) for i in range(len(p.pc))]
    delta = sum(rewards) / len(rewards) if cfg.running_mean else 0.0  # a fresh loss: delta = batch mean
    return [
        -log_sigmoid(cfg.beta * (p.pc[i] - p.rc[i]) - delta)
        - log_sigmoid(-(cfg.beta * (p.pr[i] - p.rr[i]) - delta))
        for i in range(len(p.pc))
    ]


def _ipo(cfg: AlgorithmConfig, p: Pairs, i: int) -> float:
    lc, lr = p.pc[i] - p.rc[i], p.pr[i] - p.rr[i]
    if cfg.length_normalize:
        lc, lr = lc / p.chosen_lengths[i], lr / p.rejected_lengths[i]
    return (lc - lr - 1.0 / (2.0 * cfg.beta)) ** 2


def _inpo(cfg: AlgorithmConfig, p: Pairs, i: int) -> float:
    r = cfg.ratio
    h = (p.pc[i] - p.pr[i]) - r * (p.rc[i] - p.rr[i]) - (1.0 - r) * (p.tc[i] - p.tr[i])
    return (h - 1.0 / (2.0 * cfg.beta)) ** 2


def _log1mexp(x: float) -> float:
    return math.log(-math.expm1(x))


def _orpo(cfg: AlgorithmConfig, p: Pairs) -> list[float]:
    shares = [-p.pc[i] * len(p.pc) / sum(p.chosen_lengths) for i in range(len(p.pc))]  # mean = token-mean NLL
    out = []
    for i in range(len(p.pc)):
        mc, mr = p.pc[i] / p.chosen_lengths[i], p.pr[i] / p.rejected_lengths[i]
        log_odds = (mc - mr) - (_log1mexp(mc) - _log1mexp(mr))
        out.append(shares[i] - cfg.beta * log_sigmoid(log_odds))
    return out


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


REFERENCE: dict[str, Reference] = {
    "hinge": _per_pair(lambda c, p, i: max(0.0, 1.0 - c.beta * _h(p, i))),
    "nca_pair": _per_pair(
        lambda c, p, i: (
            -log_sigmoid(c.beta * (p.pc[i] - p.rc[i]))
            - 0.5 * log_sigmoid(-c.beta * (p.pc[i] - p.rc[i]))
            - 0.5 * log_sigmoid(-c.beta * (p.pr[i] - p.rr[i]))
        )
    ),
    "apo_zero": _per_pair(
        lambda c, p, i: (1 - _sigmoid(c.beta * (p.pc[i] - p.rc[i]))) + _sigmoid(c.beta * (p.pr[i] - p.rr[i]))
    ),
    "apo_down": _per_pair(lambda c, p, i: _sigmoid(c.beta * (p.pc[i] - p.rc[i])) + (1 - _sigmoid(c.beta * _h(p, i)))),
    "dpop": _per_pair(
        lambda c, p, i: -log_sigmoid(c.beta * (_h(p, i) - c.dpop_lambda * max(0.0, p.rc[i] - p.pc[i])))
    ),
    "length_dpo": _per_pair(
        lambda c, p, i: -log_sigmoid(c.beta * _h(p, i) + c.alpha * (p.chosen_lengths[i] - p.rejected_lengths[i]))
    ),
    "orpo": _orpo,
    "dpo": _per_pair(lambda c, p, i: -log_sigmoid(c.beta * _h(p, i))),
    "cdpo": _per_pair(
        lambda c, p, i: (
            -(1 - c.epsilon) * log_sigmoid(c.beta * _h(p, i))
            - c.epsilon * log_sigmoid(-c.beta * _h(p, i))
        )
    ),
    "rdpo": _per_pair(
        lambda c, p, i: (
            (
                -(1 - c.flip_rate) * log_sigmoid(c.beta * _h(p, i))
                + c.flip_rate * log_sigmoid(-c.beta * _h(p, i))
            )
            / (1 - 2 * c.flip_rate)
        )
    ),
    "ipo": _per_pair(_ipo),
    "bco_pair": _bco,
    "rpo": _rpo,
    "simpo": _per_pair(
        lambda c, p, i: (
            -log_sigmoid(
                c.beta * p.pc[i] / p.chosen_lengths[i]
                - c.beta * p.pr[i] / p.rejected_lengths[i]
                - c.gamma
            )
        )
    ),
    "npo": _per_pair(lambda c, p, i: -(2.0 / c.beta) * log_sigmoid(-c.beta * (p.pr[i] - p.rr[i]))),
    "sppo_hard": _per_pair(
        lambda c, p, i: (p.pc[i] - p.rc[i] - c.eta / 2) ** 2 + (p.pr[i] - p.rr[i] + c.eta / 2) ** 2
    ),
    "sppo": _per_pair(
        lambda c, p, i: (
            (
                (p.pc[i] - p.rc[i] - c.eta * (p.chosen_win_rate[i] - 0.5)) ** 2
                + (p.pr[i] - p.rr[i] - c.eta * (p.rejected_win_rate[i] - 0.5)) ** 2
            )
            / 2
        )
    ),
    "sppo_single": _per_pair(
        lambda c, p, i: (
            (
                (p.pc[i] - p.rc[i] - c.eta * (p.win_prob[i] - 0.5)) ** 2
                + (p.pr[i] - p.rr[i] + c.eta * (p.win_prob[i] - 0.5)) ** 2
            )
            / 2
        )
    ),
    "inpo": _per_pair(_inpo),
    "spce": _per_pair(
        lambda c, p, i: (
            -(
                p.win_prob[i] * log_sigmoid(c.beta * _h(p, i))
                + (1 - p.win_prob[i]) * log_sigmoid(-c.beta * _h(p, i))
            )
        )
    ),
}

# Non-default settings exercised too, so that every switch is covered by the reference comparison.
VARIANTS: list[tuple[str, dict[str, typing.Any]]] = [(name, {}) for name in objective_names()] + [
    ("ipo", {"length_normalize": True}),
    ("bco_pair", {"running_mean": False}),
    ("sppo", {"eta": 10.0}),
    ("dpop", {"dpop_lambda": 0.5}),
    ("length_dpo", {"alpha": 0.0}),
    ("hinge", {"beta": 0.5}),
]


def test_every_objective_has_a_reference() -> None:
    assert sorted(REFERENCE) == objective_names()


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
def test_matches_scalar_reference(name: str, overrides: dict[str, typing.Any]) -> None:
    """The batched fp32 loss equals the float64 loop version on random pairs with random lengths."""
    cfg = algo(name, **overrides)
    pairs = random_pairs(9, seed=1)
    out = build_objective(cfg)(pairs.inputs())
    expected = torch.tensor(REFERENCE[name](cfg, pairs), dtype=torch.float64)
    torch.testing.assert_close(out.losses.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
def test_matches_scalar_reference_in_float64(name: str, overrides: dict[str, typing.Any]) -> None:
    """float64 inputs stay float64 (`LossInputs.float32` only upcasts narrower dtypes), so every objective's
    arithmetic is checked against the float64 loop version to 1e-6 (the issue-13 bar for reference vectors)."""
    cfg = algo(name, **overrides)
    pairs = random_pairs(9, seed=2)
    inputs = pairs.inputs()
    as64 = {f: getattr(inputs, f).double() for f in inputs.__dataclass_fields__ if getattr(inputs, f) is not None}
    out = build_objective(cfg)(dataclasses.replace(inputs, **as64))
    assert out.losses.dtype == torch.float64
    expected = torch.tensor(REFERENCE[name](cfg, pairs), dtype=torch.float64)
    torch.testing.assert_close(out.losses, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", objective_names())
def test_batched_equals_per_pair_loop(name: str) -> None:
    """Calling on a batch of B equals B calls on single pairs (no cross-pair broadcasting mistakes).

    Two objectives couple a batch by design, and the test holds them fixed: RPO's NLL is a token mean over
    the batch's chosen tokens, so chosen lengths are equal within the batch here (random lengths are covered
    by `test_matches_scalar_reference`); BCO's running-mean delta depends on the batch, so it runs with
    `running_mean=False` here (the delta form: `test_bco_batched_equals_loop_at_the_batch_delta`).
    """
    cfg = algo(name, **({"running_mean": False} if OBJECTIVES[name].stateful else {}))
    pairs = random_pairs(7, seed=0, equal_chosen_lengths=True)
    objective = build_objective(cfg)
    batched = objective(pairs.inputs())
    for i in range(7):
        single = objective(pairs.pair(i).inputs())
        torch.testing.assert_close(batched.losses[i : i + 1], single.losses, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(
            batched.chosen_rewards[i : i + 1], single.chosen_rewards, atol=1e-6, rtol=1e-6
        )
        torch.testing.assert_close(
            batched.rejected_rewards[i : i + 1], single.rejected_rewards, atol=1e-6, rtol=1e-6
        )
        for key, values in batched.metrics.items():
            torch.testing.assert_close(values[i : i + 1], single.metrics[key], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", objective_names())
def test_rewards_and_metrics_are_detached_and_losses_carry_the_graph(name: str) -> None:
    out = build_objective(algo(name))(random_pairs(3, seed=2).inputs(requires_grad=True))
    assert out.losses.requires_grad and out.losses.shape == (3,)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert out.chosen_rewards.shape == out.rejected_rewards.shape == (3,)
    assert all(not v.requires_grad and v.shape == (3,) for v in out.metrics.values())
    out.losses.sum().backward()


def declared_fields(cls: type[Objective]) -> list[str]:
    """The optional `LossInputs` fields an objective's capability flags ask the trainer to fill."""
    by_flag = {
        "needs_reference": ["ref_chosen_logps", "ref_rejected_logps"],
        "needs_prev_policy": ["prev_chosen_logps", "prev_rejected_logps"],
        "needs_win_prob": ["win_prob"],
        "needs_win_rates": ["chosen_win_rate", "rejected_win_rate"],
    }
    return [f for flag, names in by_flag.items() if getattr(cls, flag) for f in names]


OPTIONAL_FIELDS = [
    "ref_chosen_logps",
    "ref_rejected_logps",
    "prev_chosen_logps",
    "prev_rejected_logps",
    "win_prob",
    "chosen_win_rate",
    "rejected_win_rate",
]
DECLARED = [(name, f) for name in objective_names() for f in declared_fields(OBJECTIVES[name])]


@pytest.mark.parametrize(("name", "missing"), DECLARED, ids=[f"{n}-{f}" for n, f in DECLARED])
def test_missing_input_error_names_the_field(name: str, missing: str) -> None:
    inputs = dataclasses.replace(random_pairs(2, seed=4).inputs(), **{missing: None})
    with pytest.raises(MissingInputError, match=missing):
        build_objective(algo(name))(inputs)


@pytest.mark.parametrize("name", objective_names())
def test_flags_cover_every_input_read(name: str) -> None:
    """With only the declared optional fields filled (as the trainer does), the objective runs."""
    unused = set(OPTIONAL_FIELDS) - set(declared_fields(OBJECTIVES[name]))
    inputs = dataclasses.replace(random_pairs(2, seed=4).inputs(), **dict.fromkeys(unused))
    build_objective(algo(name))(inputs)


def test_dpo_rejects_non_positive_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0.0)


# --------------------------------------------------------------------------------------------------
# Registry and config


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
        "stateful",
    ):
        assert isinstance(getattr(cls, flag), bool), f"{name}.{flag} must be a bool class attribute"
    objective = build_objective(algo(name))
    assert isinstance(objective, Objective)
    assert isinstance(objective, StatefulObjective) == cls.stateful
    docs = (sys.modules[cls.__module__].__doc__ or "") + (cls.__doc__ or "")
    assert "arXiv" in docs and "Deviations:" in docs, f"{name}: docstring needs the arXiv id and Deviations"


def test_build_objective_from_config() -> None:
    objective = build_objective(DPOConfig(beta=0.25))
    assert isinstance(objective, DPOLoss)
    assert isinstance(objective, Objective)
    assert objective.beta == 0.25


def test_build_objective_passes_the_config_fields() -> None:
    inpo = build_objective(algo("inpo", beta=0.0075, ratio=0.5))
    assert isinstance(inpo, INPOLoss) and (inpo.beta, inpo.ratio) == (0.0075, 0.5)
    ipo = build_objective(algo("ipo", length_normalize=True))
    assert isinstance(ipo, IPOLoss) and ipo.length_normalize
    # the recipe fields stay out of the loss; the config round-trips (actors re-parse the resolved config)
    cfg = algorithm_config(objective="sppo", eta=10.0, pairs="all_pairs")
    assert cfg.hyperparameters() == {"eta": 10.0}
    assert algorithm_config(**json.loads(cfg.model_dump_json())) == cfg


def test_another_objectives_field_is_refused_with_its_path() -> None:
    """`beta` means the DPO family's beta; SPPO takes `eta` = 1/beta, so beta = 0.001 with sppo is a mistake."""
    with pytest.raises(ValidationError) as e:
        algorithm_config(objective="sppo", beta=0.001)
    assert [(err["loc"], err["type"]) for err in e.value.errors()] == [(("sppo", "beta"), "extra_forbidden")]
    with pytest.raises(ValidationError, match=r"dpo\.alpha"):
        algorithm_config(objective="dpo", alpha=0.001)
    with pytest.raises(ValidationError, match="does not match any of the expected tags: 'apo_down', 'apo_zero', 'bco', 'bco_pair', 'cdpo'"):
        algorithm_config(objective="nope")
    assert algorithm_config().objective == "dpo"  # the default objective


def test_build_objective_unknown_name_lists_the_registry() -> None:
    cfg = DPOConfig.model_construct(objective="nope", beta=0.1)
    with pytest.raises(ValueError, match="registered: apo_down, apo_zero, bco, bco_pair, cdpo, dpo, dpop"):
        build_objective(cfg)


def test_config_union_and_registry_agree() -> None:
    """The objective configs (shared cannot import workers) name exactly the registry's objectives, and each
    class takes exactly its config's hyperparameters (checked on import of the registry; repeated here)."""
    assert sorted(OBJECTIVE_CONFIGS) == registry.all_objective_names()  # pair losses + unpaired (KTO, BCO)
    for name, cls in OBJECTIVES.items():
        assert registry.objective_parameters(cls) == OBJECTIVE_CONFIGS[name].hyperparameter_names(), name
    registry.check_objective_configs()


def test_coverage_check_names_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    class Renamed(DPOLoss):
        def __init__(self, dpo_beta: float) -> None:
            super().__init__(dpo_beta)

    monkeypatch.setitem(registry.OBJECTIVES, "dpo", Renamed)
    with pytest.raises(TypeError, match=r"'dpo': Renamed takes \['dpo_beta'\], DPOConfig has \['beta'\]"):
        registry.check_objective_configs()
    monkeypatch.setitem(registry.OBJECTIVES, "extra", DPOLoss)
    with pytest.raises(TypeError, match=r"classes without a config \['extra'\]"):
        registry.check_objective_configs()


def test_config_cross_field_rules() -> None:
    with pytest.raises(ValueError, match="reference=initial"):
        algorithm_config(objective="inpo")
    for objective, bad in (
        ("rdpo", {"flip_rate": 0.5}),
        ("rdpo", {"flip_rate": -0.1}),
        ("cdpo", {"epsilon": 0.5}),
        ("inpo", {"ratio": 1.0, "reference": "initial"}),
        ("sppo", {"eta": 0.0}),
    ):
        with pytest.raises(ValueError):
            algorithm_config(objective=objective, **bad)


# --------------------------------------------------------------------------------------------------
# bf16 inputs under autocast (CUDA only)

BF16_RTOL = 2e-2  # vs §6: bf16 keeps 8 significant bits; e.g. 0.7 -> 0.69921875 moves the eta=1000 SPPO
# target by 0.78 nats and the loss by ~0.4%; -11.8 -> -11.8125 moves INPO's by ~0.4%.
FP32_RTOL = 1e-5  # vs float64 on the bf16-rounded inputs: proves the loss arithmetic itself is fp32


def bf16_round(values: list[float]) -> list[float]:
    return torch.tensor(values, dtype=torch.bfloat16).float().tolist()


def run_bf16_vector(key: str, device: str) -> None:
    v = VECTORS[key]
    cfg = algo(v.objective, **v.config)
    fp32_inputs = pair_inputs(**v.inputs)
    bf16_inputs = {
        f: getattr(fp32_inputs, f).to(device=device, dtype=torch.bfloat16)
        for f in LossInputs.__dataclass_fields__
        if getattr(fp32_inputs, f) is not None
    }
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = build_objective(cfg)(LossInputs(**bf16_inputs))
    assert out.losses.dtype == torch.float32
    full = random_pairs(1, seed=0)  # placeholders for the fields the vector does not use
    for k, vals in v.inputs.items():
        setattr(full, k, bf16_round(vals))
    reference = REFERENCE[v.objective](cfg, full)
    loss = out.losses.cpu().double()
    torch.testing.assert_close(loss, torch.tensor(reference, dtype=torch.float64), atol=1e-5, rtol=FP32_RTOL)
    torch.testing.assert_close(loss, torch.tensor([v.loss], dtype=torch.float64), atol=1e-3, rtol=BF16_RTOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("key", sorted(VECTORS))
def test_vectors_with_bf16_inputs_under_autocast(key: str) -> None:
    """§6 vectors with every input tensor cast to bf16 on CUDA, under bf16 autocast.

    Objectives upcast their inputs, so the loss is computed in fp32: it matches float64 math on the
    bf16-rounded inputs to rtol 1e-5 and the §6 value to rtol 2e-2 (bf16 rounding of the inputs only).
    """
    run_bf16_vector(key, "cuda")
