"""The plumbing every training loop and batched scorer repeats: LR warmup schedules, right padding, and
"sort by length, run in chunks, put the results back in input order".

One copy of each, so the trainer, the judges (PairRM, density ratio, self-preference, uncertainty) and
the task builds (a task's base policy, its strong model, its PairRM ranker) cannot drift apart:

- `WarmupSchedule`: the learning rate at a step, linear warmup then constant / linear / cosine decay,
  optionally to a floor (`min_ratio`). A callable object, so `torch.optim.lr_scheduler.LambdaLR` saves
  and restores it with the trainer's state.
- `right_pad`: token-id rows -> (input_ids, attention_mask), right padded to the longest row.
- `by_length_chunks` / `map_by_length`: index chunks of rows of similar length (less compute spent on
  padding), and a loop that runs a forward per chunk and scatters its output back to input order.

It lives in `workers/` because `right_pad` and `map_by_length` build tensors: it imports torch at module
level (nothing else: no transformers, engines, Ray or Redis). `WarmupSchedule` itself is plain Python;
callers that must stay importable without torch (a task's model build) import this module inside the
function that trains.

Everything here is deterministic and changes no numbers: the schedules reproduce the formulas they
replace bit for bit (tests/unit/test_batching.py checks them on a grid of steps against the old code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScheduleKind = Literal["constant", "linear", "cosine"]
SCHEDULE_KINDS: tuple[ScheduleKind, ...] = ("constant", "linear", "cosine")


# --------------------------------------------------------------------------------------------------
# Learning-rate schedules


@dataclass
class WarmupSchedule:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then a decay.

        warmup, step < warmup_steps:  peak * (step + warmup_offset) / max(1, warmup_steps)
        after:                        peak * (min_ratio + (1 - min_ratio) * decay(p)),
                                      p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        decay(p) = 1 (constant; min_ratio is ignored) | max(0, 1 - p) (linear)
                 | max(0, (1 + cos(pi * p)) / 2) (cosine)

    Units: `step`, `total_steps` and `warmup_steps` count optimizer steps; the result is in the units of
    `peak`. With the default `peak = 1.0` it is the multiplier that `torch.optim.lr_scheduler.LambdaLR`
    applies to the optimizer's base learning rate (how `sparring.workers.trainer` uses it); the task
    builds pass their learning rate as `peak` and set the optimizer's `lr` from it every step.

    `warmup_offset = 0` is transformers' warmup (`src/transformers/optimization.py`,
    `_get_{constant,linear,cosine}_schedule_with_warmup_lr_lambda`): step 0 has learning rate 0.
    `warmup_offset = 1` is the task builds' (step 0 already gets peak / warmup_steps, and the peak is
    reached on the last warmup step). `min_ratio` is the floor of transformers'
    `get_cosine_with_min_lr_schedule_with_warmup` (its `min_lr_rate`) and applies to the linear decay
    too; the cosine is half a period (`num_cycles = 0.5`). The linear decay is computed as 1 - p rather
    than transformers' (total - step) / (total - warmup): the same curve, possibly not the same last bit.

    Past `total_steps` (p > 1) the linear decay stays at 0 and the cosine rises again, as transformers'
    do; the trainer's `LambdaLR` is stepped once after the last optimizer step, which lands on p = 1
    exactly. A dataclass rather than a closure: `LambdaLR.state_dict()` saves its fields (an old
    `trainer_state.pt` holds only kind / total_steps / warmup_steps; the other fields then keep their
    defaults, which are what that trainer used).

    Raises ValueError for an unknown `kind`, negative step counts, `min_ratio` outside [0, 1] or a
    `warmup_offset` other than 0 or 1.
    """

    kind: ScheduleKind
    total_steps: int
    warmup_steps: int
    min_ratio: float = 0.0
    peak: float = 1.0
    warmup_offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}; known: {', '.join(SCHEDULE_KINDS)}")
        if self.total_steps < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"step counts must be >= 0, got total {self.total_steps}, warmup {self.warmup_steps}"
            )
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")
        if self.warmup_offset not in (0, 1):
            raise ValueError(f"warmup_offset must be 0 or 1, got {self.warmup_offset}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            # peak * (step + offset) first, then the division: the order the task builds used
            return self.peak * (step + self.warmup_offset) / max(1, self.warmup_steps)
        if self.kind == "constant":
            return self.peak * 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.kind == "linear":
            decay = max(0.0, 1.0 - progress)
        else:
            decay = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * decay)


# --------------------------------------------------------------------------------------------------
# Padding


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token-id rows, right padded to the longest: (input_ids (N, T) int64, attention_mask (N, T) int64).

    T = the longest row's length; `input_ids[i, t]` is `pad_id` and `attention_mask[i, t]` is 0 for
    t >= len(rows[i]), `attention_mask` is 1 on real tokens. An empty row is all padding. Right padding
    keeps every real token at its own position id for a causal LM (a real token never attends to padding),
    which is what the trainer's `sequence_logps` and the judges' last-token reads assume. Tensors are on CPU.

    Raises ValueError when `rows` is empty (there is no width to pad to).
    """
    if not rows:
        raise ValueError("right_pad needs at least one row")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


# --------------------------------------------------------------------------------------------------
# Length-sorted chunks


def by_length_chunks(lengths: Sequence[int], max_rows: int) -> list[list[int]]:
    """Row indices sorted by `lengths` (stable: equal lengths keep input order), cut into consecutive
    chunks of at most `max_rows` indices. Every index 0..len(lengths)-1 appears exactly once.

    Padding each chunk to its own longest row then wastes little compute. `lengths` are in tokens
    (whatever the caller pads: a row, prompt + response, prompt + both completions). Empty `lengths`
    gives no chunks. Raises ValueError when `max_rows` < 1.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + max_rows] for start in range(0, len(order), max_rows)]


def map_by_length(
    lengths: Sequence[int],
    max_rows: int,
    forward: Callable[[list[int]], Tensor],
    out: Tensor,
    dim: int = 0,
) -> Tensor:
    """Run `forward` on each chunk of `by_length_chunks(lengths, max_rows)` and write its result into
    `out` at the chunk's row indices along `dim`, so `out` ends up in input order; returns `out`.

    `forward(chunk)` gets the chunk's row indices (sorted by length) and returns a tensor whose size
    along `dim` is `len(chunk)` and whose other sizes match `out`; it is converted to `out`'s dtype and
    device, as `out[index] = values` would, and copied with `Tensor.index_copy_`. `out` is preallocated
    by the caller (size `len(lengths)` along `dim`), which also fixes the result for no rows at all.
    Raises ValueError when `max_rows` < 1, RuntimeError (from `index_copy_`) on a size mismatch.
    """
    for chunk in by_length_chunks(lengths, max_rows):
        values = forward(chunk).to(device=out.device, dtype=out.dtype)
        out.index_copy_(dim, torch.tensor(chunk, dtype=torch.long, device=out.device), values)
    return out


__all__ = [
    "SCHEDULE_KINDS",
    "ScheduleKind",
    "WarmupSchedule",
    "by_length_chunks",
    "map_by_length",
    "right_pad",
]
