"""workers/batching.py against verbatim copies of the code it replaced: the same floats, the same tensors.

The `_old_*` functions below are the schedules and padders as they were in workers/trainer.py,
tasks/arena/policy.py, tasks/arena/strong.py, workers/judges/pairrm_train.py and workers/judges/pairrm.py
before they were folded into `sparring.workers.batching`; equality is exact (==), not approximate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
import torch

from sparring.workers.batching import WarmupSchedule, by_length_chunks, map_by_length, right_pad

# --------------------------------------------------------------------------------------------------
# The replaced code, verbatim (only renamed and given its settings as arguments)


def _old_trainer_schedule(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """workers/trainer.py `WarmupSchedule.__call__`."""

    def call(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        decays: dict[str, Callable[[float], float]] = {
            "constant": lambda _p: 1.0,
            "linear": lambda p: max(0.0, 1.0 - p),
            "cosine": lambda p: max(0.0, 0.5 * (1.0 + math.cos(math.pi * p))),
        }
        return decays[kind](progress)

    return call


def _old_arena_lr_at(
    step: int, learning_rate: float, steps: int, warmup_steps: int, min_lr_ratio: float
) -> float:
    """tasks/arena/policy.py `_lr_at` / `_judge_lr_at` (with judge_learning_rate, judge_steps),
    tasks/arena/strong.py `_lr_at` and workers/judges/pairrm_train.py `train_pairwise.lr_at`: one formula."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    frac = (step - warmup_steps) / max(1, steps - warmup_steps)
    return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _old_pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """workers/judges/pairrm.py `pad_batch` (self_preference.py's inline padding was the same loop)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_trainer_schedule_is_bit_identical(kind: str) -> None:
    for total in (1, 2, 5, 6, 17, 100, 1234):
        for warmup in sorted({0, 1, 2, math.ceil(0.1 * total), math.ceil(0.3 * total), total}):
            old = _old_trainer_schedule(kind, total, warmup)
            new = WarmupSchedule(kind, total, warmup)  # type: ignore[arg-type]
            steps = range(total + 3)  # LambdaLR is stepped once more after the last optimizer step
            assert [new(s) for s in steps] == [old(s) for s in steps], (kind, total, warmup)


@pytest.mark.parametrize(
    ("learning_rate", "steps", "warmup_steps", "min_lr_ratio"),
    [
        (3e-3, 900, 50, 0.1),  # arena base policy, pretraining phase (ArenaBuildSettings)
        (1e-3, 500, 50, 0.1),  # arena base policy, judge phase (judge_learning_rate, judge_steps)
        (1e-3, 150, 20, 0.1),  # arena strong model (ArenaStrongSettings)
        (2e-3, 1000, 30, 0.05),  # arena PairRM ranker (PairRMBuildSettings)
        (1e-3, 400, 50, 0.05),  # train_pairwise defaults
        (1e-2, 30, 1, 0.05),  # tests/unit/test_pairrm.py
        (7e-4, 13, 13, 0.0),
        (0.1, 3, 5, 0.3),  # warmup longer than the run
    ],
)
def test_arena_schedules_are_bit_identical(
    learning_rate: float, steps: int, warmup_steps: int, min_lr_ratio: float
) -> None:
    new = WarmupSchedule(
        "cosine", steps, warmup_steps, min_ratio=min_lr_ratio, peak=learning_rate, warmup_offset=1
    )
    for step in range(steps):
        assert new(step) == _old_arena_lr_at(step, learning_rate, steps, warmup_steps, min_lr_ratio), step


def test_schedule_values_and_validation() -> None:
    """6 steps, 2 warmup; offset 1 reaches the peak on the last warmup step; the floor holds after."""
    assert [WarmupSchedule("linear", 6, 2)(s) for s in range(7)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert [WarmupSchedule("constant", 6, 2, peak=2.0, warmup_offset=1)(s) for s in range(3)] == [
        1.0,
        2.0,
        2.0,
    ]
    floor = WarmupSchedule("cosine", 6, 2, min_ratio=0.25)
    assert floor(6) == 0.25 and floor(20) >= 0.25
    for bad in (
        dict(kind="step"),
        dict(total_steps=-1),
        dict(warmup_steps=-1),
        dict(min_ratio=1.5),
        dict(warmup_offset=2),
    ):
        args: dict[str, object] = dict(kind="cosine", total_steps=6, warmup_steps=2)
        args.update(bad)
        with pytest.raises(ValueError):
            WarmupSchedule(**args)  # type: ignore[arg-type]


def test_schedule_state_round_trips_through_lambdalr() -> None:
    """LambdaLR saves the schedule's fields; a trainer_state.pt from before (3 fields) still loads."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupSchedule("cosine", 10, 2))
    state = sched.state_dict()
    assert state["lr_lambdas"] == [
        {
            "kind": "cosine",
            "total_steps": 10,
            "warmup_steps": 2,
            "min_ratio": 0.0,
            "peak": 1.0,
            "warmup_offset": 0,
        }
    ]
    other = torch.optim.lr_scheduler.LambdaLR(opt, WarmupSchedule("linear", 1, 0))
    other.load_state_dict({**state, "lr_lambdas": [{"kind": "cosine", "total_steps": 10, "warmup_steps": 2}]})
    assert other.lr_lambdas[0] == WarmupSchedule("cosine", 10, 2)


# --------------------------------------------------------------------------------------------------
# Padding and chunks


def test_right_pad_matches_the_old_padders() -> None:
    rng = random.Random(0)
    for _ in range(20):
        rows = [[rng.randint(0, 500) for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(1, 9))]
        if not any(rows):
            rows[0].append(1)
        ids, mask = right_pad(rows, pad_id=7)
        old_ids, old_mask = _old_pad_batch(rows, 7)
        assert ids.dtype == old_ids.dtype == mask.dtype == torch.long
        assert torch.equal(ids, old_ids) and torch.equal(mask, old_mask)
    ids, mask = right_pad([(3, 4), (5,)], pad_id=0)  # tuples too (self-preference rows are dict keys)
    assert ids.tolist() == [[3, 4], [5, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError):
        right_pad([], pad_id=0)


def test_by_length_chunks_is_the_old_sorted_loop() -> None:
    rng = random.Random(1)
    for n in (0, 1, 5, 32, 33):
        lengths = [rng.randint(1, 6) for _ in range(n)]  # many ties: order among equals must be stable
        for max_rows in (1, 3, 7, 64):
            order = sorted(range(n), key=lambda i: lengths[i])
            old = [order[start : start + max_rows] for start in range(0, n, max_rows)]
            assert by_length_chunks(lengths, max_rows) == old
    with pytest.raises(ValueError):
        by_length_chunks([1, 2], 0)


def test_map_by_length_scatters_back_to_input_order() -> None:
    lengths = [5, 1, 3, 3, 0, 9, 2]
    seen: list[list[int]] = []

    def forward(chunk: list[int]) -> torch.Tensor:
        seen.append(chunk)
        return torch.tensor([[10.0 * i, 10.0 * i + 1] for i in chunk]).T  # (2, len(chunk)): scatter on dim 1

    out = map_by_length(lengths, 3, forward, torch.zeros(2, len(lengths), dtype=torch.float64), dim=1)
    assert seen == by_length_chunks(lengths, 3)
    assert out.dtype == torch.float64
    assert out.tolist() == [[10.0 * i for i in range(7)], [10.0 * i + 1 for i in range(7)]]
    empty = map_by_length([], 4, forward, torch.zeros(0))
    assert empty.shape == (0,) and seen == by_length_chunks(lengths, 3)  # no rows: forward never runs
