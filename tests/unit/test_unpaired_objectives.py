"""Unpaired objectives (KTO, unpaired BCO): float64 scalar references to 1e-6, TRL's hand-worked values, the
reference point's clamp and detach, BCO's running mean and state, and the registry/config wiring.

`REFERENCE` is the slow scalar version of each loss (float64 Python math, one example at a time), written from
TRL's `KTOTrainer._compute_loss` (trl/trainer/kto_trainer.py) and `BCOTrainer.bco_loss`
(trl/experimental/bco/bco_trainer.py) with `RunningMoments.update` (trl/trainer/utils.py).
"""

from __future__ import annotations

import math
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from pydantic import ValidationError

from sparring.shared.config import UNPAIRED_OBJECTIVES, algorithm_config
from sparring.workers.objectives import registry
from sparring.workers.objectives.base import MissingInputError, UnpairedInputs
from sparring.workers.objectives.bco_unpaired import BCOLoss
from sparring.workers.objectives.kto import KTOLoss
from sparring.workers.objectives.registry import UNPAIRED_OBJECTIVES as CLASSES
from sparring.workers.objectives.registry import build_objective, unpaired_objective_names


@dataclass
class Examples:
    policy: list[float]
    ref: list[float]
    labels: list[bool]
    policy_kl: list[float]
    ref_kl: list[float]

    def inputs(self, dtype: torch.dtype = torch.float64) -> UnpairedInputs:
        def t(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype)

        return UnpairedInputs(
            policy_logps=t(self.policy),
            labels=torch.tensor(self.labels, dtype=torch.bool),
            lengths=torch.ones(len(self.policy), dtype=dtype),
            ref_logps=t(self.ref),
            policy_kl_logps=t(self.policy_kl),
            ref_kl_logps=t(self.ref_kl),
        )


