"""Objective registry: the one place where a config name becomes a loss class.

`OBJECTIVES` maps `AlgorithmConfig.objective` values to classes; `build_objective` constructs one from the
config by passing the constructor parameters the class declares (read from its signature) from the
config fields of the same name. Adding a loss = one module + one line here; nothing branches on names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from sparring.shared.config import AlgorithmConfig
from sparring.workers.objectives.base import Objective
from sparring.workers.objectives.dpo import DPOLoss

OBJECTIVES: dict[str, type[Objective]] = {
    DPOLoss.name: DPOLoss,
}


def objective_names() -> list[str]:
    """Registered objective names, sorted (for help text, config checks and test parametrization)."""
    return sorted(OBJECTIVES)


def build_objective(cfg: AlgorithmConfig) -> Objective:
    """Instantiate `cfg.objective`, taking each constructor argument from the `cfg` field of that name."""
    try:
        cls = OBJECTIVES[cfg.objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {cfg.objective!r}; registered: {', '.join(objective_names())}"
        ) from None
    kwargs: dict[str, Any] = {}
    for pname, param in inspect.signature(cls).parameters.items():
        if pname in type(cfg).model_fields:
            kwargs[pname] = getattr(cfg, pname)
        elif param.default is inspect.Parameter.empty:
            raise ValueError(
                f"objective {cfg.objective!r} needs algorithm.{pname}, which AlgorithmConfig does not have"
            )
    factory: Callable[..., Objective] = cls  # a Protocol type has no declared constructor
    return factory(**kwargs)
