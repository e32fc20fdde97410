"""Which training prompts each iteration dispatches (`schedule.prompt_schedule`), and the trainer's batch and
schedule settings that the paper presets rely on."""

from __future__ import annotations

import pytest

from sparring.shared.config import ConfigError, RunConfig, parse_config
from sparring.shared.prompts import PromptPoolError, check_schedule, iteration_prompt_indices


def config(**schedule: object) -> RunConfig:
    return parse_config(
        {
            "policy": {"path": "arena"},
            "judge": {"kind": "arena_oracle"},
            "prompts": {"source": "arena"},
            "schedule": {"iterations": 3, "prompts_per_iteration": 10, **schedule},
        }
    )


def test_disjoint_iterations_never_share_a_prompt_and_are_reproducible() -> None:
    cfg = config(prompt_schedule="disjoint")
    chunks = [iteration_prompt_indices(40, cfg, t) for t in (1, 2, 3)]
    assert all(len(c) == 10 for c in chunks)
    assert len(set().union(*map(set, chunks))) == 30  # no prompt twice across iterations
    assert chunks == [iteration_prompt_indices(40, cfg, t) for t in (1, 2, 3)]


def test_random_draws_overlap_and_full_takes_the_whole_pool() -> None:
    rand = config(prompt_schedule="random")
    draws = [set(iteration_prompt_indices(12, rand, t)) for t in (1, 2)]
    assert all(len(d) == 10 for d in draws) and len(draws[0] & draws[1]) >= 8  # 10 of 12 twice must overlap
    full = config(prompt_schedule="full")
    orders = [iteration_prompt_indices(25, full, t) for t in (1, 2)]
    assert all(sorted(o) == list(range(25)) for o in orders) and orders[0] != orders[1]


def test_a_pool_too_small_for_disjoint_chunks_is_refused_with_the_numbers() -> None:
    cfg = config(prompt_schedule="disjoint")
    with pytest.raises(PromptPoolError, match=r"3 x 10 = 30 training prompts; the pool has 29"):
        check_schedule(29, cfg)
    with pytest.raises(PromptPoolError, match="the pool has 29"):
        iteration_prompt_indices(29, cfg, 3)


def test_grad_accumulation_is_refused_with_its_replacement() -> None:
    base = config().model_dump()
    base["trainer"] = {"batch_size": 8, "grad_accumulation": 2}
    with pytest.raises(ConfigError, match="batch_size 16 \\+ micro_batch_size 8"):
        parse_config(base)
    base["trainer"] = {"batch_size": 12, "micro_batch_size": 8}
    with pytest.raises(ConfigError, match=r"batch_size \(12\) must be a multiple of micro_batch_size \(8\)"):
        parse_config(base)
    base["trainer"] = {"epochs": 2, "schedule_epochs": 1.5}
    with pytest.raises(ConfigError, match=r"schedule_epochs \(1.5\) must be >= epochs \(2\)"):
        parse_config(base)
    base["trainer"] = {"batch_size": 16, "micro_batch_size": 4}
    assert parse_config(base).trainer.accumulation_steps == 4