def random_examples(n: int, seed: int, kl_shift: float = 0.0) -> Examples:
    rng = random.Random(seed)
    ref = [rng.uniform(-40.0, -5.0) for _ in range(n)]
    ref_kl = [rng.uniform(-40.0, -5.0) for _ in range(n)]
    return Examples(
        policy=[r + rng.uniform(-4.0, 4.0) for r in ref],
        ref=ref,
        labels=[rng.random() < 0.5 for _ in range(n)],
        policy_kl=[r + rng.uniform(-2.0, 2.0) + kl_shift for r in ref_kl],
        ref_kl=ref_kl,
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _kto(cfg: typing.Any, e: Examples) -> list[float]:
    z = max(0.0, sum(p - r for p, r in zip(e.policy_kl, e.ref_kl, strict=True)) / len(e.policy_kl))
    out = []
    for p, r, label in zip(e.policy, e.ref, e.labels, strict=True):
        if label:
            out.append(cfg.desirable_weight * (1.0 - _sigmoid(cfg.beta * ((p - r) - z))))
        else:
            out.append(cfg.undesirable_weight * (1.0 - _sigmoid(cfg.beta * (z - (p - r)))))
    return out


def _bco(cfg: typing.Any, e: Examples) -> list[float]:
    rewards = [cfg.beta * (p - r) for p, r in zip(e.policy, e.ref, strict=True)]
    count = 1e-24 + len(rewards)  # RunningMoments from (mean 0, count 1e-24), one update with the batch
    delta = 0.0 + (sum(rewards) / len(rewards) - 0.0) * len(rewards) / count
    return [-_log_sigmoid(r - delta) if label else -_log_sigmoid(-(r - delta)) for r, label in zip(rewards, e.labels, strict=True)]


REFERENCE: dict[str, Callable[[typing.Any, Examples], list[float]]] = {"kto": _kto, "bco": _bco}

VARIANTS: list[tuple[str, dict[str, typing.Any]]] = [(name, {}) for name in unpaired_objective_names()] + [
    ("kto", {"beta": 0.5, "desirable_weight": 1.33, "undesirable_weight": 0.7}),
    ("bco", {"beta": 0.5}),
]


def algo(name: str, **overrides: typing.Any) -> typing.Any:
    return algorithm_config(objective=name, **overrides)


def test_every_unpaired_objective_has_a_reference() -> None:
    assert sorted(REFERENCE) == unpaired_objective_names() == sorted(UNPAIRED_OBJECTIVES)


@pytest.mark.parametrize("kl_shift", [0.0, 3.0, -3.0], ids=["kl-mixed", "kl-positive", "kl-clamped"])
@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
def test_matches_scalar_reference_in_float64(name: str, overrides: dict[str, typing.Any], kl_shift: float) -> None:
    """float64 in, float64 out, equal to the scalar loop to 1e-6 (the issue-13 bar), with the KL estimate
    positive, negative (clamped to 0) and mixed."""
    cfg = algo(name, **overrides)
    examples = random_examples(11, seed=3, kl_shift=kl_shift)
    out = build_objective(cfg)(examples.inputs())
    assert out.losses.dtype == torch.float64
    expected = torch.tensor(REFERENCE[name](cfg, examples), dtype=torch.float64)
    torch.testing.assert_close(out.losses, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.rewards, cfg.beta * (examples.inputs().policy_logps - examples.inputs().ref_logps))


def test_kto_hand_worked_value() -> None:
    """beta 0.1; desirable r = -10 - (-11) = 1, KL pairs: (-20 - -21 + -30 - -33) / 2 = 2 = z;
    loss = 1 - sigmoid(0.1 * (1 - 2)) = 1 - sigmoid(-0.1) = 0.5249791875;
    undesirable r = -12 - (-11.5) = -0.5: 1 - sigmoid(0.1 * (2 + 0.5)) = 1 - sigmoid(0.25) = 0.4378234991."""
    e = Examples(policy=[-10.0, -12.0], ref=[-11.0, -11.5], labels=[True, False], policy_kl=[-20.0, -30.0], ref_kl=[-21.0, -33.0])
    out = KTOLoss(beta=0.1)(e.inputs(torch.float32))
    torch.testing.assert_close(out.losses, torch.tensor([0.5249791875, 0.4378234991]), atol=1e-6, rtol=0)
    assert float(out.batch_metrics["kl"]) == pytest.approx(2.0)


def test_kto_reference_point_is_clamped_and_carries_no_gradient() -> None:
    e = random_examples(6, seed=0, kl_shift=-5.0)  # policy below the reference on the KL pairs: mean < 0
    inputs = e.inputs()
    policy = inputs.policy_logps.clone().requires_grad_(True)
    policy_kl = inputs.policy_kl_logps.clone().requires_grad_(True)  # type: ignore[union-attr]
    out = KTOLoss(beta=0.1)(UnpairedInputs(policy, inputs.labels, inputs.lengths, inputs.ref_logps, policy_kl, inputs.ref_kl_logps))
    assert float(out.batch_metrics["kl"]) == 0.0
    out.losses.sum().backward()
    assert policy_kl.grad is None  # z_ref is detached, as TRL's
    assert policy.grad is not None and bool(torch.all(policy.grad != 0))
    # desirable answers are pushed up, undesirable down
    labels = inputs.labels
    assert bool(torch.all(policy.grad[labels] < 0)) and bool(torch.all(policy.grad[~labels] > 0))


def test_kto_without_kl_pairs_names_the_missing_field() -> None:
    inputs = random_examples(3, seed=0).inputs()
    with pytest.raises(MissingInputError, match="policy_kl_logps"):
        KTOLoss(beta=0.1)(UnpairedInputs(inputs.policy_logps, inputs.labels, inputs.lengths, inputs.ref_logps))


def test_bco_running_mean_weighs_batches_by_size_and_round_trips() -> None:
    """Two batches of 2 and 6 rewards: delta after both = their 8-reward mean (RunningMoments counts elements)."""
    loss = BCOLoss(beta=0.1)
    first, second = random_examples(2, seed=1), random_examples(6, seed=2)
    loss(first.inputs())
    state = loss.state_dict()
    out = loss(second.inputs())
    rewards = [0.1 * (p - r) for e in (first, second) for p, r in zip(e.policy, e.ref, strict=True)]
    assert float(out.batch_metrics["delta"]) == pytest.approx(sum(rewards) / 8, abs=1e-9)
    again = BCOLoss(beta=0.1)
    again.load_state_dict(state)
    torch.testing.assert_close(again(second.inputs()).losses, out.losses)
    again.reset()
    assert again.state_dict() == {"mean": 0.0, "count": 1e-24}


def test_registry_and_config_agree_on_unpaired_objectives() -> None:
    registry.check_objective_configs()
    assert set(CLASSES) == set(UNPAIRED_OBJECTIVES)
    for name, cls in CLASSES.items():
        assert cls.unpaired and registry.objective_parameters(cls) == registry.OBJECTIVE_CONFIGS[name].hyperparameter_names()
    assert "kto" in registry.all_objective_names() and "kto" not in registry.objective_names()


def test_pointwise_recipe_rules() -> None:
    assert algo("kto", pairs="pointwise", label_threshold=2.0).label_threshold == 2.0
    with pytest.raises(ValidationError, match="pairs=pointwise needs it"):
        algo("kto", pairs="pointwise")
    with pytest.raises(ValidationError, match="label_threshold goes with pairs=pointwise"):
        algo("kto", label_threshold=1.0)
    with pytest.raises(ValidationError, match="only unpaired objectives train on"):
        algo("dpo", pairs="pointwise", label_threshold=1.0)
    with pytest.raises(ValidationError, match="all_pairs"):
        algo("bco", pairs="all_pairs")


def test_unpaired_runs_are_one_rank_and_sync() -> None:
    from sparring.shared.config import ConfigError, parse_config

    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"},
            "algorithm": {"objective": "kto", "pairs": "pointwise", "label_threshold": 2}}  # fmt: skip
    assert parse_config(base).algorithm.objective == "kto"
    for extra in ({"resources": {"trainer": {"num_ranks": 2}}}, {"schedule": {"mode": "async", "max_staleness": 1}}):
        with pytest.raises(ConfigError, match="trains on one trainer rank in sync mode"):
            parse_config({**base, **extra})
