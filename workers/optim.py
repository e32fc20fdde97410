"""The trainer's optimizer and learning-rate schedule, both built fresh for every iteration.

`build_optimizer` maps `TrainerConfig.optimizer` to a torch optimizer; `build_scheduler` wraps the
config's warmup + decay (`sparring.workers.batching.WarmupSchedule`) in a `LambdaLR` stepped once per
optimizer step. A new pair per iteration is what the SPPO / DRIFT / iterative-DPO scripts do by launching
a new training run per iteration (`run_sppo_*.sh`, alignment-handbook `run_dpo.py`): warmup and decay
span that iteration's steps only, and no Adam moments carry over.

Knows the trainer config and torch; nothing about models, pairs, checkpoints, Ray or Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from sparring.shared.config import TrainerConfig
from sparring.workers.batching import WarmupSchedule


def build_optimizer(params: Sequence[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW / RMSprop / SGD over `params` with the config's learning rate and weight decay (and Adam's
    betas); every other hyperparameter is torch's default. Raises KeyError for an optimizer name the
    config's `Literal` would not have allowed."""
    factories: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "adamw": lambda: torch.optim.AdamW(
            params, lr=cfg.learning_rate, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        ),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay),
    }
    return factories[cfg.optimizer]()


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`LambdaLR` with multiplier `WarmupSchedule(cfg.scheduler, total_steps, warmup)` (peak 1, no floor).

    warmup = ceil(warmup_ratio * total_steps) optimizer steps, as transformers'
    `TrainingArguments.get_warmup_steps` (`src/transformers/training_args.py`) computes it for a ratio.
    Raises ValueError (from `WarmupSchedule`) for an unknown schedule kind.
    """
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupSchedule(cfg.scheduler, total_steps, warmup))


__all__ = ["build_optimizer", "build_scheduler"]
